//! Dense float products (the output head, and linears left unquantised): rows stored as f32,
//! bf16 or f16, activations in f32, accumulated in f32. SIMD paths follow the ternary kernel
//! choice; their sums differ from the scalar loop only by float rounding order.

use super::Kernels;
use crate::storage::DType;

/// A dense `[rows, cols]` matrix view.
#[derive(Clone, Copy)]
pub struct DenseView<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl DenseView<'_> {
    fn row(&self, r: usize) -> &[u8] {
        let n = self.cols * self.dtype.size();
        &self.data[r * n..(r + 1) * n]
    }

    /// Row `r` as f32 values.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        for (i, o) in out.iter_mut().enumerate() {
            *o = value(self.dtype, row, i);
        }
    }
}

fn value(dtype: DType, b: &[u8], i: usize) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        DType::BF16 => half::bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        DType::F16 => half::f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        DType::U8 | DType::I8 => unreachable!("dense rows are float"),
    }
}

/// Portable dot product of a stored row with f32 values, left to right.
pub(super) fn dot_portable(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    x.iter()
        .enumerate()
        .fold(0.0, |s, (i, &v)| s + value(dtype, row, i) * v)
}

/// `out[t][r] = Σ_c W[r][c] · x[t][c]`, rows split across the current pool.
pub fn gemm(kernels: &Kernels, w: DenseView, x: &[f32], n_tok: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n_tok * w.cols, "dense gemm: input size");
    assert_eq!(out.len(), n_tok * w.rows, "dense gemm: output size");
    let dot = kernels.dense_dot.run;
    let per_task = super::pool::per_task(w.rows, 16, 1024);
    if n_tok == 1 {
        super::pool::chunks_mut(out, per_task, |i, chunk| {
            for (k, o) in chunk.iter_mut().enumerate() {
                *o = dot(w.dtype, w.row(i * per_task + k), x);
            }
        });
        return;
    }
    let mut row_major = vec![0.0f32; out.len()];
    super::pool::chunks_mut(&mut row_major, per_task * n_tok, |i, chunk| {
        for (k, o) in chunk.chunks_exact_mut(n_tok).enumerate() {
            let row = w.row(i * per_task + k);
            for (t, v) in o.iter_mut().enumerate() {
                *v = dot(w.dtype, row, &x[t * w.cols..(t + 1) * w.cols]);
            }
        }
    });
    for (r, vals) in row_major.chunks_exact(n_tok).enumerate() {
        for (t, v) in vals.iter().enumerate() {
            out[t * w.rows + r] = *v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::{DType, dot_portable};

    /// # Safety
    /// The CPU supports AVX-512 F; `row` holds `x.len()` values of `dtype`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
        let n = x.len() / 16 * 16;
        let mut acc = _mm512_setzero_ps();
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 <= n <= x.len(), and the row holds x.len() values.
            let (w, v) = unsafe {
                let w = match dtype {
                    DType::F32 => _mm512_loadu_ps(rp.add(4 * i).cast()),
                    DType::BF16 => {
                        let h = _mm256_loadu_si256(rp.add(2 * i).cast());
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                    }
                    DType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(rp.add(2 * i).cast())),
                    DType::U8 | DType::I8 => unreachable!("dense rows are float"),
                };
                (w, _mm512_loadu_ps(xp.add(i)))
            };
            acc = _mm512_fmadd_ps(w, v, acc);
        }
        let size = dtype.size();
        _mm512_reduce_add_ps(acc) + dot_portable(dtype, &row[n * size..], &x[n..])
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `row` holds `x.len()` values of `dtype`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_avx2(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
        let n = x.len() / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= x.len(), and the row holds x.len() values.
            let (w, v) = unsafe {
                let w = match dtype {
                    DType::F32 => _mm256_loadu_ps(rp.add(4 * i).cast()),
                    DType::BF16 => {
                        let h = _mm_loadu_si128(rp.add(2 * i).cast());
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                    }
                    DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(rp.add(2 * i).cast())),
                    DType::U8 | DType::I8 => unreachable!("dense rows are float"),
                };
                (w, _mm256_loadu_ps(xp.add(i)))
            };
            acc = _mm256_fmadd_ps(w, v, acc);
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        let size = dtype.size();
        _mm_cvtss_f32(s) + dot_portable(dtype, &row[n * size..], &x[n..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;

    #[test]
    fn simd_dots_match_the_portable_sum() {
        let cols = 1000 + 7;
        let vals: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
            .collect();
        let encodings: [(DType, Vec<u8>); 3] = [
            (
                DType::F32,
                vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                DType::BF16,
                vals.iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            (
                DType::F16,
                vals.iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
        ];
        for (dtype, data) in &encodings {
            let view = DenseView {
                dtype: *dtype,
                data,
                rows: 3,
                cols,
            };
            let mut want = vec![0.0; 6];
            gemm(Isa::Portable.kernels(), view, &x, 2, &mut want);
            for k in Isa::available().into_iter().map(Isa::kernels) {
                let mut got = vec![0.0; 6];
                gemm(k, view, &x, 2, &mut got);
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                        "{} {dtype:?}: {a} vs {b}",
                        k.isa.name()
                    );
                }
            }
        }
    }
}
