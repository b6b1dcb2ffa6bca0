//! The transposed ternary product the backward pass needs: `dx[t] += Σ_r dy[t][r] · T[r]`, with
//! f32 gradients `dy` (the straight-through estimator passes them through the int8 activation
//! quantiser unchanged, so they are never quantised).
//!
//! Work is tiled as (16 tokens) × (one block of the kernel layout: 256 columns, or 320 in the
//! base-3 layout): each weight block is decoded once to ±1/0 floats and then used by 16 tokens from an L1-resident accumulator.
//! Every product is exact (dy · ±1 or 0), and each output sums its rows in ascending order from
//! zero before being added to `dx`, so every path equals the scalar oracle bit for bit.

use super::Kernels;
use super::packed::{BLOCK, BLOCK_BYTES, BLOCK3, DIGITS, PackedTernary, Packing};

/// Tokens per tile.
const TOKENS: usize = 16;

/// One tile: tokens `t0..t0 + acc.len() / B`, column block `b` of B weights (the packing's
/// block); `acc` is `[tokens][B]`.
#[inline(always)]
fn tile_of<const B: usize>(w: &PackedTernary, dy: &[f32], t0: usize, b: usize, acc: &mut [f32]) {
    let rb = w.row_bytes();
    let mut vals = [0.0f32; B];
    for r in 0..w.rows {
        let block = &w.data[r * rb + b * BLOCK_BYTES..][..BLOCK_BYTES];
        for (k, slice) in vals.chunks_exact_mut(64).enumerate() {
            for (v, &byte) in slice.iter_mut().zip(block) {
                *v = match w.packing {
                    Packing::Bits2 => f32::from((byte >> (2 * k)) & 3) - 1.0,
                    Packing::Base3 => f32::from(DIGITS[byte as usize][k]),
                };
            }
        }
        for (t, a) in acc.chunks_exact_mut(B).enumerate() {
            let d = dy[(t0 + t) * w.rows + r];
            for (a, &v) in a.iter_mut().zip(&vals) {
                *a += d * v;
            }
        }
    }
}

/// The table's portable entry (NEON is part of the aarch64 baseline: this loop vectorises to
/// it).
#[inline(always)]
pub(super) fn tile(w: &PackedTernary, dy: &[f32], t0: usize, b: usize, acc: &mut [f32]) {
    match w.packing {
        Packing::Bits2 => tile_of::<BLOCK>(w, dy, t0, b, acc),
        Packing::Base3 => tile_of::<BLOCK3>(w, dy, t0, b, acc),
    }
}

/// `tile` compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_avx2(
    w: &PackedTernary,
    dy: &[f32],
    t0: usize,
    b: usize,
    acc: &mut [f32],
) {
    tile(w, dy, t0, b, acc)
}

/// `tile` compiled for AVX-512.
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn tile_avx512(
    w: &PackedTernary,
    dy: &[f32],
    t0: usize,
    b: usize,
    acc: &mut [f32],
) {
    tile(w, dy, t0, b, acc)
}

impl Kernels {
    /// `dx[t][c] += Σ_r dy[t][r] · T[r][c]` for `n_tok` tokens: `dy` is `[n_tok, rows]`, `dx`
    /// is `[n_tok, cols]`. The caller applies γ.
    pub fn ternary_gemm_t(&self, w: &PackedTernary, dy: &[f32], n_tok: usize, dx: &mut [f32]) {
        assert_eq!(dy.len(), n_tok * w.rows, "ternary_gemm_t: dy size");
        assert_eq!(dx.len(), n_tok * w.cols, "ternary_gemm_t: dx size");
        let block = w.packing.block();
        let blocks = w.cols_padded / block;
        let tiles: Vec<(usize, usize)> = (0..n_tok)
            .step_by(TOKENS)
            .flat_map(|t0| (0..blocks).map(move |b| (t0, b)))
            .collect();
        let done: Vec<(usize, usize, Vec<f32>)> = super::pool::map(tiles, |(t0, b)| {
            let n = TOKENS.min(n_tok - t0);
            let mut acc = vec![0.0f32; n * block];
            (self.transposed_tile.run)(w, dy, t0, b, &mut acc);
            (t0, b, acc)
        });
        for (t0, b, acc) in done {
            let c0 = b * block;
            let width = block.min(w.cols - c0);
            for (t, a) in acc.chunks_exact(block).enumerate() {
                let row = &mut dx[(t0 + t) * w.cols + c0..][..width];
                row.iter_mut().zip(a).for_each(|(x, a)| *x += a);
            }
        }
    }
}
