//! Reference kernels: plain loops, exact integer math for the ternary products, f32 for the rest.
//! Work is split across the pool's threads by output row only, which keeps every result
//! identical to the single-threaded loop.

use crate::quant::packed_value;

/// Rows per task: enough work to amortise scheduling.
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
    let starts: Vec<usize> = (0..rows).step_by(ROWS_PER_TASK).collect();
    let blocks: Vec<(usize, Vec<i32>)> = super::pool::map(starts, |r0| {
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
    });
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
    super::pool::chunks_mut(dx, cols, |t, out| {
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

/// RMSNorm as transformers computes it: x · rsqrt(mean(x²) + eps) · w, in f32. The mean square
/// is summed in f64 (each square is exact there) over eight lanes, lane i taking every eighth
/// value from i, then `dot`'s tree, then the tail in order: a fixed order, so the same bits on
/// every machine, and no chain of 2,560-6,912 dependent adds, so that the loop vectorises.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_inline(x, w, eps, out)
}

/// The body of `rms_norm`, inlined into each compiled version of it.
#[inline(always)]
pub(crate) fn rms_norm_inline(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut l = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (li, &v) in l.iter_mut().zip(c) {
            *li += f64::from(v) * f64::from(v);
        }
    }
    let mut ss = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    for &v in tail {
        ss += f64::from(v) * f64::from(v);
    }
    let ms = ss / x.len() as f64;
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

/// In-place softmax over a row, max-subtracted for stability: exponentials by `exp`, summed
/// in order, then scaled by the sum's inverse. `attention::softmax` runs the same operations
/// vectorised.
pub fn softmax(x: &mut [f32]) {
    softmax_inline(x)
}

/// `softmax`'s body, inlined into the SIMD builds of it (`#[target_feature]` callers), where the
/// max, the exponentials and the scaling vectorise; the sum stays a serial chain in order.
#[inline(always)]
pub(crate) fn softmax_inline(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for v in x.iter_mut() {
        // exp is exactly 0 below ln(2^-150) ≈ -103.97 (-inf - max included).
        let e = *v - max;
        *v = if e < -104.0 { 0.0 } else { exp(e) };
    }
    let sum = x.iter().fold(0.0f32, |s, &v| s + v);
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// e^x rounded once from an f64 evaluation (|error| < 2^-50 relative before rounding): the
/// correctly rounded f32 unless e^x lies that close to a midpoint between two floats, as for
/// libm's expf and the CUDA kernels' `(float)exp((double)x)`, so all three agree but for such
/// vanishingly rare inputs. Only f64 adds, multiplies and bit operations, no call and no
/// table: a loop of it vectorises, and every build computes the same bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f64 = std::f64::consts::LOG2_E;
    // ln 2 split so that k · LN2_HI is exact for |k| < 2^20.
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // Adding 1.5 · 2^52 rounds to an integer (to even), which the low bits of the sum then hold.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    // Beyond these e^x is 0 or +inf in f32; clamping keeps 2^k a normal f64. NaN passes.
    let x = if x < -104.0 {
        -104.0
    } else if x > 89.0 {
        89.0
    } else {
        f64::from(x)
    };
    let t = x * LOG2_E + ROUND;
    let k = t - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // e^r for |r| <= ln2 / 2 by its Taylor series to r^13 (remainder < 2^-57).
    const C: [f64; 14] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let mut p = C[13];
    for &c in C[..13].iter().rev() {
        p = p * r + c;
    }
    // 2^k from k's low bits in t (k + 1023 stays within 1..=2046 after the clamp).
    let two_k = f64::from_bits(t.to_bits().wrapping_add(1023) << 52);
    (p * two_k) as f32
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

    /// `exp` against f64's exp rounded once to f32 (what the CUDA kernels compute, and the
    /// correctly rounded value but for vanishingly rare inputs) on every 61st float from -110
    /// to 90 (~37 million inputs) and the edges: equal but for at most a handful; and within
    /// one unit in the last place of libm's expf (which is not correctly rounded: it differs
    /// from the f64 value on ~1 input in 13,000).
    #[test]
    fn exp_is_f64_exp_rounded_once() {
        let (mut n, mut differ) = (0u64, 0u64);
        let mut check = |x: f32| {
            let (got, want) = (exp(x), f64::from(x).exp() as f32);
            n += 1;
            differ += u64::from(got.to_bits() != want.to_bits());
            let ulps = (got.to_bits() as i64 - x.exp().to_bits() as i64).abs();
            assert!(ulps <= 1, "exp({x:e}) = {got:e}, expf {:e}", x.exp());
        };
        // Negative floats: bits from 0x8000_0000 up to -110's; positive: 0 up to 90's.
        ((-0.0f32).to_bits()..=(-110.0f32).to_bits())
            .step_by(61)
            .for_each(|b| check(f32::from_bits(b)));
        (0..=90.0f32.to_bits())
            .step_by(61)
            .for_each(|b| check(f32::from_bits(b)));
        for x in [
            0.0, 1.0, -1.0, 88.72, 88.73, 89.5, -87.3, -103.9, -104.5, -1e-30,
        ] {
            check(x);
        }
        assert!(n > 30_000_000 && differ <= 4, "{differ} of {n} differ");
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
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
