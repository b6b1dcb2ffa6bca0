//! The forward pass: embeddings → blocks (causal GQA attention with a KV cache, GLU feed-forward)
//! → final norm → output head. A prompt is processed as one batch of tokens.

use super::head::HeadFormat;
use super::head::{StoredHead, quantise};
use super::kv_cache::{Heads, KvCache};
use super::linear::{Activations, Linear};
use super::lora::{Adapters, Lora, lora_forward};
use super::rope::Rope;
use super::tape::{LayerTape, Tape};
use super::{LayerWeights, Weights};
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::kernels::attention;
use crate::kernels::{Kernels, dense, pool, scalar};
use crate::kernels::{int4, int8};

/// Rows of a feed-forward slice when nothing is recorded for `adapt`.
const FFN_ROWS: usize = 64;
/// Rows of an attention slice when nothing is recorded for `adapt`: the Q/K/V and O matrices
/// (4 MB a layer on 2B4T) stay in cache across a prompt's slices.
const ATTN_ROWS: usize = 128;

/// The model with the tables its forward pass needs.
pub struct Transformer {
    pub weights: Weights,
    rope: Rope,
    kernel: &'static Kernels,
    /// A quantised copy of the output head, used instead of it when present.
    head_quant: Option<StoredHead>,
    /// BitLinear inputs stay f32 (no int8 quantiser): the smooth function the finite-difference
    /// tests of `adapt` differentiate. Never set for inference.
    float_activations: bool,
}

/// ContextFull unless `n` more tokens fit in the cache.
fn check_room(cache: &KvCache, n: usize) -> Result<()> {
    if cache.len() + n > cache.capacity() {
        return Err(Error::new(
            crate::ErrorKind::ContextFull,
            format!(
                "{n} tokens after {} do not fit in a context of {}",
                cache.len(),
                cache.capacity()
            ),
        ));
    }
    Ok(())
}

fn norm_rows(kernels: &Kernels, x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    // Rows are independent: a prompt's are normed in parallel, 16 to a task.
    let per_task = 16 * w.len();
    pool::chunks_mut(&mut out, per_task, |i, o| {
        for (xr, or) in x[i * per_task..]
            .chunks_exact(w.len())
            .zip(o.chunks_exact_mut(w.len()))
        {
            (kernels.rms_norm.run)(xr, w, eps, or);
        }
    });
    out
}

impl Transformer {
    /// `head` picks the head's format: a copy of it stored in the weights (a pre-packed file)
    /// is used in place, otherwise the checkpoint's head is quantised here.
    pub fn new(mut weights: Weights, kernel: &'static Kernels, head: HeadFormat) -> Self {
        let rope = Rope::new(&weights.config);
        let stored = std::mem::take(&mut weights.stored_heads);
        let head_quant = match stored.into_iter().find(|h| h.format() == head) {
            Some(h) => Some(h),
            None => quantise(weights.head().view(), head),
        };
        // Looked up row by row only, unless it is also the head in use.
        weights.embed.read_rows = head_quant.is_some() || weights.lm_head.is_some();
        Self {
            weights,
            rope,
            kernel,
            head_quant,
            float_activations: false,
        }
    }

    /// See `float_activations`; for gradient tests.
    pub fn with_float_activations(mut self) -> Self {
        self.float_activations = true;
        self
    }

    /// True in the gradient-test mode (BitLinear inputs not quantised).
    pub fn float_activations(&self) -> bool {
        self.float_activations
    }

    /// Which copy of the head computes the logits.
    pub fn head_format(&self) -> HeadFormat {
        self.head_quant
            .as_ref()
            .map_or(HeadFormat::Native, StoredHead::format)
    }

    /// Bytes of the quantised head copy (0 without one).
    pub fn quant_head_bytes(&self) -> usize {
        match &self.head_quant {
            None => 0,
            Some(StoredHead::Int8(m)) => m.bytes(),
            Some(StoredHead::Int4(m)) => m.bytes(),
        }
    }

    /// The rotary embedding tables.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The kernels' table this model computes with.
    pub fn kernel(&self) -> &'static Kernels {
        self.kernel
    }

    /// One projection: the frozen linear plus, when the layer is adapted, (α/r)·B·(A·x). With a
    /// tape, A·x is kept for the backward pass.
    fn project(
        &self,
        (l, lora): (&Linear, Option<&Lora>),
        input: &Activations,
        scale: f32,
        keep_u: Option<&mut Option<Vec<f32>>>,
    ) -> Vec<f32> {
        let [out] = self.project_many([(l, lora)], input, scale, [keep_u]);
        out
    }

    /// `project` of several layers that read the same input, the frozen products in one
    /// parallel job.
    fn project_many<const N: usize>(
        &self,
        layers: [(&Linear, Option<&Lora>); N],
        input: &Activations,
        scale: f32,
        keep_u: [Option<&mut Option<Vec<f32>>>; N],
    ) -> [Vec<f32>; N] {
        let mut outs = layers.map(|(l, _)| vec![0.0f32; input.n_tok * l.rows()]);
        if self.float_activations {
            for ((l, _), out) in layers.iter().zip(outs.iter_mut()) {
                l.forward_float(input.x, input.n_tok, out);
            }
        } else {
            let linears = layers.map(|(l, _)| l);
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
            Linear::forward_many(&linears, input, &mut views, self.kernel);
        }
        for (((_, lora), out), keep) in layers.iter().zip(outs.iter_mut()).zip(keep_u) {
            if let Some(lora) = lora {
                let u = lora_forward(
                    &lora.a,
                    &lora.b,
                    lora.a.len() / lora.cols,
                    scale,
                    input.x,
                    out,
                );
                if let Some(keep) = keep {
                    *keep = Some(u);
                }
            }
        }
        outs
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their keys and values to the cache
    /// and returns the final-normed hidden states `[tokens.len(), hidden]`.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_with(cache, tokens, None, None)
    }

    /// `forward` with a session's adapters, recording what `adapt` needs into `tape` when given.
    pub fn forward_with(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        adapters: Option<&Adapters>,
        mut tape: Option<&mut Tape>,
    ) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Err(Error::invalid_argument("forward: no tokens"));
        }
        check_room(cache, n)?;
        let x = self.embed(tokens)?;
        if let Some(tape) = tape.as_deref_mut() {
            tape.start = cache.len();
            tape.n = n;
            tape.layers.clear();
        }
        self.layers_from(cache, x, 0, adapters, tape)
    }

    /// Layers `first..` and the final norm on hidden states `x` that layers `..first` produced
    /// elsewhere (on the GPU, with a model offloaded in part); appends to the cache's layers
    /// `first..` and advances it.
    pub(crate) fn forward_from(
        &self,
        cache: &mut KvCache,
        x: Vec<f32>,
        first: usize,
    ) -> Result<Vec<f32>> {
        check_room(cache, x.len() / self.weights.config.hidden_size)?;
        self.layers_from(cache, x, first, None, None)
    }

    /// The blocks `first..` and the final norm, as the paper writes them:
    /// x += Attention(RMSNorm(x)); x += FFN(RMSNorm(x)). With a tape, the layers it covers keep
    /// what the backward pass needs (`LayerTape`, filled at the named points below); the math
    /// is the same either way.
    fn layers_from(
        &self,
        cache: &mut KvCache,
        mut x: Vec<f32>,
        first: usize,
        adapters: Option<&Adapters>,
        mut tape: Option<&mut Tape>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.weights.config;
        let (hidden, n) = (cfg.hidden_size, x.len() / cfg.hidden_size);
        let scale = adapters.map_or(0.0, Adapters::scale);
        for (li, layer) in self.weights.layers.iter().enumerate().skip(first) {
            let lora = |p: usize| adapters.and_then(|a| a.get(li, p));
            let mut rec = tape
                .as_deref()
                .is_some_and(|t| li >= t.from_layer)
                .then(LayerTape::default);
            // Slices of rows in order, each appending its keys and values before its queries
            // attend: what a smaller batch computes, so the same bits, while a 512-token
            // prefill holds buffers of ATTN_ROWS rows instead of 21 MB. A recorded layer keeps
            // whole-layer tensors: one slice.
            let past = cache.len();
            let rows = if rec.is_some() { n } else { ATTN_ROWS };
            for (i, xs) in x.chunks_mut(rows * hidden).enumerate() {
                let at = (past + i * rows, xs.len() / hidden);
                let lora_attn = [lora(0), lora(1), lora(2), lora(3)];
                let o = self.attention_block(
                    layer,
                    li,
                    cache,
                    xs,
                    at,
                    (lora_attn, scale),
                    rec.as_mut(),
                );
                xs.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            }
            if let Some(r) = rec.as_mut() {
                r.x_mid = x.clone();
            }
            // Rows are independent from here to the residual add, so slices of them give the
            // same bits with buffers of FFN_ROWS rows, not n (a 512-token prefill's gate, up
            // and GLU rows would take 57 MB on 2B4T).
            let rows = if rec.is_some() { n } else { FFN_ROWS };
            for xs in x.chunks_mut(rows * hidden) {
                let lora_ffn = [lora(4), lora(5), lora(6)];
                let f = self.feed_forward(layer, xs, (lora_ffn, scale), rec.as_mut());
                xs.iter_mut().zip(&f).for_each(|(x, d)| *x += d);
            }
            if let (Some(r), Some(t)) = (rec, tape.as_deref_mut()) {
                t.layers.push(r);
            }
        }
        cache.advance(n);
        let w = &self.weights.final_norm;
        if let Some(tape) = tape {
            let out = norm_rows(self.kernel, &x, w, cfg.rms_norm_eps);
            tape.x_final = x;
            return Ok(out);
        }
        // In place: a second n × hidden buffer would be the prompt's largest at this point.
        let mut row = vec![0.0f32; w.len()];
        for xr in x.chunks_exact_mut(w.len()) {
            (self.kernel.rms_norm.run)(xr, w, cfg.rms_norm_eps, &mut row);
            xr.copy_from_slice(&row);
        }
        Ok(x)
    }

    /// The attention block of layer `li` on the rows of `x` at positions `at.0..` (`at.1`
    /// rows): their keys and values are appended to the cache and the output projection
    /// returned (residual not added). `rec` keeps what `adapt` needs, LoRA inputs included.
    #[allow(clippy::too_many_arguments)]
    fn attention_block(
        &self,
        layer: &LayerWeights,
        li: usize,
        cache: &mut KvCache,
        x: &[f32],
        (past, n): (usize, usize),
        (lora, scale): ([Option<&Lora>; 4], f32),
        mut rec: Option<&mut LayerTape>,
    ) -> Vec<f32> {
        let cfg = &self.weights.config;
        let h = norm_rows(self.kernel, x, &layer.input_norm, cfg.rms_norm_eps);
        let [mut q, mut k, v] = {
            let u = rec.as_deref_mut().map(|r| &mut r.lora_u);
            let [u_q, u_k, u_v] = match u {
                Some([q, k, v, ..]) => [Some(q), Some(k), Some(v)],
                None => [None, None, None],
            };
            self.project_many(
                [
                    (&layer.q, lora[0]),
                    (&layer.k, lora[1]),
                    (&layer.v, lora[2]),
                ],
                &Activations::new(&h, n),
                scale,
                [u_q, u_k, u_v],
            )
        };
        // Without a record each buffer is dropped once used.
        let keep = rec.is_some();
        let h = keep.then_some(h);
        self.apply_rope(&mut q, &mut k, past);
        cache.push(li, &k, &v);
        drop((k, v));
        let a = match cache.layer(li) {
            (Heads::F32(k), Heads::F32(v)) => self.attention(&q, k, v, past, n),
            (Heads::F16(k), Heads::F16(v)) => self.attention(&q, k, v, past, n),
            _ => unreachable!("keys and values have one type"),
        };
        let q = keep.then_some(q);
        let a_n = match &layer.attn_sub_norm {
            Some(w) => norm_rows(self.kernel, &a, w, cfg.rms_norm_eps),
            None => a.clone(),
        };
        let a = keep.then_some(a);
        let u_o = rec.as_deref_mut().map(|r| &mut r.lora_u[3]);
        let o = self.project((&layer.o, lora[3]), &Activations::new(&a_n, n), scale, u_o);
        if let (Some(r), Some(h), Some(q), Some(a)) = (rec, h, q, a) {
            (r.x, r.h, r.q, r.attn, r.attn_normed) = (x.to_vec(), h, q, a, a_n);
        }
        o
    }

    /// The feed-forward block of `layer` on the rows of `x` (residual not added); `rec` keeps
    /// what `adapt` needs.
    fn feed_forward(
        &self,
        layer: &LayerWeights,
        x: &[f32],
        (lora, scale): ([Option<&Lora>; 3], f32),
        mut rec: Option<&mut LayerTape>,
    ) -> Vec<f32> {
        let cfg = &self.weights.config;
        let n = x.len() / cfg.hidden_size;
        let h2 = norm_rows(self.kernel, x, &layer.post_attention_norm, cfg.rms_norm_eps);
        let [gate, up] = {
            let [u_gate, u_up] = match rec.as_deref_mut().map(|r| &mut r.lora_u) {
                Some([.., g, u, _]) => [Some(g), Some(u)],
                None => [None, None],
            };
            self.project_many(
                [(&layer.gate, lora[0]), (&layer.up, lora[1])],
                &Activations::new(&h2, n),
                scale,
                [u_gate, u_up],
            )
        };
        let mut m = vec![0.0f32; gate.len()];
        const GLU_TASK: usize = 1 << 14;
        pool::chunks_mut(&mut m, GLU_TASK, |i, o| {
            let (g, u) = (&gate[i * GLU_TASK..], &up[i * GLU_TASK..]);
            let pairs = o.iter_mut().zip(g).zip(u);
            // One loop per activation: with the match inside, the compiler computed both
            // arms (exp included) for every element and selected one.
            match cfg.activation {
                Activation::Relu2 => pairs.for_each(|((o, &g), &u)| {
                    let r = g.max(0.0);
                    *o = r * r * u;
                }),
                Activation::Silu => pairs.for_each(|((o, &g), &u)| *o = g / (1.0 + (-g).exp()) * u),
            }
        });
        let m_n = match &layer.ffn_sub_norm {
            Some(w) => norm_rows(self.kernel, &m, w, cfg.rms_norm_eps),
            None => m.clone(),
        };
        let u_down = rec.as_deref_mut().map(|r| &mut r.lora_u[6]);
        let out = self.project(
            (&layer.down, lora[2]),
            &Activations::new(&m_n, n),
            scale,
            u_down,
        );
        if let Some(r) = rec {
            (r.h2, r.gate, r.up, r.glu, r.glu_normed) = (h2, gate, up, m, m_n);
        }
        out
    }

    /// Input embeddings `[tokens.len(), hidden]`; a token outside the vocabulary is an error.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let cfg = &self.weights.config;
        let hidden = cfg.hidden_size;
        let mut x = vec![0.0f32; tokens.len() * hidden];
        for (t, row) in tokens.iter().zip(x.chunks_exact_mut(hidden)) {
            if *t as usize >= cfg.vocab_size {
                return Err(Error::invalid_argument(format!(
                    "token id {t} is outside the vocabulary ({})",
                    cfg.vocab_size
                )));
            }
            self.weights.embed.row_into(*t as usize, row);
        }
        Ok(x)
    }

    /// Logits `[n_tok, vocab]` for final-normed hidden states.
    pub fn logits(&self, hidden_states: &[f32]) -> Vec<f32> {
        let head = self.weights.head();
        let n_tok = hidden_states.len() / head.cols;
        let mut out = vec![0.0; n_tok * head.rows];
        match &self.head_quant {
            Some(StoredHead::Int8(q)) => int8::gemm(self.kernel, q, hidden_states, n_tok, &mut out),
            Some(StoredHead::Int4(q)) => int4::gemm(self.kernel, q, hidden_states, n_tok, &mut out),
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

    /// Causal GQA attention for `n` new queries whose keys are the last `n` of `past + n`;
    /// `k[h]` and `v[h]` hold KV head h's rows, `[position][head_dim]`.
    fn attention<T: attention::Element>(
        &self,
        q: &[f32],
        k: &[Vec<T>],
        v: &[Vec<T>],
        past: usize,
        n: usize,
    ) -> Vec<f32> {
        if n == 1 {
            return self.attention_one(q, k, v, past + 1);
        }
        let cfg = &self.weights.config;
        let (d, heads) = (cfg.head_dim, cfg.num_heads);
        let group = heads / cfg.num_kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0.0f32; n * cfg.q_dim()];
        // One task per token and up to four heads of one group (2B4T: the whole group): each
        // key and value row is loaded and converted from f16 once for them (the attention
        // kernels take four heads per step). The tasks are independent, so the split does not
        // change the result.
        let pair = [4, 2, 1]
            .into_iter()
            .find(|&p| group.is_multiple_of(p))
            .unwrap_or(1);
        pool::chunks_mut(&mut out, pair * d, |i, oh| {
            let mut scores = Vec::new();
            let (t, h) = (i / (heads / pair), (i % (heads / pair)) * pair);
            let (visible, kv) = (past + t + 1, h / group);
            let qh = &q[(t * heads + h) * d..][..pair * d];
            scores.resize(pair * visible, 0.0);
            attention::scores(self.kernel, qh, d, &k[kv], scale, &mut scores);
            scores
                .chunks_exact_mut(visible)
                .for_each(|row| attention::softmax(self.kernel, row));
            attention::weighted_sum(self.kernel, &scores, &v[kv], d, oh);
        });
        out
    }

    /// `attention` of one new token (decode) over `visible` positions, in parallel steps that
    /// give every thread the same share and let one task read each key and value row: with a
    /// task per pair of query heads, as for a prompt, two threads fetched the same rows from
    /// memory (attention 3.6 → 3.0 ms per 2T decode step with whole KV heads). First the
    /// scores per KV head and span of positions (2B4T's five KV heads on two threads: one
    /// task per head left one thread idle a third of the step), then the softmax per query
    /// head, then the weighted sums per KV head and slice of columns. Each value is computed
    /// as in `attention`.
    fn attention_one<T: attention::Element>(
        &self,
        q: &[f32],
        k: &[Vec<T>],
        v: &[Vec<T>],
        visible: usize,
    ) -> Vec<f32> {
        let cfg = &self.weights.config;
        let (d, heads, kv_heads) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let group = heads / kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let threads = pool::current_num_threads();
        let spans = if kv_heads.is_multiple_of(threads) {
            1
        } else {
            threads
        };
        let span = visible.div_ceil(spans);
        let tasks: Vec<(usize, usize)> = (0..kv_heads)
            .flat_map(|kv| (0..spans).map(move |s| (kv, s * span)))
            .filter(|&(_, a)| a < visible)
            .collect();
        let pieces = pool::map(tasks.clone(), |(kv, a)| {
            let b = (a + span).min(visible);
            let mut p = vec![0.0f32; group * (b - a)];
            let qg = &q[kv * group * d..][..group * d];
            attention::scores(self.kernel, qg, d, &k[kv][a * d..b * d], scale, &mut p);
            p
        });
        let mut probs = vec![0.0f32; heads * visible];
        for ((kv, a), p) in tasks.into_iter().zip(pieces) {
            let n = p.len() / group;
            for (g, row) in p.chunks_exact(n).enumerate() {
                probs[(kv * group + g) * visible + a..][..n].copy_from_slice(row);
            }
        }
        pool::chunks_mut(&mut probs, visible, |_, row| {
            attention::softmax(self.kernel, row)
        });
        let mut slices = 1;
        while !(kv_heads * slices).is_multiple_of(threads) && (d / slices).is_multiple_of(64) {
            slices *= 2;
        }
        let w = d / slices;
        // Task i: KV head i / slices, columns from (i % slices)·w, w of each of its heads.
        let mut parts = vec![0.0f32; heads * d];
        pool::chunks_mut(&mut parts, group * w, |i, o| {
            let (kv, c0) = (i / slices, (i % slices) * w);
            let p = &probs[kv * group * visible..][..group * visible];
            attention::weighted_sum_columns(self.kernel, p, &v[kv][c0..], d, w, o);
        });
        if slices == 1 {
            return parts;
        }
        let mut out = vec![0.0f32; heads * d];
        for (i, part) in parts.chunks_exact(group * w).enumerate() {
            let (kv, c0) = (i / slices, (i % slices) * w);
            for (g, cols) in part.chunks_exact(w).enumerate() {
                out[(kv * group + g) * d + c0..][..w].copy_from_slice(cols);
            }
        }
        out
    }
}
