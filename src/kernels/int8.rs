//! An int8 copy of a dense matrix (the output head): per-row absmax scales, int8 activations per
//! token, exact int32 dot products. Half the bytes of bf16 per decode step, for a small
//! accuracy cost measured by tests/head_int8.rs and reported by `bit-ttt bench`.

use super::Kernels;
use super::dense::DenseView;
use crate::storage::Bytes;

/// Columns are padded to a multiple of this (zeros), so SIMD loops need no tail.
const PAD: usize = 64;

/// A `[rows, cols]` matrix as int8 with one f32 scale per row.
#[derive(Debug, Clone)]
pub struct Int8Matrix {
    pub rows: usize,
    pub cols: usize,
    pub cols_padded: usize,
    /// `rows × cols_padded` int8 values (as bytes: they may be mapped from a file).
    pub w: Bytes,
    /// Row r's values are `w[r] * row_scale[r]`.
    pub row_scale: Vec<f32>,
}

impl Int8Matrix {
    /// Quantises each row by its absmax: w = round(v · 127 / max|v|).
    pub fn from_dense(m: DenseView) -> Self {
        let cols_padded = Self::padded_cols(m.cols);
        let mut w = vec![0i8; m.rows * cols_padded];
        const ROWS_PER_TASK: usize = 64;
        let tasks: Vec<_> = w
            .chunks_mut(ROWS_PER_TASK * cols_padded)
            .enumerate()
            .collect();
        let row_scale = super::pool::map(tasks, |(i, rows)| {
            let mut vals = vec![0f32; m.cols];
            rows.chunks_exact_mut(cols_padded)
                .enumerate()
                .map(|(k, out)| {
                    m.row_into(i * ROWS_PER_TASK + k, &mut vals);
                    1.0 / (Kernels::best().quantize.run)(&vals, &mut out[..m.cols])
                })
                .collect::<Vec<f32>>()
        })
        .concat();
        Self {
            rows: m.rows,
            cols: m.cols,
            cols_padded,
            w: Bytes::owned(w.into_iter().map(|v| v as u8).collect()),
            row_scale,
        }
    }

    /// A matrix stored by `parts` (e.g. in a pre-packed file, the values mapped in place);
    /// `None` when the sizes do not fit a `[rows, cols]` matrix.
    pub fn from_parts(rows: usize, cols: usize, w: Bytes, row_scale: Vec<f32>) -> Option<Self> {
        let cols_padded = Self::padded_cols(cols);
        let fits = w.len() == rows * cols_padded && row_scale.len() == rows;
        fits.then_some(Self {
            rows,
            cols,
            cols_padded,
            w,
            row_scale,
        })
    }

    /// Columns as stored: `cols` rounded up to the SIMD width.
    pub fn padded_cols(cols: usize) -> usize {
        cols.div_ceil(PAD) * PAD
    }

    pub fn bytes(&self) -> usize {
        self.w.len() + 4 * self.row_scale.len()
    }

    fn row(&self, r: usize) -> &[i8] {
        let bytes = &self.w[r * self.cols_padded..(r + 1) * self.cols_padded];
        // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
    }
}

pub(super) fn dot_portable(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// `out[t][r] = W[r] · x[t]` through int8: activations quantised per token, exact int32 sums.
pub fn gemm(kernels: &Kernels, m: &Int8Matrix, x: &[f32], n_tok: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n_tok * m.cols, "int8 gemm: input size");
    assert_eq!(out.len(), n_tok * m.rows, "int8 gemm: output size");
    let mut q = vec![0i8; n_tok * m.cols_padded];
    let inv: Vec<f32> = x
        .chunks_exact(m.cols)
        .zip(q.chunks_exact_mut(m.cols_padded))
        .map(|(xr, qr)| 1.0 / (kernels.quantize.run)(xr, &mut qr[..m.cols]))
        .collect();
    for t in 0..n_tok {
        let qt = &q[t * m.cols_padded..(t + 1) * m.cols_padded];
        let per_task = super::pool::per_task(m.rows, 256, 4096);
        super::pool::chunks_mut(&mut out[t * m.rows..][..m.rows], per_task, |i, o| {
            for (k, o) in o.iter_mut().enumerate() {
                let r = i * per_task + k;
                *o = (kernels.int8_dot.run)(m.row(r), qt) as f32 * (m.row_scale[r] * inv[t]);
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// i8 · i8 with AVX-512 BW: sign-transfer so `vpmaddubsw` sees |a| (unsigned) and b·sign(a);
    /// each pair sum stays within i16 (2 · 127 · 128 < 32768).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW; `a` and `b` have the same length, a multiple of 64.
    /// `b` must not hold -128 (its negation would wrap); absmax quantisation never produces it.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn dot_avx512bw(a: &[i8], b: &[i8]) -> i32 {
        let ones = _mm512_set1_epi16(1);
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_si512();
        for i in (0..a.len()).step_by(64) {
            // SAFETY: i + 64 <= len for both slices (caller's contract).
            let (va, vb) = unsafe {
                (
                    _mm512_loadu_si512(a.as_ptr().add(i).cast()),
                    _mm512_loadu_si512(b.as_ptr().add(i).cast()),
                )
            };
            // A hint that never faults: the next rows arrive while this one is summed.
            _mm_prefetch::<_MM_HINT_T1>(a.as_ptr().wrapping_add(i + 8192).cast());
            let neg = _mm512_movepi8_mask(va);
            let abs_a = _mm512_abs_epi8(va);
            let signed_b = _mm512_mask_sub_epi8(vb, neg, zero, vb);
            acc = _mm512_add_epi32(
                acc,
                _mm512_madd_epi16(_mm512_maddubs_epi16(abs_a, signed_b), ones),
            );
        }
        _mm512_reduce_add_epi32(acc)
    }

    /// The AVX2 version of `dot_avx512bw`, with `vpsignb`.
    ///
    /// # Safety
    /// The CPU supports AVX2; lengths as for `dot_avx512bw`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_avx2(a: &[i8], b: &[i8]) -> i32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for i in (0..a.len()).step_by(32) {
            // SAFETY: i + 32 <= len for both slices (caller's contract).
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i).cast()),
                )
            };
            // A hint that never faults: the next rows arrive while this one is summed.
            _mm_prefetch::<_MM_HINT_T1>(a.as_ptr().wrapping_add(i + 8192).cast());
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
        }
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256::<1>(acc),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;

    #[test]
    fn simd_int8_dots_are_exact() {
        for len in [64usize, 128, 2560, 4096] {
            for pattern in 0..4 {
                let a: Vec<i8> = (0..len)
                    .map(|i| match pattern {
                        0 => -128,
                        1 => 127,
                        2 => {
                            if i % 2 == 0 {
                                -128
                            } else {
                                127
                            }
                        }
                        _ => ((i * 37 + 11) % 256) as u8 as i8,
                    })
                    .collect();
                // The second operand never holds -128 (both sides come from absmax quantisation).
                let b: Vec<i8> = (0..len)
                    .map(|i| (((i * 91 + 5) % 255) as i32 - 127) as i8)
                    .collect();
                let want = dot_portable(&a, &b);
                for k in Isa::available().into_iter().map(Isa::kernels) {
                    assert_eq!(
                        (k.int8_dot.run)(&a, &b),
                        want,
                        "{} len {len} pattern {pattern}",
                        k.isa.name()
                    );
                }
            }
        }
    }
}
