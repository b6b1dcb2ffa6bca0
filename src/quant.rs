//! The W1.58 A8 quantisation math: absmean ternarisation of weights, per-token absmax int8
//! activations, and the 2-bit packed weight layout of Hugging Face BitNet checkpoints.
//!
//! Rounding follows PyTorch (`torch.round` rounds half to even) so that ternary values and int8
//! activations match transformers exactly whenever the float inputs match.

/// Values per packed byte (2 bits each).
pub const VALUES_PER_BYTE: usize = 4;

/// Smallest scale denominators, as in BitNet b1.58 (and transformers): avoids division by zero
/// for all-zero weights or activations.
pub const MIN_ABS: f32 = 1e-5;

/// Ternarises latent weights by absmean: γ = max(mean|W|, 1e-5), T = clamp(round(W/γ), -1, 1).
///
/// Like transformers, W/γ is computed as W·(1/γ) in f32. The mean is accumulated in f64, which
/// is at least as accurate as PyTorch's pairwise f32 sum. Returns (T, γ).
pub fn absmean_ternarize(w: &[f32]) -> (Vec<i8>, f32) {
    let sum: f64 = w.iter().map(|x| f64::from(x.abs())).sum();
    let mean = if w.is_empty() {
        0.0
    } else {
        (sum / w.len() as f64) as f32
    };
    let inv = 1.0 / mean.max(MIN_ABS);
    let t = w
        .iter()
        .map(|&x| (x * inv).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (t, 1.0 / inv)
}

/// Rounds half to even, as `f32::round_ties_even`, for |v| ≤ 2^22: adding and subtracting
/// 1.5·2^23 leaves the nearest integer under the default rounding mode. Unlike
/// `round_ties_even` on baseline x86-64 (a libm call), this vectorises.
#[inline(always)]
pub(crate) fn round_half_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (v + MAGIC) - MAGIC
}

/// Per-token activation quantisation: s = 127 / max(|x|, 1e-5), q = clamp(round(x·s), -128, 127).
/// Writes q and returns s. The output of a BitLinear is then `acc · γ / s`.
pub fn quantize_activations(x: &[f32], q: &mut [i8]) -> f32 {
    quantize_activations_inline(x, q)
}

/// The body of `quantize_activations`, inlined into each compiled version of it (the kernels'
/// table holds an AVX-512 build).
#[inline(always)]
pub(crate) fn quantize_activations_inline(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), q.len());
    // Sixteen running maxima (the maximum does not depend on the order), so the loop vectorises.
    let mut lanes = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let max = tail
        .iter()
        .chain(&lanes)
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let s = 127.0 / max.max(MIN_ABS);
    for (qi, &xi) in q.iter_mut().zip(x) {
        // |x·s| ≤ 127 (up to rounding), far inside the range where the trick is exact; NaN
        // inputs end as 0 through the saturating cast. Through i32: the clamped value fits, and
        // the i32 conversion vectorises where a saturating one to i8 does not.
        *qi = round_half_even_small(xi * s).clamp(-128.0, 127.0) as i32 as i8;
    }
    s
}

/// Number of packed rows for `rows` ternary rows: each packed row holds up to four.
pub fn packed_rows(rows: usize) -> usize {
    rows.div_ceil(VALUES_PER_BYTE)
}

/// Packs ternary values `[rows, cols]` (row-major, values in -1..=1) into the Hugging Face
/// layout `[ceil(rows/4), cols]`: bits 2i..2i+1 of packed row r hold row i·ceil(rows/4)+r,
/// as the code (value + 1).
pub fn pack_ternary(values: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(
        values.len(),
        rows * cols,
        "pack_ternary: values do not match shape"
    );
    let slab = packed_rows(rows);
    let mut packed = vec![0u8; slab * cols];
    for (r, row) in values.chunks_exact(cols).enumerate() {
        let (dst, shift) = (r % slab, 2 * (r / slab));
        for (p, &v) in packed[dst * cols..(dst + 1) * cols].iter_mut().zip(row) {
            *p |= ((v + 1) as u8) << shift;
        }
    }
    packed
}

/// The ternary value of row `r`, column `c` in a packed matrix with `slab` packed rows.
#[inline]
pub fn packed_value(packed: &[u8], slab: usize, cols: usize, r: usize, c: usize) -> i8 {
    let byte = packed[(r % slab) * cols + c];
    ((byte >> (2 * (r / slab))) & 3) as i8 - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_rounding_is_half_to_even() {
        // max 127 → s = 1 exactly, so x·s = x and the rounding mode is visible.
        let x = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49];
        let mut q = [0i8; 8];
        let s = quantize_activations(&x, &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [127, 0, 2, 2, 0, -2, -2, 0]);
    }

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        let mut v = -200.0f32;
        while v <= 200.0 {
            for x in [v, v + 0.5, v - 0.5, v + 0.49999997, v + 0.50000006] {
                assert_eq!(round_half_even_small(x), x.round_ties_even(), "{x}");
            }
            v += 0.25;
        }
    }

    #[test]
    fn activation_scale_uses_absmax_and_floor() {
        let mut q = [0i8; 3];
        let s = quantize_activations(&[0.0, 0.0, 0.0], &mut q);
        assert_eq!(s, 127.0 / 1e-5);
        assert_eq!(q, [0, 0, 0]);
        let s = quantize_activations(&[-2.0, 1.0, 0.0], &mut q);
        assert_eq!(s, 63.5);
        assert_eq!(q, [-127, 64, 0]); // 63.5 rounds to even 64
    }

    #[test]
    fn absmean_matches_definition() {
        let w = [0.5, -1.0, 0.1, 0.0, 2.0, -0.26];
        let (t, gamma) = absmean_ternarize(&w);
        let mean = (0.5 + 1.0 + 0.1 + 0.0 + 2.0 + 0.26) / 6.0;
        assert!((gamma - mean as f32).abs() < 1e-7);
        // 0.5/0.643 = 0.78 → 1; 0.1/0.643 → 0; -0.26/0.643 = -0.40 → 0; 2/0.643 → clamp 1.
        assert_eq!(t, vec![1, -1, 0, 0, 1, 0]);
        let (t, gamma) = absmean_ternarize(&[0.0; 4]);
        assert_eq!(t, vec![0; 4]);
        assert!((gamma - 1e-5).abs() < 1e-12);
    }

    #[test]
    fn pack_matches_hf_layout() {
        // 8 rows, 1 column: slab = 2, so packed row 0 holds rows 0,2,4,6 and row 1 holds 1,3,5,7.
        let v = [-1i8, 0, 1, -1, 0, 1, 1, 0];
        let p = pack_ternary(&v, 8, 1);
        assert_eq!(p, vec![0b10_01_10_00, 0b01_10_00_01]);
        for (r, &x) in v.iter().enumerate() {
            assert_eq!(packed_value(&p, 2, 1, r, 0), x);
        }
    }

    #[test]
    fn pack_handles_rows_not_multiple_of_four() {
        let rows = 7;
        let cols = 3;
        let v: Vec<i8> = (0..rows * cols).map(|i| (i % 3) as i8 - 1).collect();
        let p = pack_ternary(&v, rows, cols);
        assert_eq!(p.len(), 2 * cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(packed_value(&p, 2, cols, r, c), v[r * cols + c]);
            }
        }
    }
}
