//! The saved state of a session: tokens in context, KV cache, the sampler's generator and (from
//! version 2) the adapters with their optimiser moments, as a versioned, checksummed blob tied
//! to the model's fingerprint. Version 1 blobs (no adapters) still load. Decoding validates everything
//! before anything is applied, so a bad blob leaves the session as it was.

use crate::error::{Error, ErrorKind, Result};
use crate::loader::Fnv64;

const MAGIC: &[u8; 8] = b"BITTTST\0";
/// Bumped whenever the layout changes; older versions are refused with a clear message.
pub const STATE_VERSION: u32 = 2;

/// A session's adapters and optimiser in a blob: the shape, the AdamW step count, and the
/// tensors of adapters, initial adapters, first and second moments, in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerBlob {
    pub rank: u64,
    pub alpha: f32,
    pub first_layer: u64,
    pub projections: u32,
    pub step: u64,
    pub tensors: Vec<Vec<f32>>,
}

/// Everything a session needs to continue exactly where it was.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub fingerprint: u64,
    pub tokens: Vec<u32>,
    pub unfed: Vec<u32>,
    pub rng: [u64; 4],
    pub kv_dim: usize,
    /// Per layer: keys then values, `tokens.len() * kv_dim` each.
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// The KV cache was computed with adapters that changed since (version 2).
    pub kv_stale: bool,
    /// Adapters and optimiser state (version 2).
    pub trainer: Option<TrainerBlob>,
}

fn incompatible(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::IncompatibleState, msg)
}

impl SessionState {
    pub fn encode(&self) -> Vec<u8> {
        let kv_floats: usize = self.k.iter().chain(&self.v).map(Vec::len).sum();
        let mut out =
            Vec::with_capacity(64 + 4 * (self.tokens.len() + self.unfed.len() + kv_floats));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        for n in [
            self.k.len(),
            self.kv_dim,
            self.tokens.len(),
            self.unfed.len(),
        ] {
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        for t in self.tokens.iter().chain(&self.unfed) {
            out.extend_from_slice(&t.to_le_bytes());
        }
        for w in self.rng {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for layer in self.k.iter().chain(&self.v) {
            for x in layer {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.push(u8::from(self.kv_stale));
        out.push(u8::from(self.trainer.is_some()));
        if let Some(t) = &self.trainer {
            out.extend_from_slice(&t.rank.to_le_bytes());
            out.extend_from_slice(&t.alpha.to_le_bytes());
            out.extend_from_slice(&t.first_layer.to_le_bytes());
            out.extend_from_slice(&t.projections.to_le_bytes());
            out.extend_from_slice(&t.step.to_le_bytes());
            out.extend_from_slice(&(t.tensors.len() as u64).to_le_bytes());
            for tensor in &t.tensors {
                out.extend_from_slice(&(tensor.len() as u64).to_le_bytes());
                for x in tensor {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let mut h = Fnv64::default();
        h.write(&out);
        out.extend_from_slice(&h.finish().to_le_bytes());
        out
    }

    /// Decodes and validates a blob for a model with `fingerprint`, `layers` and `kv_dim`.
    pub fn decode(
        blob: &[u8],
        fingerprint: u64,
        layers: usize,
        kv_dim: usize,
    ) -> Result<SessionState> {
        if blob.len() < MAGIC.len() + 12 + 32 + 8 || &blob[..8] != MAGIC {
            return Err(incompatible("not a Bit-TTT session state"));
        }
        let (body, sum) = blob.split_at(blob.len() - 8);
        let mut h = Fnv64::default();
        h.write(body);
        if h.finish().to_le_bytes() != sum {
            return Err(incompatible("session state is corrupt (checksum mismatch)"));
        }
        let mut r = Reader { buf: &body[8..] };
        let version = r.u32()?;
        if version != STATE_VERSION && version != 1 {
            return Err(incompatible(format!(
                "session state version {version} is not supported (this library writes {STATE_VERSION})"
            )));
        }
        let print = r.u64()?;
        if print != fingerprint {
            return Err(incompatible(format!(
                "session state belongs to another model (fingerprint {print:016x}, this model {fingerprint:016x})"
            )));
        }
        let (l, d, n_tok, n_unfed) = (r.len()?, r.len()?, r.len()?, r.len()?);
        if l != layers || d != kv_dim {
            return Err(incompatible(format!(
                "session state has {l} layers × {d} KV width, the model {layers} × {kv_dim}"
            )));
        }
        let tokens = (0..n_tok).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
        let unfed = (0..n_unfed).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
        let rng = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
        let per_layer = n_tok
            .checked_mul(d)
            .ok_or_else(|| incompatible("session state sizes overflow"))?;
        let mut read_layers = || {
            (0..l)
                .map(|_| (0..per_layer).map(|_| r.f32()).collect::<Result<Vec<_>>>())
                .collect::<Result<Vec<_>>>()
        };
        let k = read_layers()?;
        let v = read_layers()?;
        let (mut kv_stale, mut trainer) = (false, None);
        if version >= 2 {
            kv_stale = r.flag()?;
            if r.flag()? {
                let (rank, alpha, first_layer) = (r.u64()?, r.f32()?, r.u64()?);
                let (projections, step) = (r.u32()?, r.u64()?);
                let n = r.len()?;
                let tensors = (0..n)
                    .map(|_| {
                        let len = r.len()?;
                        (0..len).map(|_| r.f32()).collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                trainer = Some(TrainerBlob {
                    rank,
                    alpha,
                    first_layer,
                    projections,
                    step,
                    tensors,
                });
            }
        }
        if !r.buf.is_empty() {
            return Err(incompatible("session state has trailing bytes"));
        }
        Ok(SessionState {
            fingerprint,
            tokens,
            unfed,
            rng,
            kv_dim,
            k,
            v,
            kv_stale,
            trainer,
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.buf.len() < N {
            return Err(incompatible("session state is truncated"));
        }
        let (head, rest) = self.buf.split_at(N);
        self.buf = rest;
        Ok(head.try_into().expect("split at N"))
    }
    fn u32(&mut self) -> Result<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn flag(&mut self) -> Result<bool> {
        match self.take::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(incompatible(format!(
                "session state has a bad flag byte {b}"
            ))),
        }
    }
    fn f32(&mut self) -> Result<f32> {
        self.take::<4>().map(f32::from_le_bytes)
    }
    /// A count, refused when larger than what the remaining bytes could hold.
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(incompatible(format!(
                "session state claims {n} items, more than it holds"
            )));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionState {
        SessionState {
            fingerprint: 42,
            tokens: vec![1, 2, 3],
            unfed: vec![9],
            rng: [1, 2, 3, 4],
            kv_dim: 2,
            k: vec![vec![0.5; 6], vec![1.5; 6]],
            v: vec![vec![-0.5; 6], vec![2.5; 6]],
            kv_stale: true,
            trainer: Some(TrainerBlob {
                rank: 2,
                alpha: 4.0,
                first_layer: 1,
                projections: 0x7f,
                step: 3,
                tensors: vec![vec![0.25; 5], vec![], vec![-1.0; 2]],
            }),
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(SessionState::decode(&s.encode(), 42, 2, 2).unwrap(), s);
    }

    #[test]
    fn refuses_foreign_and_corrupt_blobs() {
        let blob = sample().encode();
        let kind = |r: Result<SessionState>| r.unwrap_err().kind();
        assert_eq!(
            kind(SessionState::decode(&blob, 43, 2, 2)),
            ErrorKind::IncompatibleState
        );
        assert_eq!(
            kind(SessionState::decode(&blob, 42, 3, 2)),
            ErrorKind::IncompatibleState
        );
        for cut in [0, 7, 20, blob.len() - 1] {
            assert_eq!(
                kind(SessionState::decode(&blob[..cut], 42, 2, 2)),
                ErrorKind::IncompatibleState
            );
        }
        for i in [9, 30, blob.len() / 2, blob.len() - 3] {
            let mut bad = blob.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                kind(SessionState::decode(&bad, 42, 2, 2)),
                ErrorKind::IncompatibleState
            );
        }
    }
}
