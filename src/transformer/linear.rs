//! Linear layers: ternary BitLinear (W1.58 A8, exact integer products) and dense float
//! (the output head and any module transformers leaves unquantised).

use std::cell::OnceCell;

use crate::kernels::dense::{self, DenseView};
use crate::kernels::packed::{PackedTernary, QuantizedRows};
use crate::kernels::{Kernels, pool};
use crate::storage::Bytes;
use crate::storage::DType;

/// A dense `[rows, cols]` matrix stored as f32, f16 or bf16 bytes (often memory-mapped).
#[derive(Debug, Clone)]
pub struct FloatMatrix {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    pub data: Bytes,
    /// Rows are fetched with `Bytes::read_into` (file reads) rather than through the mapping:
    /// set for an embedding table that is only looked up (see `read_into` for why).
    pub read_rows: bool,
}

impl FloatMatrix {
    /// Decodes row `r` into `out` as f32.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let size = self.dtype.size();
        let range = r * self.cols * size..(r + 1) * self.cols * size;
        let mut buf = Vec::new();
        let bytes = if self.read_rows {
            buf.resize(range.len(), 0);
            self.data.read_into(range, &mut buf);
            &buf[..]
        } else {
            &self.data[range]
        };
        match self.dtype {
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            DType::U8 | DType::I8 => unreachable!("FloatMatrix is built only from float tensors"),
        }
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    pub fn view(&self) -> DenseView<'_> {
        DenseView {
            dtype: self.dtype,
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
        }
    }
}

/// A ternary matrix in the kernels' layout with its per-tensor scale γ.
#[derive(Debug, Clone)]
pub struct TernaryMatrix {
    pub packed: PackedTernary,
    /// Output = acc · γ / s; `weight_scale` already turned into γ by the loader.
    pub gamma: f32,
}

/// One projection of a transformer block.
#[derive(Debug, Clone)]
pub enum Linear {
    Ternary(TernaryMatrix),
    Dense(FloatMatrix),
}

/// Input rows of a linear layer, quantised to int8 at most once however many layers read it
/// (Q/K/V share one quantisation, gate/up another).
pub struct Activations<'a> {
    pub x: &'a [f32],
    pub n_tok: usize,
    pub cols: usize,
    quantized: OnceCell<QuantizedRows>,
}

impl<'a> Activations<'a> {
    pub fn new(x: &'a [f32], n_tok: usize) -> Self {
        assert!(n_tok > 0 && x.len().is_multiple_of(n_tok));
        Self {
            x,
            n_tok,
            cols: x.len() / n_tok,
            quantized: OnceCell::new(),
        }
    }

    /// Per-token int8 values (padded for the kernels), their sums and scales s.
    pub fn quantized(&self, kernels: &Kernels) -> &QuantizedRows {
        self.quantized
            .get_or_init(|| QuantizedRows::new(kernels, self.x, self.n_tok))
    }
}

impl Linear {
    pub fn rows(&self) -> usize {
        match self {
            Linear::Ternary(t) => t.packed.rows,
            Linear::Dense(d) => d.rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Linear::Ternary(t) => t.packed.cols,
            Linear::Dense(d) => d.cols,
        }
    }
    /// Bytes of weights as held in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Linear::Ternary(t) => t.packed.data.len() + 4,
            Linear::Dense(d) => d.bytes(),
        }
    }

    /// The effective weight `[rows, cols]` as f32 (γ·T for ternary): for the gradient tests'
    /// float mode and for dense backward products.
    pub fn dequantized(&self) -> Vec<f32> {
        let (rows, cols) = (self.rows(), self.cols());
        let mut w = vec![0.0f32; rows * cols];
        match self {
            Linear::Ternary(t) => {
                let mut values = vec![0i8; cols];
                for (r, out) in w.chunks_exact_mut(cols).enumerate() {
                    t.packed.row_values(r, &mut values);
                    for (o, &v) in out.iter_mut().zip(&values) {
                        *o = f32::from(v) * t.gamma;
                    }
                }
            }
            Linear::Dense(d) => {
                for (r, out) in w.chunks_exact_mut(cols).enumerate() {
                    d.row_into(r, out);
                }
            }
        }
        w
    }

    /// `out[t] = W · x[t]` with f32 inputs (no activation quantiser): the gradient tests' mode.
    pub fn forward_float(&self, x: &[f32], n_tok: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows(), self.cols());
        let w = self.dequantized();
        for t in 0..n_tok {
            for r in 0..rows {
                out[t * rows + r] =
                    crate::kernels::scalar::dot(&w[r * cols..][..cols], &x[t * cols..][..cols]);
            }
        }
    }

    /// `out[t] = W · x[t]` for every input row; `out` is `[n_tok, rows]`.
    pub fn forward(&self, input: &Activations, out: &mut [f32], kernel: &Kernels) {
        assert_eq!(input.cols, self.cols(), "linear input width");
        match self {
            Linear::Ternary(w) => Self::ternary_forward(&[w], input, &mut [out], kernel),
            Linear::Dense(w) => dense::gemm(kernel, w.view(), input.x, input.n_tok, out),
        }
    }

    /// `forward` of several layers that read the same input (Q/K/V, gate/up). For one token
    /// (decode) ternary ones run as one parallel job: one hand-off between threads instead of
    /// one per layer (+3-5 % decode on 2 threads). A prompt's products are large enough to pay
    /// for their own hand-offs and ran 9 % slower fused (a larger accumulator buffer).
    pub fn forward_many(
        linears: &[&Linear],
        input: &Activations,
        outs: &mut [&mut [f32]],
        kernel: &Kernels,
    ) {
        let ternary: Option<Vec<&TernaryMatrix>> = linears
            .iter()
            .map(|l| match l {
                Linear::Ternary(t) => Some(t),
                Linear::Dense(_) => None,
            })
            .collect();
        match ternary.filter(|_| input.n_tok == 1) {
            Some(ws) => {
                for w in &ws {
                    assert_eq!(input.cols, w.packed.cols, "linear input width");
                }
                Self::ternary_forward(&ws, input, outs, kernel);
            }
            None => {
                for (l, out) in linears.iter().zip(outs.iter_mut()) {
                    l.forward(input, out, kernel);
                }
            }
        }
    }

    /// The products of ternary layers with one input, as one parallel job.
    fn ternary_forward(
        ws: &[&TernaryMatrix],
        input: &Activations,
        outs: &mut [&mut [f32]],
        kernel: &Kernels,
    ) {
        let x = input.quantized(kernel);
        let n_tok = input.n_tok;
        let total: usize = ws.iter().map(|w| w.packed.rows * n_tok).sum();
        let mut run = |acc: &mut Vec<i32>| {
            acc.resize(total, 0);
            let mut accs: Vec<&mut [i32]> = Vec::with_capacity(ws.len());
            let mut rest = &mut acc[..total];
            for w in ws {
                let (a, r) = rest.split_at_mut(w.packed.rows * n_tok);
                accs.push(a);
                rest = r;
            }
            let packed: Vec<&PackedTernary> = ws.iter().map(|w| &w.packed).collect();
            kernel.ternary_gemm_many(&packed, x, &mut accs);
            for ((w, a), out) in ws.iter().zip(&accs).zip(outs.iter_mut()) {
                Self::scale_out(w, x, a, out);
            }
        };
        // The accumulators are scratch (every value is written by the kernel): kept per thread
        // and reused, as a fresh prompt-sized buffer costs a page fault per 4 KiB. Should a
        // forward pass ever run inside another on one thread, the inner one gets its own.
        ACC.with(|cell| match cell.try_borrow_mut() {
            Ok(mut acc) => run(&mut acc),
            Err(_) => run(&mut Vec::new()),
        });
    }

    /// out[t][r] = acc[r][t] · γ / s_t.
    fn scale_out(w: &TernaryMatrix, x: &QuantizedRows, acc: &[i32], out: &mut [f32]) {
        let (rows, n_tok) = (w.packed.rows, x.n_tok);
        // acc is [rows][n_tok]: transposed in tiles of 16 tokens × 16 rows so that both
        // sides stream through cache (row by row, a prefill touched one line per value),
        // the tokens' tiles in parallel.
        pool::chunks_mut(out, 16 * rows, |tb, block| {
            let t0 = 16 * tb;
            for r0 in (0..rows).step_by(16) {
                let r1 = (r0 + 16).min(rows);
                for (dt, o_row) in block.chunks_exact_mut(rows).enumerate() {
                    let (t, scale) = (t0 + dt, w.gamma / x.scales[t0 + dt]);
                    for (r, o) in o_row[r0..r1].iter_mut().enumerate() {
                        *o = acc[(r0 + r) * n_tok + t] as f32 * scale;
                    }
                }
            }
        });
    }
}

thread_local! {
    /// Per-thread scratch for `Linear::forward`'s int32 accumulators (grows to the largest
    /// batch × rows seen: 14 MB for a 512-token prompt through a 2B4T FFN).
    static ACC: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;

    /// One BitLinear output worked by hand: with max|x| = 127 the scale s is exactly 1, so the
    /// int8 values show the rounding (half to even) and the output is acc · γ.
    #[test]
    fn bitlinear_output_is_exact() {
        let x = [127.0f32, 0.5, 2.5, -1.5, 3.49];
        // q = [127, 0, 2, -2, 3]
        let t: [i8; 10] = [1, 1, 1, 1, 1, -1, 0, 1, -1, 1];
        let w = Linear::Ternary(TernaryMatrix {
            packed: PackedTernary::from_hf(&crate::quant::pack_ternary(&t, 2, 5), 2, 5),
            gamma: 0.75,
        });
        let mut out = [0.0f32; 2];
        w.forward(&Activations::new(&x, 1), &mut out, Isa::Portable.kernels());
        let acc0 = 127 + 2 - 2 + 3;
        let acc1 = -127 + 2 + 2 + 3;
        assert_eq!(out, [acc0 as f32 * 0.75, acc1 as f32 * 0.75]);

        // Two tokens share the weights but not the scale: s = 127 / 2 for the second.
        let x2 = [127.0f32, 0.5, 2.5, -1.5, 3.49, 2.0, 1.0, 0.0, -1.0, -2.0];
        let mut out2 = [0.0f32; 4];
        w.forward(&Activations::new(&x2, 2), &mut out2, Kernels::best());
        let s = 127.0f32 / 2.0;
        // q = round([127, 63.5, 0, -63.5, -127]) = [127, 64, 0, -64, -127]
        let acc = [127 + 64 - 64 - 127, -127 + 64 - 127];
        assert_eq!(
            out2[2..],
            [acc[0] as f32 * (0.75 / s), acc[1] as f32 * (0.75 / s)]
        );
    }

    /// The fused decode path gives each layer exactly what its own `forward` gives, on every
    /// kernel, and so does the unfused path it takes for prompts.
    #[test]
    fn forward_many_equals_forward() {
        let cols = 300;
        let layers: Vec<Linear> = [7usize, 64, 33]
            .iter()
            .enumerate()
            .map(|(i, &rows)| {
                let t: Vec<i8> = (0..rows * cols)
                    .map(|j| ((j * 7 + i + j / 11) % 3) as i8 - 1)
                    .collect();
                Linear::Ternary(TernaryMatrix {
                    packed: PackedTernary::from_hf(
                        &crate::quant::pack_ternary(&t, rows, cols),
                        rows,
                        cols,
                    ),
                    gamma: 0.5 + i as f32,
                })
            })
            .collect();
        let refs: Vec<&Linear> = layers.iter().collect();
        for n_tok in [1, 3] {
            let x: Vec<f32> = (0..n_tok * cols)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            for kernel in Isa::available().into_iter().map(Isa::kernels) {
                let input = Activations::new(&x, n_tok);
                let mut outs: Vec<Vec<f32>> =
                    layers.iter().map(|l| vec![0.0; n_tok * l.rows()]).collect();
                let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                Linear::forward_many(&refs, &input, &mut views, kernel);
                for (l, got) in layers.iter().zip(&outs) {
                    let mut want = vec![0.0; n_tok * l.rows()];
                    l.forward(&Activations::new(&x, n_tok), &mut want, kernel);
                    assert_eq!(got, &want, "{} n_tok={n_tok}", kernel.isa.name());
                }
            }
        }
    }
}
