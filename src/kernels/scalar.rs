//! Reference kernels: plain loops, exact integer math for the ternary products, f32 for the rest.
//! Work is split across rayon threads by output row only, which keeps every result identical to
//! the single-threaded loop.

use rayon::prelude::*;

use crate::quant::packed_value;

/// Rows per rayon task: enough work to amortise scheduling.
const ROWS_PER_TASK: usize = 64;

/// `acc[t][r] = Σ_c T[r][c] · q[t][c]` for a ternary matrix `[rows, cols]` in the Hugging Face
/// packed layout (see `quant::pack_ternary`) and `n_tok` int8 activation rows.
pub fn ternary_gemm(
    packed: &[u8],
    rows: usize,
    cols: usize,
    q: &[i8],
    n_tok: usize,
    acc: &mut [i32],
) {
    let slab = crate::quant::packed_rows(rows);
    assert_eq!(packed.len(), slab * cols, "ternary_gemm: packed size");
    assert_eq!(q.len(), n_tok * cols, "ternary_gemm: activation size");
    assert_eq!(acc.len(), n_tok * rows, "ternary_gemm: output size");
    // Output is token-major; parallelise over row blocks and scatter per token.
    let blocks: Vec<(usize, Vec<i32>)> = (0..rows)
        .step_by(ROWS_PER_TASK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|r0| {
            let r1 = (r0 + ROWS_PER_TASK).min(rows);
            let mut out = vec![0i32; (r1 - r0) * n_tok];
            for r in r0..r1 {
                for t in 0..n_tok {
                    let qt = &q[t * cols..(t + 1) * cols];
                    let mut sum = 0i32;
                    for (c, &x) in qt.iter().enumerate() {
                        sum += i32::from(packed_value(packed, slab, cols, r, c)) * i32::from(x);
                    }
                    out[(r - r0) * n_tok + t] = sum;
                }
            }
            (r0, out)
        })
        .collect();
    for (r0, out) in blocks {
        let n = out.len() / n_tok;
        for i in 0..n {
            for t in 0..n_tok {
                acc[t * rows + r0 + i] = out[i * n_tok + t];
            }
        }
    }
}

/// The transposed product: `dx[t][c] += Σ_r dy[t][r] · T[r][c]` for a ternary matrix in the
/// Hugging Face packed layout, `dy` `[n_tok, rows]`, `dx` `[n_tok, cols]`. Each output sums its
/// rows in ascending order from zero, then is added to `dx`.
pub fn ternary_gemm_t(
    packed: &[u8],
    rows: usize,
    cols: usize,
    dy: &[f32],
    n_tok: usize,
    dx: &mut [f32],
) {
    let slab = crate::quant::packed_rows(rows);
    assert_eq!(packed.len(), slab * cols, "ternary_gemm_t: packed size");
    assert_eq!(dy.len(), n_tok * rows, "ternary_gemm_t: dy size");
    assert_eq!(dx.len(), n_tok * cols, "ternary_gemm_t: dx size");
    dx.par_chunks_mut(cols).enumerate().for_each(|(t, out)| {
        for (c, o) in out.iter_mut().enumerate() {
            let mut sum = 0.0f32;
            for r in 0..rows {
                sum += dy[t * rows + r] * f32::from(packed_value(packed, slab, cols, r, c));
            }
            *o += sum;
        }
    });
}

/// f32 dot product.
///
/// Eight interleaved partial sums let the compiler vectorise the loop; the summation order is
/// fixed, so the result does not depend on the CPU.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += a · x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// RMSNorm as transformers computes it: x · rsqrt(mean(x²) + eps) · w, in f32.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / ((ms as f32) + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = wi * (xi * inv);
    }
}

/// Rotates one head in place by the HF half-split convention: the first half pairs with the
/// second half, (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin).
pub fn rope_half_split(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    debug_assert_eq!(cos.len(), half);
    let (a, b) = x.split_at_mut(half);
    for i in 0..half {
        let (x1, x2) = (a[i], b[i]);
        a[i] = x1 * cos[i] - x2 * sin[i];
        b[i] = x2 * cos[i] + x1 * sin[i];
    }
}

/// In-place softmax over a row, max-subtracted for stability.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        // expf is exactly 0 below ln(2^-150) ≈ -103.97, but reaches it through libm's slow
        // underflow path (errno): long contexts have many such scores.
        let e = *v - max;
        *v = if e < -104.0 { 0.0 } else { e.exp() };
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::pack_ternary;

    #[test]
    fn ternary_gemm_matches_naive() {
        let (rows, cols, n_tok) = (13, 37, 3);
        let t: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 5) % 3) as i8 - 1)
            .collect();
        let q: Vec<i8> = (0..n_tok * cols)
            .map(|i| ((i * 31) % 256) as u8 as i8)
            .collect();
        let packed = pack_ternary(&t, rows, cols);
        let mut acc = vec![0; n_tok * rows];
        ternary_gemm(&packed, rows, cols, &q, n_tok, &mut acc);
        for tok in 0..n_tok {
            for r in 0..rows {
                let want: i32 = (0..cols)
                    .map(|c| i32::from(t[r * cols + c]) * i32::from(q[tok * cols + c]))
                    .sum();
                assert_eq!(acc[tok * rows + r], want, "tok {tok} row {r}");
            }
        }
    }

    #[test]
    fn extreme_activations_do_not_overflow() {
        let (rows, cols) = (4, 4099);
        let t = vec![-1i8; rows * cols];
        let q = vec![-128i8; cols];
        let mut acc = vec![0; rows];
        ternary_gemm(&pack_ternary(&t, rows, cols), rows, cols, &q, 1, &mut acc);
        assert_eq!(acc, vec![128 * 4099; rows]);
    }

    #[test]
    fn rms_norm_known_values() {
        let mut out = [0.0; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let inv = 1.0 / 12.5f32.sqrt();
        assert_eq!(out, [3.0 * inv, 2.0 * (4.0 * inv)]);
    }

    #[test]
    fn rope_rotates_pairs_across_halves() {
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope_half_split(&mut x, &[0.0, 1.0], &[1.0, 0.0]);
        // pair (1,3) rotated by 90°: (−3, 1); pair (2,4) unrotated.
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }
}
