//! Memory a model will take, from config.json and the safetensors headers alone: no weights are
//! read, so a host can decide before loading whether a model fits.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

use super::weight_files;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::kernels::Isa;
use crate::kernels::packed::PackedTernary;
use crate::quant;
use crate::storage::Source;

/// Bytes a model and one session of it will take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights as the engine holds them (mapped or owned).
    pub weight_bytes: u64,
    /// Of which memory-mapped from the checkpoint (page cache, shared between processes).
    pub mapped_bytes: u64,
    /// KV cache of one session at `n_ctx`.
    pub kv_cache_bytes: u64,
    /// Working buffers of one forward pass of `n_batch` tokens.
    pub scratch_bytes: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weight_bytes + self.kv_cache_bytes + self.scratch_bytes
    }
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
}

/// Reads the JSON header of a safetensors file (and nothing after it).
fn read_header(src: &Source, name: &str) -> Result<BTreeMap<String, HeaderEntry>> {
    let label = src.describe(name);
    let bad = |what: String| Error::invalid_model(format!("{label}: {what}"));
    let header_bytes = match src {
        Source::Dir(d) => {
            let p = d.join(name);
            let mut f = std::fs::File::open(&p).map_err(|e| Error::io(&p, &e))?;
            let mut len = [0u8; 8];
            f.read_exact(&mut len)
                .map_err(|e| bad(format!("cannot read the header length: {e}")))?;
            let n = u64::from_le_bytes(len);
            if n > 100 << 20 {
                return Err(bad(format!("header length {n} is implausible")));
            }
            let mut buf = vec![0u8; n as usize];
            f.read_exact(&mut buf)
                .map_err(|e| bad(format!("truncated header: {e}")))?;
            buf
        }
        Source::Memory(_) | Source::Packed { .. } => {
            let all = src.read(name)?;
            let n = all
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .ok_or_else(|| bad("empty".into()))?;
            all.get(8..8usize.saturating_add(n as usize))
                .ok_or_else(|| bad("truncated header".into()))?
                .to_vec()
        }
    };
    let mut map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header_bytes)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    map.remove("__metadata__");
    map.into_iter()
        .map(|(k, v)| {
            let e: HeaderEntry =
                serde_json::from_value(v).map_err(|e| bad(format!("tensor `{k}`: {e}")))?;
            Ok((k, e))
        })
        .collect()
}

fn dtype_size(d: &str) -> Option<u64> {
    Some(match d {
        "U8" | "I8" => 1,
        "F16" | "BF16" => 2,
        "F32" => 4,
        _ => return None,
    })
}

/// Estimates memory for a model folder and a session of `n_ctx` tokens (0 = the model's
/// maximum) processing `n_batch` tokens per pass.
pub fn estimate(src: &Source, n_ctx: usize, n_batch: usize) -> Result<MemoryEstimate> {
    let cfg = Config::from_json(&src.read_string("config.json")?)
        .map_err(|e| e.context(src.describe("config.json")))?;
    let n_ctx = if n_ctx == 0 {
        cfg.max_position_embeddings
    } else {
        n_ctx
    } as u64;
    let (mut weights, mut mapped) = (0u64, 0u64);
    for file in weight_files(src)? {
        for (name, t) in read_header(src, &file)? {
            let size = dtype_size(&t.dtype).ok_or_else(|| {
                Error::unsupported(format!(
                    "{}: tensor `{name}` has dtype {}",
                    src.describe(&file),
                    t.dtype
                ))
            })?;
            let numel: u64 = t.shape.iter().map(|&d| d as u64).product();
            let is_projection = name.starts_with("model.layers.") && name.ends_with("_proj.weight");
            let bytes = if is_projection && t.shape.len() == 2 {
                // Ternary weights are repacked for this CPU's kernel in whole blocks of columns.
                let rows = if size == 1 {
                    t.shape[0] * quant::VALUES_PER_BYTE
                } else {
                    t.shape[0]
                };
                let packing = Isa::best().packing();
                let cols = PackedTernary::padded_cols(t.shape[1], packing);
                (rows * cols / packing.block() * 64) as u64
            } else if t.shape.len() == 1 && size < 4 {
                numel * 4 // norms are held in f32
            } else {
                numel * size
            };
            weights += bytes;
            if !is_projection && bytes == numel * size && matches!(src, Source::Dir(_)) {
                mapped += bytes;
            }
        }
    }
    let kv = cfg.num_layers as u64 * 2 * n_ctx * cfg.kv_dim() as u64 * 4;
    let b = n_batch.max(1) as u64;
    let per_token =
        (6 * cfg.hidden_size + 2 * cfg.q_dim() + 3 * cfg.intermediate_size) as u64 * 4 + n_ctx * 4;
    let scratch = b * per_token + 16 * cfg.vocab_size as u64 * 4;
    Ok(MemoryEstimate {
        weight_bytes: weights,
        mapped_bytes: mapped,
        kv_cache_bytes: kv,
        scratch_bytes: scratch,
    })
}
