//! The forward pass: embeddings → blocks (causal GQA attention with a KV cache, GLU feed-forward)
//! → final norm → output head. A prompt is processed as one batch of tokens.

use rayon::prelude::*;

use super::Weights;
use super::kv_cache::KvCache;
use super::linear::{Activations, Linear};
use super::rope::Rope;
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::kernels::int8::{self, Int8Matrix};
use crate::kernels::{Kernel, dense, scalar};

/// The model with the tables its forward pass needs.
pub struct Transformer {
    pub weights: Weights,
    rope: Rope,
    kernel: Kernel,
    /// An int8 copy of the output head, used instead of it when present.
    head_int8: Option<Int8Matrix>,
}

fn norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        scalar::rms_norm(xr, w, eps, or);
    }
    out
}

impl Transformer {
    pub fn new(weights: Weights, kernel: Kernel, int8_head: bool) -> Self {
        let rope = Rope::new(&weights.config);
        let head_int8 = int8_head.then(|| Int8Matrix::from_dense(weights.head().view()));
        Self {
            weights,
            rope,
            kernel,
            head_int8,
        }
    }

    /// True when logits come from the int8 copy of the head.
    pub fn int8_head(&self) -> bool {
        self.head_int8.is_some()
    }

    /// Bytes of the int8 head copy (0 without one).
    pub fn int8_head_bytes(&self) -> usize {
        self.head_int8.as_ref().map_or(0, Int8Matrix::bytes)
    }

    /// The ternary kernel this model computes with.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    fn linear(&self, l: &Linear, input: &Activations) -> Vec<f32> {
        let mut out = vec![0.0; input.n_tok * l.rows()];
        l.forward(input, &mut out, self.kernel);
        out
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their keys and values to the cache
    /// and returns the final-normed hidden states `[tokens.len(), hidden]`.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        let cfg = &self.weights.config;
        let hidden = cfg.hidden_size;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::invalid_argument("forward: no tokens"));
        }
        if cache.len() + n > cache.capacity() {
            return Err(Error::new(
                crate::ErrorKind::ContextFull,
                format!(
                    "{} tokens after {} do not fit in a context of {}",
                    n,
                    cache.len(),
                    cache.capacity()
                ),
            ));
        }
        let mut x = vec![0.0f32; n * hidden];
        for (t, row) in tokens.iter().zip(x.chunks_exact_mut(hidden)) {
            if *t as usize >= cfg.vocab_size {
                return Err(Error::invalid_argument(format!(
                    "token id {t} is outside the vocabulary ({})",
                    cfg.vocab_size
                )));
            }
            self.weights.embed.row_into(*t as usize, row);
        }
        for (li, layer) in self.weights.layers.iter().enumerate() {
            // Attention.
            let h = norm_rows(&x, &layer.input_norm, cfg.rms_norm_eps);
            let h_in = Activations::new(&h, n);
            let mut q = self.linear(&layer.q, &h_in);
            let mut k = self.linear(&layer.k, &h_in);
            let v = self.linear(&layer.v, &h_in);
            self.apply_rope(&mut q, &mut k, cache.len());
            cache.k[li].extend_from_slice(&k);
            cache.v[li].extend_from_slice(&v);
            let mut a = self.attention(&q, &cache.k[li], &cache.v[li], cache.len(), n);
            if let Some(w) = &layer.attn_sub_norm {
                a = norm_rows(&a, w, cfg.rms_norm_eps);
            }
            let o = self.linear(&layer.o, &Activations::new(&a, n));
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

            // Feed-forward.
            let h2 = norm_rows(&x, &layer.post_attention_norm, cfg.rms_norm_eps);
            let h2_in = Activations::new(&h2, n);
            let gate = self.linear(&layer.gate, &h2_in);
            let up = self.linear(&layer.up, &h2_in);
            let mut m: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| match cfg.activation {
                    Activation::Relu2 => {
                        let r = g.max(0.0);
                        r * r * u
                    }
                    Activation::Silu => g / (1.0 + (-g).exp()) * u,
                })
                .collect();
            if let Some(w) = &layer.ffn_sub_norm {
                m = norm_rows(&m, w, cfg.rms_norm_eps);
            }
            let d = self.linear(&layer.down, &Activations::new(&m, n));
            x.iter_mut().zip(&d).for_each(|(x, d)| *x += d);
        }
        cache.advance(n);
        Ok(norm_rows(&x, &self.weights.final_norm, cfg.rms_norm_eps))
    }

    /// Logits `[n_tok, vocab]` for final-normed hidden states.
    pub fn logits(&self, hidden_states: &[f32]) -> Vec<f32> {
        let head = self.weights.head();
        let n_tok = hidden_states.len() / head.cols;
        let mut out = vec![0.0; n_tok * head.rows];
        match &self.head_int8 {
            Some(q) => int8::gemm(self.kernel, q, hidden_states, n_tok, &mut out),
            None => dense::gemm(self.kernel, head.view(), hidden_states, n_tok, &mut out),
        }
        out
    }

    fn apply_rope(&self, q: &mut [f32], k: &mut [f32], start: usize) {
        let cfg = &self.weights.config;
        let d = cfg.head_dim;
        let mut cos = vec![0.0; self.rope.half_dim()];
        let mut sin = vec![0.0; self.rope.half_dim()];
        for (t, (qt, kt)) in q
            .chunks_exact_mut(cfg.q_dim())
            .zip(k.chunks_exact_mut(cfg.kv_dim()))
            .enumerate()
        {
            self.rope.cos_sin(start + t, &mut cos, &mut sin);
            qt.chunks_exact_mut(d)
                .for_each(|h| scalar::rope_half_split(h, &cos, &sin));
            kt.chunks_exact_mut(d)
                .for_each(|h| scalar::rope_half_split(h, &cos, &sin));
        }
    }

    /// Causal GQA attention for `n` new queries whose keys are the last `n` of `past + n`.
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], past: usize, n: usize) -> Vec<f32> {
        let cfg = &self.weights.config;
        let (d, kv_dim, heads) = (cfg.head_dim, cfg.kv_dim(), cfg.num_heads);
        let group = heads / cfg.num_kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0.0f32; n * cfg.q_dim()];
        // One task per (token, head): independent, so the split does not change the result.
        out.par_chunks_mut(d)
            .enumerate()
            .for_each_init(Vec::new, |scores, (i, oh)| {
                let (t, h) = (i / heads, i % heads);
                let (visible, kv_off) = (past + t + 1, (h / group) * d);
                let qh = &q[i * d..(i + 1) * d];
                scores.clear();
                scores.extend(
                    (0..visible).map(|j| scalar::dot(qh, &k[j * kv_dim + kv_off..][..d]) * scale),
                );
                scalar::softmax(scores);
                for (j, &p) in scores.iter().enumerate() {
                    scalar::axpy(p, &v[j * kv_dim + kv_off..][..d], oh);
                }
            });
        out
    }
}
