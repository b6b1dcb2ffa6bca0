//! The ternary weight layouts the fast kernels read, and the portable kernel over them.
//!
//! `Packing::Bits2`: each row is stored as blocks of 256 weights in 64 bytes: byte j of a block
//! holds, in bits 2k..2k+1, the code (value + 1, so 0..=2) of column 64·k + j of that block. A
//! 64-byte load then gives, after a shift and a mask, the codes of 64 consecutive columns, lined
//! up with 64 consecutive int8 activations: one AVX-512 register, two AVX2 halves, four NEON
//! quarters.
//!
//! `Packing::Base3` (1.6 bits per weight, for the AVX-512 VBMI kernel): blocks of 320 weights in
//! 64 bytes; byte j, read as i8, is Σ_k t_k·3^k over the values t_k of columns 64·k + j, k < 5
//! (balanced ternary, so |byte| ≤ 121 and the byte of negated weights is the negated byte). A
//! kernel looks the digits of |byte| up in a 128-entry table and negates them where the byte is
//! negative: `digits` defines that for every byte, the 13 unused values included, so that all
//! kernels agree on any file.
//!
//! Rows are padded to whole blocks with zero weights; activations are padded with zeros.
//! Codes are unsigned, so a kernel computes Σ code·q and subtracts Σ q (computed once per
//! token): Σ (t+1)·q − Σ q = Σ t·q, exactly.

use super::Kernels;
use crate::quant;
use crate::storage::Bytes;

/// Weights per block of the 2-bit layout.
pub const BLOCK: usize = 256;
/// Bytes per block (of either layout).
pub const BLOCK_BYTES: usize = 64;
/// Weights per block of the base-3 layout.
pub const BLOCK3: usize = 320;
/// Activations are padded to a multiple of both block sizes, so one quantised input serves a
/// matrix of either layout.
pub const ACT_PAD: usize = 1280;

/// How a `PackedTernary` stores its weights (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Packing {
    Bits2,
    Base3,
}

impl Packing {
    /// Weights per 64-byte block.
    pub const fn block(self) -> usize {
        match self {
            Packing::Bits2 => BLOCK,
            Packing::Base3 => BLOCK3,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Packing::Bits2 => "2bit",
            Packing::Base3 => "base3",
        }
    }
    pub fn parse(name: &str) -> Option<Packing> {
        [Packing::Bits2, Packing::Base3]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// The base-3 digits (t_0..t_4, each −1, 0 or 1) a kernel reads from a byte: those of |b| from
/// the table (zeros for the unused 122..=127; |−128| reads entry 0, as `vpermi2b` uses seven
/// index bits), negated for a negative byte.
pub const fn digits(b: u8) -> [i8; 5] {
    let v = b as i8;
    let a = (v.unsigned_abs() & 0x7f) as i32;
    let mut d = [0i8; 5];
    if a <= 121 {
        let mut x = a;
        let mut k = 0;
        while k < 5 {
            let mut t = x % 3;
            if t == 2 {
                t = -1;
            }
            d[k] = if v < 0 { -t as i8 } else { t as i8 };
            x = (x - t) / 3;
            k += 1;
        }
    }
    d
}

/// `digits` of every byte.
pub static DIGITS: [[i8; 5]; 256] = {
    let mut t = [[0i8; 5]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = digits(b as u8);
        b += 1;
    }
    t
};

/// The byte of five weights (each −1, 0 or 1) in the base-3 layout.
fn base3_byte(t: [i8; 5]) -> u8 {
    let v = t.iter().rev().fold(0i32, |acc, &d| acc * 3 + i32::from(d));
    v as i8 as u8
}

/// A ternary matrix in the kernel layout.
#[derive(Debug, Clone)]
pub struct PackedTernary {
    pub rows: usize,
    pub cols: usize,
    /// Columns rounded up to whole blocks.
    pub cols_padded: usize,
    pub packing: Packing,
    /// `rows * row_bytes()` bytes: owned after a repack, or mapped from a pre-packed file.
    pub data: Bytes,
}

impl PackedTernary {
    /// Columns of a row of `cols` weights rounded up to whole blocks of `packing`.
    pub fn padded_cols(cols: usize, packing: Packing) -> usize {
        cols.div_ceil(packing.block()) * packing.block()
    }

    pub fn row_bytes(&self) -> usize {
        self.cols_padded / self.packing.block() * BLOCK_BYTES
    }

    /// Repacks from the Hugging Face layout (see `quant::pack_ternary`) into the 2-bit layout.
    pub fn from_hf(hf: &[u8], rows: usize, cols: usize) -> Self {
        Self::from_hf_as(hf, rows, cols, Packing::Bits2)
    }

    /// Repacks from the Hugging Face layout into `packing`.
    pub fn from_hf_as(hf: &[u8], rows: usize, cols: usize, packing: Packing) -> Self {
        let slab = quant::packed_rows(rows);
        Self::from_rows(rows, cols, packing, |r, values| {
            let (src, shift) = (
                &hf[(r % slab) * cols..(r % slab + 1) * cols],
                2 * (r / slab),
            );
            for (v, &byte) in values.iter_mut().zip(src) {
                *v = ((byte >> shift) & 3) as i8 - 1;
            }
        })
    }

    /// The same weights in `packing` (a copy; `self` when it is packed so already).
    pub fn repacked(&self, packing: Packing) -> Self {
        if packing == self.packing {
            return self.clone();
        }
        Self::from_rows(self.rows, self.cols, packing, |r, values| {
            self.row_values(r, values)
        })
    }

    /// Packs rows whose values (−1, 0, 1) `row(r, values)` writes, in parallel.
    fn from_rows(
        rows: usize,
        cols: usize,
        packing: Packing,
        row: impl Fn(usize, &mut [i8]) + Sync,
    ) -> Self {
        let cols_padded = Self::padded_cols(cols, packing);
        let row_bytes = cols_padded / packing.block() * BLOCK_BYTES;
        let mut data = vec![0u8; rows * row_bytes];
        const ROWS_PER_TASK: usize = 64;
        super::pool::chunks_mut(&mut data, ROWS_PER_TASK * row_bytes, |i, out| {
            // Zeros past `cols`: padding columns are zero weights.
            let mut values = vec![0i8; cols_padded];
            for (k, out) in out.chunks_exact_mut(row_bytes).enumerate() {
                row(i * ROWS_PER_TASK + k, &mut values[..cols]);
                pack_row(&values, packing, out);
            }
        });
        Self {
            rows,
            cols,
            cols_padded,
            packing,
            data: Bytes::owned(data),
        }
    }

    /// The values (−1, 0, 1) of row `r`'s first `values.len()` columns, as the kernels read them.
    pub fn row_values(&self, r: usize, values: &mut [i8]) {
        let rb = self.row_bytes();
        let row = &self.data[r * rb..(r + 1) * rb];
        let block = self.packing.block();
        for (b, bytes) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            for (j, &byte) in bytes.iter().enumerate() {
                let d = match self.packing {
                    Packing::Bits2 => [0, 2, 4, 6, 0].map(|s| ((byte >> s) & 3) as i8 - 1),
                    Packing::Base3 => DIGITS[byte as usize],
                };
                for (k, &t) in d.iter().take(block / 64).enumerate() {
                    if let Some(v) = values.get_mut(b * block + 64 * k + j) {
                        *v = t;
                    }
                }
            }
        }
    }
}

/// Packs one row of values (padded to whole blocks) into `out`.
fn pack_row(values: &[i8], packing: Packing, out: &mut [u8]) {
    let block = packing.block();
    for (b, bytes) in out.chunks_exact_mut(BLOCK_BYTES).enumerate() {
        let v = &values[b * block..(b + 1) * block];
        for (j, o) in bytes.iter_mut().enumerate() {
            *o = match packing {
                Packing::Bits2 => {
                    (0..4).fold(0u8, |acc, k| acc | ((v[64 * k + j] + 1) as u8) << (2 * k))
                }
                Packing::Base3 => base3_byte([0, 1, 2, 3, 4].map(|k| v[64 * k + j])),
            };
        }
    }
}

/// Int8 activations of `n_tok` tokens, each padded with zeros to `cols_padded`, with the sum of
/// each token's values (for the code offset) and its scale s.
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    pub n_tok: usize,
    pub cols: usize,
    pub cols_padded: usize,
    pub q: Vec<i8>,
    pub sums: Vec<i32>,
    pub scales: Vec<f32>,
}

impl QuantizedRows {
    /// Quantises each row of `x` (`n_tok` rows of `cols`) per token, with the table's quantiser.
    pub fn new(kernels: &Kernels, x: &[f32], n_tok: usize) -> Self {
        let cols = x.len() / n_tok;
        let cols_padded = cols.div_ceil(ACT_PAD) * ACT_PAD;
        let mut q = vec![0i8; n_tok * cols_padded];
        // Tokens are independent: a prompt's are quantised in parallel, 16 to a task.
        const TOKENS_PER_TASK: usize = 16;
        let tasks: Vec<(&[f32], &mut [i8])> = x
            .chunks(TOKENS_PER_TASK * cols)
            .zip(q.chunks_mut(TOKENS_PER_TASK * cols_padded))
            .collect();
        let per_task = super::pool::map(tasks, |(xs, qs)| {
            xs.chunks_exact(cols)
                .zip(qs.chunks_exact_mut(cols_padded))
                .map(|(xr, qr)| {
                    let s = (kernels.quantize.run)(xr, &mut qr[..cols]);
                    (s, qr.iter().map(|&v| i32::from(v)).sum::<i32>())
                })
                .collect::<Vec<_>>()
        });
        let (scales, sums): (Vec<f32>, Vec<i32>) = per_task.into_iter().flatten().unzip();
        Self {
            n_tok,
            cols,
            cols_padded,
            q,
            sums,
            scales,
        }
    }

    /// Rows of int8 values given directly (scales 1): for testing kernels on chosen values.
    pub fn from_int8(q: &[i8], n_tok: usize) -> Self {
        let cols = q.len() / n_tok;
        let cols_padded = cols.div_ceil(ACT_PAD) * ACT_PAD;
        let mut padded = vec![0i8; n_tok * cols_padded];
        for (src, dst) in q
            .chunks_exact(cols)
            .zip(padded.chunks_exact_mut(cols_padded))
        {
            dst[..cols].copy_from_slice(src);
        }
        let sums = q
            .chunks_exact(cols)
            .map(|r| r.iter().map(|&v| i32::from(v)).sum())
            .collect();
        Self {
            n_tok,
            cols,
            cols_padded,
            q: padded,
            sums,
            scales: vec![1.0; n_tok],
        }
    }

    pub fn token(&self, t: usize) -> &[i8] {
        &self.q[t * self.cols_padded..(t + 1) * self.cols_padded]
    }
}

/// Tokens whose activations stay in cache while a task's rows stream past them.
pub(super) const TOKEN_BLOCK: usize = 32;

/// Fills `acc` (row-major `[rows][n_tok]`) with `row4` / `row1` (Σ code·q of one row for four
/// tokens / one token), minus each token's Σ q. Tokens go in blocks so that their activations
/// are reused from cache across rows (prefill); decode is the one-token case.
#[inline(always)]
pub(super) fn for_rows(
    w: &PackedTernary,
    x: &QuantizedRows,
    r0: usize,
    acc: &mut [i32],
    mut row4: impl FnMut(*const u8, [*const i8; 4]) -> [i32; 4],
    mut row1: impl FnMut(*const u8, [*const i8; 1]) -> [i32; 1],
) {
    let rb = w.row_bytes();
    for t0 in (0..x.n_tok).step_by(TOKEN_BLOCK) {
        let t1 = (t0 + TOKEN_BLOCK).min(x.n_tok);
        for (i, out) in acc.chunks_exact_mut(x.n_tok).enumerate() {
            let row = w.data[(r0 + i) * rb..(r0 + i + 1) * rb].as_ptr();
            let mut t = t0;
            while t + 4 <= t1 {
                let q = [0, 1, 2, 3].map(|k| x.token(t + k).as_ptr());
                let s = row4(row, q);
                for k in 0..4 {
                    out[t + k] = s[k] - x.sums[t + k];
                }
                t += 4;
            }
            while t < t1 {
                out[t] = row1(row, [x.token(t).as_ptr()])[0] - x.sums[t];
                t += 1;
            }
        }
    }
}

/// The portable kernel: plain loops over the kernel layout. `acc` is row-major
/// `[rows of this call][n_tok]`, for rows `r0..r0 + acc.len() / n_tok`.
pub fn gemm_portable(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
    let rb = w.row_bytes();
    let block = w.packing.block();
    for (i, out) in acc.chunks_exact_mut(x.n_tok).enumerate() {
        let row = &w.data[(r0 + i) * rb..(r0 + i + 1) * rb];
        for (t, o) in out.iter_mut().enumerate() {
            let q = x.token(t);
            let mut sum = 0i32;
            for (b, bytes) in row.chunks_exact(BLOCK_BYTES).enumerate() {
                let qb = &q[b * block..(b + 1) * block];
                for (j, &byte) in bytes.iter().enumerate() {
                    match w.packing {
                        Packing::Bits2 => {
                            for k in 0..4 {
                                sum += i32::from((byte >> (2 * k)) & 3) * i32::from(qb[64 * k + j]);
                            }
                        }
                        Packing::Base3 => {
                            for (k, &d) in DIGITS[byte as usize].iter().enumerate() {
                                sum += i32::from(d + 1) * i32::from(qb[64 * k + j]);
                            }
                        }
                    }
                }
            }
            *o = sum - x.sums[t];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_five_weights_pack_to_one_byte_and_back() {
        for n in 0..243 {
            let mut t = [0i8; 5];
            let mut x = n;
            for d in t.iter_mut() {
                *d = (x % 3) as i8 - 1;
                x /= 3;
            }
            let b = base3_byte(t);
            assert!((b as i8).unsigned_abs() <= 121, "{t:?} -> {b}");
            assert_eq!(DIGITS[b as usize], t, "byte {b}");
            // Negated weights give the negated byte.
            assert_eq!(base3_byte(t.map(|d| -d)), (b as i8).wrapping_neg() as u8);
        }
    }

    #[test]
    fn repacking_keeps_every_value() {
        let (rows, cols) = (9usize, 333usize);
        let t: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 5) % 3) as i8 - 1)
            .collect();
        let hf = quant::pack_ternary(&t, rows, cols);
        let two = PackedTernary::from_hf(&hf, rows, cols);
        let three = PackedTernary::from_hf_as(&hf, rows, cols, Packing::Base3);
        assert_eq!((two.cols_padded, three.cols_padded), (512, 640));
        assert_eq!((two.row_bytes(), three.row_bytes()), (128, 128));
        let mut values = vec![0i8; cols];
        for (m, name) in [(&two, "2bit"), (&three, "base3")] {
            for r in 0..rows {
                m.row_values(r, &mut values);
                assert_eq!(values, t[r * cols..(r + 1) * cols], "{name} row {r}");
            }
        }
        assert_eq!(*three.repacked(Packing::Bits2).data, *two.data);
        assert_eq!(*two.repacked(Packing::Base3).data, *three.data);
    }
}
