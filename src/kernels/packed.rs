//! The ternary weight layout every fast kernel reads, and the portable kernel over it.
//!
//! Each row is stored as blocks of 256 weights in 64 bytes: byte j of a block holds, in bits
//! 2k..2k+1, the code (value + 1, so 0..=2) of column 64·k + j of that block. A 64-byte load
//! then gives, after a shift and a mask, the codes of 64 consecutive columns, lined up with 64
//! consecutive int8 activations: one AVX-512 register, two AVX2 halves, four NEON quarters.
//! Rows are padded to whole blocks with zero weights; activations are padded with zeros.
//!
//! Codes are unsigned, so a kernel computes Σ code·q and subtracts Σ q (computed once per
//! token): Σ (t+1)·q − Σ q = Σ t·q, exactly.

use crate::loader::bytes::Bytes;
use crate::quant;

/// Weights per block.
pub const BLOCK: usize = 256;
/// Bytes per block (2 bits per weight).
pub const BLOCK_BYTES: usize = BLOCK / 4;

/// A ternary matrix in the kernel layout.
#[derive(Debug, Clone)]
pub struct PackedTernary {
    pub rows: usize,
    pub cols: usize,
    /// Columns rounded up to whole blocks.
    pub cols_padded: usize,
    /// `rows * row_bytes()` bytes: owned after a repack, or mapped from a pre-packed file.
    pub data: Bytes,
}

impl PackedTernary {
    pub fn row_bytes(&self) -> usize {
        self.cols_padded / 4
    }

    /// Repacks from the Hugging Face layout (see `quant::pack_ternary`).
    pub fn from_hf(hf: &[u8], rows: usize, cols: usize) -> Self {
        let slab = quant::packed_rows(rows);
        let cols_padded = cols.div_ceil(BLOCK) * BLOCK;
        let row_bytes = cols_padded / 4;
        // Code 1 (weight 0) in padding, so padding columns are zero weights.
        let mut data = vec![0u8; rows * row_bytes];
        const ROWS_PER_TASK: usize = 64;
        super::pool::chunks_mut(&mut data, ROWS_PER_TASK * row_bytes, |i, rows| {
            for (k, row) in rows.chunks_exact_mut(row_bytes).enumerate() {
                let r = i * ROWS_PER_TASK + k;
                let (src, shift) = (
                    &hf[(r % slab) * cols..(r % slab + 1) * cols],
                    2 * (r / slab),
                );
                let code = |c: usize| src.get(c).map_or(1, |&byte| (byte >> shift) & 3);
                for (b, block) in row.chunks_exact_mut(BLOCK_BYTES).enumerate() {
                    for (j, out) in block.iter_mut().enumerate() {
                        let c = b * BLOCK + j;
                        *out =
                            code(c) | code(c + 64) << 2 | code(c + 128) << 4 | code(c + 192) << 6;
                    }
                }
            }
        });
        Self {
            rows,
            cols,
            cols_padded,
            data: Bytes::owned(data),
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
    /// Quantises each row of `x` (`n_tok` rows of `cols`) per token.
    pub fn new(x: &[f32], n_tok: usize) -> Self {
        let cols = x.len() / n_tok;
        let cols_padded = cols.div_ceil(BLOCK) * BLOCK;
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
                    let s = quant::quantize_activations(xr, &mut qr[..cols]);
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
        let cols_padded = cols.div_ceil(BLOCK) * BLOCK;
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
    for (i, out) in acc.chunks_exact_mut(x.n_tok).enumerate() {
        let row = &w.data[(r0 + i) * rb..(r0 + i + 1) * rb];
        for (t, o) in out.iter_mut().enumerate() {
            let q = x.token(t);
            let mut sum = 0i32;
            for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
                let qb = &q[b * BLOCK..(b + 1) * BLOCK];
                for (j, &byte) in block.iter().enumerate() {
                    for k in 0..4 {
                        sum += i32::from((byte >> (2 * k)) & 3) * i32::from(qb[64 * k + j]);
                    }
                }
            }
            *o = sum - x.sums[t];
        }
    }
}
