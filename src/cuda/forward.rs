//! The forward pass on the GPU: uploading the embeddings, running the launches (captured into a
//! CUDA graph for decode), and reading back logits, hidden states or the sampling candidates.
//! Mirrors `transformer::forward::Transformer::forward_with` for the base model (no adapters).
//!
//! A model may be offloaded in part: the first `n_layers` layers run here and hand their hidden
//! states to the CPU, which runs the rest and the head ([`GpuCore::forward_hidden`]).

use cudarc::driver::PushKernelArg;

use super::{cuda_err, dim};
use crate::config::Activation;
use crate::error::{Error, ErrorKind, Result};
use crate::text::tokenizer::TokenId;

use super::cache::*;
use super::launch::*;
use super::upload::*;

impl GpuCore {
    /// Uploads the embeddings `x` of n tokens at positions `cache.len()..` and runs the pass:
    /// a single-token step (decoding) is captured into a CUDA graph on first use and replayed
    /// after (the position is read from device memory, so one graph serves every step).
    pub(super) fn run(&self, cache: &mut GpuCache, x: &[f32], all_logits: bool) -> Result<usize> {
        let hidden = self.cfg.hidden_size;
        let n = x.len() / hidden;
        if n == 0 || x.len() != n * hidden {
            return Err(Error::invalid_argument("forward: no tokens"));
        }
        if cache.len + n > cache.capacity {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "{n} tokens after {} do not fit in a context of {}",
                    cache.len, cache.capacity
                ),
            ));
        }
        let s = &self.gpu.stream;
        if cache.work.as_ref().is_none_or(|w| w.n < n) {
            cache.graph = None; // it points into the buffers about to be replaced
            cache.work = None;
            cache.work = Some(self.work(n, cache.capacity)?);
        }
        let past = dim(cache.len, "position")?;
        {
            let work = cache.work.as_mut().expect("allocated above");
            s.memcpy_htod(x, &mut work.x.slice_mut(0..n * hidden))
                .map_err(|e| cuda_err("upload", e))?;
        }
        s.memcpy_htod(&[past], cache.pos.as_mut().expect("freed only by drop"))
            .map_err(|e| cuda_err("upload", e))?;
        if n == 1 && !all_logits {
            if cache.graph.is_none() {
                s.begin_capture(
                    cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                )
                .map_err(|e| cuda_err("begin capture", e))?;
                let pass = self.pass(cache, 1, false, None);
                // End the capture whatever happened, so the stream is usable again.
                let graph = s
                    .end_capture(
                        cudarc::driver::sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
                    )
                    .map_err(|e| cuda_err("end capture", e))?;
                pass?;
                cache.graph = graph.map(StepGraph);
            }
            match &cache.graph {
                Some(g) => g.0.launch().map_err(|e| cuda_err("graph launch", e))?,
                None => self.pass(cache, 1, false, None)?,
            }
        } else {
            self.pass(cache, n, all_logits, None)?;
        }
        cache.len += n;
        Ok(n)
    }

    /// Logits `[n, vocab]` of every token (`all_logits`) or of the last one, for embeddings
    /// `x` of n tokens. Needs every layer on the GPU.
    pub(crate) fn forward(
        &self,
        cache: &mut GpuCache,
        x: &[f32],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        self.need_head()?;
        let _stream = self.gpu.lock.lock();
        let n = self.run(cache, x, all_logits)?;
        let rows = if all_logits { n } else { 1 };
        let work = cache.work.as_ref().expect("allocated by run");
        self.gpu
            .stream
            .clone_dtoh(&work.logits.slice(0..rows * self.cfg.vocab_size))
            .map_err(|e| cuda_err("download", e))
    }

    /// Hidden states `[n, hidden]` after the offloaded layers (not normalised), for the CPU
    /// to go on from.
    pub(crate) fn forward_hidden(&self, cache: &mut GpuCache, x: &[f32]) -> Result<Vec<f32>> {
        let _stream = self.gpu.lock.lock();
        let n = self.run(cache, x, false)?;
        let work = cache.work.as_ref().expect("allocated by run");
        self.gpu
            .stream
            .clone_dtoh(&work.x.slice(0..n * self.cfg.hidden_size))
            .map_err(|e| cuda_err("download", e))
    }

    /// Runs `x` and returns the `k` best (token, logit) pairs of the last token, best first,
    /// lower id first on ties: the order `sampling` sorts candidates in. `k` at most
    /// `max_candidates()`.
    pub(crate) fn forward_top(
        &self,
        cache: &mut GpuCache,
        x: &[f32],
        k: usize,
    ) -> Result<Vec<(TokenId, f32)>> {
        self.need_head()?;
        if k == 0 || k > self.max_candidates() {
            return Err(Error::invalid_argument(format!(
                "{k} sampling candidates asked for, at most {} on this GPU path",
                self.max_candidates()
            )));
        }
        let _stream = self.gpu.lock.lock();
        self.run(cache, x, false)?;
        let vocab = self.cfg.vocab_size;
        let chunks = vocab.div_ceil(TOPK_CHUNK);
        let s = &self.gpu.stream;
        let work = cache.work.as_mut().expect("allocated by run");
        let (vocab_i, k_i) = (dim(vocab, "vocab")?, dim(k, "candidates")?);
        let mut b = s.launch_builder(&self.gpu.k.topk_chunks);
        b.arg(&work.logits)
            .arg(&vocab_i)
            .arg(&k_i)
            .arg(&mut work.top_chunks);
        // SAFETY: (const float*, int, int, u64*): logits hold vocab floats (the last row),
        // top_chunks TOPK_CHUNK keys >= chunks × k (max_candidates).
        unsafe { b.launch(grid(chunks, 1, 1024)?) }.map_err(|e| cuda_err("topk_chunks", e))?;
        let keys = if chunks == 1 {
            s.clone_dtoh(&work.top_chunks.slice(0..k))
        } else {
            let n_i = dim(chunks * k, "candidates")?;
            let mut b = s.launch_builder(&self.gpu.k.topk_merge);
            b.arg(&work.top_chunks)
                .arg(&n_i)
                .arg(&k_i)
                .arg(&mut work.top);
            // SAFETY: (const u64*, int, int, u64*): chunks × k <= TOPK_CHUNK keys in, k <=
            // MAX_CANDIDATES out.
            unsafe { b.launch(grid(1, 1, 1024)?) }.map_err(|e| cuda_err("topk_merge", e))?;
            s.clone_dtoh(&work.top.slice(0..k))
        }
        .map_err(|e| cuda_err("download", e))?;
        Ok(keys.into_iter().map(decode_key).collect())
    }

    /// The most candidates `forward_top` returns for this vocabulary.
    pub(crate) fn max_candidates(&self) -> usize {
        (TOPK_CHUNK / self.cfg.vocab_size.div_ceil(TOPK_CHUNK)).min(MAX_CANDIDATES)
    }

    /// Times each launch of one uncaptured pass of `x` (appended to the cache like a normal
    /// step): kernel names and microseconds, from CUDA events.
    pub(crate) fn profile(&self, cache: &mut GpuCache, x: &[f32]) -> Result<Profile> {
        let _stream = self.gpu.lock.lock();
        let hidden = self.cfg.hidden_size;
        let n = x.len() / hidden;
        if cache.work.as_ref().is_none_or(|w| w.n < n) {
            cache.graph = None;
            cache.work = None;
            cache.work = Some(self.work(n, cache.capacity)?);
        }
        let s = &self.gpu.stream;
        {
            let work = cache.work.as_mut().expect("allocated above");
            s.memcpy_htod(x, &mut work.x.slice_mut(0..n * hidden))
                .map_err(|e| cuda_err("upload", e))?;
        }
        s.memcpy_htod(
            &[dim(cache.len, "position")?],
            cache.pos.as_mut().expect("freed only by drop"),
        )
        .map_err(|e| cuda_err("upload", e))?;
        let mut marks = vec![("start", self.event()?)];
        self.pass(cache, n, false, Some(&mut marks))?;
        cache.len += n;
        let mut out = Vec::with_capacity(marks.len());
        for w in marks.windows(2) {
            let ms = w[0]
                .1
                .elapsed_ms(&w[1].1)
                .map_err(|e| cuda_err("event", e))?;
            out.push((w[1].0, f64::from(ms) * 1e3));
        }
        Ok(out)
    }

    pub(super) fn need_head(&self) -> Result<()> {
        if self.head.is_none() {
            return Err(Error::internal(
                "logits asked of a GPU model that holds only some layers",
            ));
        }
        Ok(())
    }

    /// The forward pass of `n` tokens whose embeddings are in the work buffer and whose first
    /// position is in `cache.pos`: kernel launches only (no host transfers, so it can be
    /// captured). Logits of the last token, or of all, go to the work buffer when the head is
    /// here; else the hidden states stay in `x`. `marks` (profiling): an event after each launch.
    pub(super) fn pass(
        &self,
        cache: &mut GpuCache,
        n: usize,
        all_logits: bool,
        mut marks: Option<&mut Marks>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (hidden, q_dim, ffn) = (cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size);
        let eps = cfg.rms_norm_eps;
        let GpuCache {
            k: kc,
            v: vc,
            capacity,
            work,
            pos,
            rope,
            ..
        } = cache;
        let (pos, rope) = (
            pos.as_ref().expect("freed only by drop"),
            rope.as_ref().expect("freed only by drop"),
        );
        let Work {
            x,
            h,
            q,
            k: kbuf,
            v: vbuf,
            att,
            m,
            qi8,
            qs,
            scratch,
            logits,
            ..
        } = work.as_mut().expect("allocated by run");
        let mut mark = |name: &'static str| -> Result<()> {
            if let Some(marks) = marks.as_deref_mut() {
                marks.push((name, self.event()?));
            }
            Ok(())
        };
        let relu2 = i32::from(cfg.activation == Activation::Relu2);
        for (li, l) in self.layers.iter().enumerate() {
            let [lq, lk, lv, lo, lg, lu, ld] = &l.lin;
            self.norm_quant(x, &l.input_norm, hidden, lq.row_bytes * 4, n, qi8, qs)?;
            mark("norm_quant")?;
            let qkv = [
                Some((lq, &mut *q)),
                Some((lk, &mut *kbuf)),
                Some((lv, &mut *vbuf)),
            ];
            self.linear(qkv, lq.row_bytes, (qi8, qs), n, false)?;
            mark("qkv")?;
            self.rope_kv(q, kbuf, vbuf, (&mut kc[li], &mut vc[li]), (pos, rope), n)?;
            mark("rope_kv")?;
            self.attn_scores(q, &kc[li], scratch, pos, n, *capacity)?;
            mark("attn_scores")?;
            self.attn_softmax_v(scratch, &vc[li], att, pos, n, *capacity)?;
            mark("attn_softmax_v")?;
            match &l.attn_sub_norm {
                Some(wn) => self.norm_quant(att, wn, q_dim, lo.row_bytes * 4, n, qi8, qs)?,
                None => self.quantize(att, q_dim, lo.row_bytes * 4, n, qi8, qs)?,
            }
            mark("norm_quant")?;
            self.linear(
                [Some((lo, &mut *x)), None, None],
                lo.row_bytes,
                (qi8, qs),
                n,
                true,
            )?;
            mark("o_proj")?;
            self.norm_quant(
                x,
                &l.post_attention_norm,
                hidden,
                lg.row_bytes * 4,
                n,
                qi8,
                qs,
            )?;
            mark("norm_quant")?;
            self.gate_up(lg, lu, (qi8, qs), n, relu2, m)?;
            mark("gate_up_glu")?;
            match &l.ffn_sub_norm {
                Some(wn) => self.norm_quant(m, wn, ffn, ld.row_bytes * 4, n, qi8, qs)?,
                None => self.quantize(m, ffn, ld.row_bytes * 4, n, qi8, qs)?,
            }
            mark("norm_quant")?;
            self.linear(
                [Some((ld, &mut *x)), None, None],
                ld.row_bytes,
                (qi8, qs),
                n,
                true,
            )?;
            mark("down_proj")?;
        }
        let Some(head) = &self.head else {
            return Ok(());
        };
        self.rms_norm(x, &head.final_norm, eps, h, n, hidden)?;
        mark("final_norm")?;
        let (first, rows) = if all_logits { (0, n) } else { (n - 1, 1) };
        let hs = h.slice(first * hidden..n * hidden);
        let vocab = cfg.vocab_size;
        let (vocab_i, cols_i, bf16, rows_i) = (
            dim(vocab, "vocab")?,
            dim(hidden, "hidden")?,
            i32::from(head.bf16),
            dim(rows, "tokens")?,
        );
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.dense_head);
        b.arg(&head.data)
            .arg(&bf16)
            .arg(&vocab_i)
            .arg(&cols_i)
            .arg(&hs)
            .arg(&rows_i)
            .arg(&mut *logits);
        // SAFETY: (const void*, int, int, int, const float*, int, float*): the head holds vocab
        // × hidden words of its dtype, hs rows × hidden floats, logits >= rows × vocab.
        unsafe { b.launch(grid(vocab.div_ceil(8), rows.div_ceil(HEAD_TOK), 256)?) }
            .map_err(|e| cuda_err("dense_head", e))?;
        mark("head")?;
        Ok(())
    }
}

/// A candidate key (kernels/bitnet.cu topk_key) back to (token, logit).
pub(super) fn decode_key(key: u64) -> (TokenId, f32) {
    let id = u32::MAX - key as u32;
    let b = (key >> 32) as u32;
    let bits = if b & 0x8000_0000 != 0 {
        b & 0x7fff_ffff
    } else {
        !b
    };
    (id, f32::from_bits(bits))
}
