//! The forward pass on the GPU: weights resident on the device in the CPU kernels' layout (the
//! same bytes, uploaded once), a device KV cache per sequence, fused launches (norm + quantise,
//! q/k/v in one launch, gate + up + GLU, residual adds inside the projections). Mirrors
//! `model::forward::Transformer::forward_with` for the base model (no adapters).
//!
//! A model may be offloaded in part: the first `n_layers` layers run here and hand their hidden
//! states to the CPU, which runs the rest and the head ([`GpuCore::forward_hidden`]).

use cudarc::driver::{CudaEvent, CudaSlice, LaunchConfig, PushKernelArg};

use super::{Gpu, cuda_err, dim, status};
use crate::config::{Activation, Config};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::packed::Packing;
use crate::storage::DType;
use crate::text::tokenizer::TokenId;
use crate::transformer::forward::Transformer;
use crate::transformer::linear::{FloatMatrix, Linear};

/// One BitLinear on the device: `rows` rows of `row_bytes` bytes in the kernels' layout.
struct GpuLinear {
    data: CudaSlice<u8>,
    rows: usize,
    row_bytes: usize,
    gamma: f32,
}

struct GpuLayer {
    input_norm: CudaSlice<f32>,
    post_attention_norm: CudaSlice<f32>,
    attn_sub_norm: Option<CudaSlice<f32>>,
    ffn_sub_norm: Option<CudaSlice<f32>>,
    /// q, k, v, o, gate, up, down.
    lin: [GpuLinear; 7],
}

/// The output head and final norm, on the device only when every layer is.
struct GpuHead {
    final_norm: CudaSlice<f32>,
    /// As stored (bf16 or f32, as u16 or u32 words).
    data: CudaSlice<u8>,
    bf16: bool,
}

/// Weights of the first `layers.len()` layers (and the head when that is all of them) on the
/// GPU. Holds no reference to the `Model` (a model owns its GpuCore).
pub(crate) struct GpuCore {
    gpu: &'static Gpu,
    cfg: Config,
    layers: Vec<GpuLayer>,
    head: Option<GpuHead>,
    /// An Option only so that `drop` can free it while it holds the stream.
    inv_freq: Option<CudaSlice<f32>>,
}

impl Drop for GpuCore {
    fn drop(&mut self) {
        let _stream = self.gpu.lock.lock();
        self.layers.clear();
        self.head = None;
        self.inv_freq = None;
    }
}

/// Keys and values of one sequence on the GPU (the offloaded layers), and the activation
/// buffers its forward passes reuse (allocated for the largest batch seen, so decoding
/// allocates nothing per token).
pub struct GpuCache {
    gpu: &'static Gpu,
    k: Vec<CudaSlice<f32>>,
    v: Vec<CudaSlice<f32>>,
    len: usize,
    capacity: usize,
    work: Option<Work>,
    /// The position of the first token of the next pass (read by the kernels). Options here and
    /// below only so that `drop` can free them while it holds the stream.
    pos: Option<CudaSlice<i32>>,
    /// (cos, sin) of every position's rotary angles, `[capacity][head_dim / 2]`.
    rope: Option<CudaSlice<f32>>,
    /// The single-token step, captured on first use (it points into `work`).
    graph: Option<StepGraph>,
}

impl Drop for GpuCache {
    fn drop(&mut self) {
        // Freeing enqueues on the shared stream: never into another thread's capture.
        let _stream = self.gpu.lock.lock();
        self.graph = None;
        self.work = None;
        self.k.clear();
        self.v.clear();
        self.pos = None;
        self.rope = None;
    }
}

/// A captured decode step.
struct StepGraph(cudarc::driver::CudaGraph);

// SAFETY: graph handles belong to the CUDA context, not to a thread: cudarc makes the context
// current on the calling thread at every launch, and destroying a graph needs no current
// context. A cache (and so its graph) is used by one thread at a time (`&mut GpuCache`).
unsafe impl Send for StepGraph {}

/// Activations of up to `n` tokens.
struct Work {
    n: usize,
    x: CudaSlice<f32>,
    h: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    att: CudaSlice<f32>,
    m: CudaSlice<f32>,
    qi8: CudaSlice<i8>,
    qs: CudaSlice<f32>,
    /// Attention scores, `[n × heads, capacity]`.
    scratch: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    /// Sampling candidates: per-chunk keys, then the merged ones.
    top_chunks: CudaSlice<u64>,
    top: CudaSlice<u64>,
}

impl GpuCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets every position (the buffers stay).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Layer `li`'s keys and values, position-major `[len][kv_dim]` (the session-state layout).
    pub(crate) fn layer_rows(&self, li: usize, kv_dim: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let _stream = self.gpu.lock.lock();
        let n = self.len * kv_dim;
        let s = self.k[li].stream();
        let k = s
            .clone_dtoh(&self.k[li].slice(0..n))
            .map_err(|e| cuda_err("download", e))?;
        let v = s
            .clone_dtoh(&self.v[li].slice(0..n))
            .map_err(|e| cuda_err("download", e))?;
        Ok((k, v))
    }
    /// Replaces the content with `len` positions: `k[li]`, `v[li]` as `layer_rows` gives them,
    /// for the offloaded layers (extra layers in the slices are ignored).
    pub(crate) fn restore(&mut self, k: &[Vec<f32>], v: &[Vec<f32>], len: usize) -> Result<()> {
        if len > self.capacity {
            return Err(Error::internal(format!(
                "{len} positions restored into a GPU cache of {}",
                self.capacity
            )));
        }
        let _stream = self.gpu.lock.lock();
        for li in 0..self.k.len() {
            let s = self.k[li].stream().clone();
            s.memcpy_htod(&k[li][..], &mut self.k[li].slice_mut(0..k[li].len()))
                .map_err(|e| cuda_err("upload", e))?;
            s.memcpy_htod(&v[li][..], &mut self.v[li].slice_mut(0..v[li].len()))
                .map_err(|e| cuda_err("upload", e))?;
        }
        self.len = len;
        Ok(())
    }
}

/// How attn_softmax_v reads the values: in tiles copied asynchronously to shared memory (1), or
/// straight from the cache (0). BIT_TTT_CUDA_ATTN=tiled|plain overrides the default.
fn att_tiled() -> i32 {
    static V: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *V.get_or_init(|| match std::env::var("BIT_TTT_CUDA_ATTN").as_deref() {
        Ok("plain") => 0,
        Ok("tiled") => 1,
        _ => 1,
    })
}

fn grid(x: usize, y: usize, threads: u32) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (dim(x, "grid")? as u32, dim(y, "grid")? as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Keys per attention block and pass (kernels/bitnet.cu ATT_KEYS).
const ATT_KEYS: usize = 32;
/// Tokens per warp of the projections and of the head (LIN_TOK, HEAD_TOK).
const LIN_TOK: usize = 4;
const HEAD_TOK: usize = 4;
/// Logits sorted per block by the candidate kernels (TOPK_CHUNK).
const TOPK_CHUNK: usize = 4096;
/// The most sampling candidates a decode step returns.
pub const MAX_CANDIDATES: usize = 128;

/// Timings of one profiled pass: (kernel, microseconds), in launch order.
pub type Profile = Vec<(&'static str, f64)>;

/// Events recorded after each launch of a profiled pass.
type Marks = Vec<(&'static str, CudaEvent)>;

impl GpuCore {
    /// Uploads the first `n_layers` layers of `tf` (and the head when that is every layer).
    /// Refuses models the GPU path does not cover yet (dense projections) with a named error,
    /// and says why when CUDA is off.
    pub(crate) fn new(tf: &Transformer, n_layers: usize) -> Result<Self> {
        let gpu = status()
            .map_err(|why| Error::new(ErrorKind::Unsupported, format!("CUDA is off: {why}")))?;
        let _stream = gpu.lock.lock();
        let w = &tf.weights;
        let n_layers = n_layers.min(w.layers.len());
        let up_f32 = |v: &[f32]| gpu.stream.clone_htod(v).map_err(|e| cuda_err("upload", e));
        let mut layers = Vec::with_capacity(n_layers);
        for (li, l) in w.layers.iter().enumerate().take(n_layers) {
            let lin = |x: &Linear, name: &str| -> Result<GpuLinear> {
                match x {
                    Linear::Ternary(t) => {
                        // The CUDA kernels read the 2-bit layout.
                        let packed = t.packed.repacked(Packing::Bits2);
                        Ok(GpuLinear {
                            data: gpu
                                .stream
                                .clone_htod(&packed.data[..])
                                .map_err(|e| cuda_err("upload", e))?,
                            rows: packed.rows,
                            row_bytes: packed.row_bytes(),
                            gamma: t.gamma,
                        })
                    }
                    Linear::Dense(_) => Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("layer {li} {name}: dense projections do not run on the GPU yet"),
                    )),
                }
            };
            layers.push(GpuLayer {
                input_norm: up_f32(&l.input_norm)?,
                post_attention_norm: up_f32(&l.post_attention_norm)?,
                attn_sub_norm: l.attn_sub_norm.as_deref().map(up_f32).transpose()?,
                ffn_sub_norm: l.ffn_sub_norm.as_deref().map(up_f32).transpose()?,
                lin: [
                    lin(&l.q, "q_proj")?,
                    lin(&l.k, "k_proj")?,
                    lin(&l.v, "v_proj")?,
                    lin(&l.o, "o_proj")?,
                    lin(&l.gate, "gate_proj")?,
                    lin(&l.up, "up_proj")?,
                    lin(&l.down, "down_proj")?,
                ],
            });
        }
        let head = if n_layers == w.layers.len() {
            let (data, bf16) = upload_head(gpu, w.head())?;
            Some(GpuHead {
                final_norm: up_f32(&w.final_norm)?,
                data,
                bf16,
            })
        } else {
            None
        };
        Ok(Self {
            gpu,
            cfg: w.config.clone(),
            layers,
            head,
            inv_freq: Some(up_f32(tf.rope().inv_freq())?),
        })
    }

    /// Layers on the GPU.
    pub(crate) fn n_layers(&self) -> usize {
        self.layers.len()
    }
    /// Every layer and the head are on the GPU.
    pub(crate) fn is_full(&self) -> bool {
        self.head.is_some()
    }

    /// Bytes of weights on the device.
    pub(crate) fn device_bytes(&self) -> usize {
        let lin: usize = self
            .layers
            .iter()
            .flat_map(|l| l.lin.iter())
            .map(|l| l.rows * l.row_bytes)
            .sum();
        lin + self.head.as_ref().map_or(0, |h| h.data.len())
    }

    pub(crate) fn new_cache(&self, capacity: usize) -> Result<GpuCache> {
        let _stream = self.gpu.lock.lock();
        let n = capacity * self.cfg.kv_dim();
        let alloc = || {
            (0..self.layers.len())
                .map(|_| {
                    self.gpu
                        .stream
                        .alloc_zeros::<f32>(n.max(1))
                        .map_err(|e| cuda_err("alloc", e))
                })
                .collect::<Result<Vec<_>>>()
        };
        let half = self.cfg.head_dim / 2;
        let mut rope = self
            .gpu
            .stream
            .alloc_zeros::<f32>((capacity * half * 2).max(1))
            .map_err(|e| cuda_err("alloc", e))?;
        if capacity > 0 && half > 0 {
            let half_i = dim(half, "head_dim")?;
            let mut b = self.gpu.stream.launch_builder(&self.gpu.k.rope_table);
            b.arg(self.inv_freq.as_ref().expect("freed only by drop"))
                .arg(&half_i)
                .arg(&mut rope);
            // SAFETY: (const float*, int, float2*): inv_freq holds half floats, rope capacity ×
            // half float pairs (one block per position).
            unsafe { b.launch(grid(capacity, 1, 64)?) }.map_err(|e| cuda_err("rope_table", e))?;
        }
        Ok(GpuCache {
            gpu: self.gpu,
            k: alloc()?,
            v: alloc()?,
            len: 0,
            capacity,
            work: None,
            pos: Some(
                self.gpu
                    .stream
                    .alloc_zeros::<i32>(1)
                    .map_err(|e| cuda_err("alloc", e))?,
            ),
            rope: Some(rope),
            graph: None,
        })
    }

    fn work(&self, n: usize, capacity: usize) -> Result<Work> {
        let cfg = &self.cfg;
        let s = &self.gpu.stream;
        let f = |len: usize| {
            s.alloc_zeros::<f32>(len.max(1))
                .map_err(|e| cuda_err("alloc", e))
        };
        let (hidden, q_dim, kv_dim, ffn) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let widest = [hidden, q_dim, ffn].into_iter().max().unwrap_or(hidden);
        let logits = if self.head.is_some() {
            n * cfg.vocab_size
        } else {
            1
        };
        let u64s = |len: usize| s.alloc_zeros::<u64>(len).map_err(|e| cuda_err("alloc", e));
        Ok(Work {
            n,
            x: f(n * hidden)?,
            h: f(n * hidden)?,
            q: f(n * q_dim)?,
            k: f(n * kv_dim)?,
            v: f(n * kv_dim)?,
            att: f(n * q_dim)?,
            m: f(n * ffn)?,
            qi8: s
                .alloc_zeros::<i8>(n * widest.div_ceil(256) * 256)
                .map_err(|e| cuda_err("alloc", e))?,
            qs: f(n)?,
            scratch: f(n * cfg.num_heads * capacity)?,
            logits: f(logits)?,
            top_chunks: u64s(TOPK_CHUNK)?,
            top: u64s(MAX_CANDIDATES)?,
        })
    }

    /// Uploads the embeddings `x` of n tokens at positions `cache.len()..` and runs the pass:
    /// a single-token step (decoding) is captured into a CUDA graph on first use and replayed
    /// after (the position is read from device memory, so one graph serves every step).
    fn run(&self, cache: &mut GpuCache, x: &[f32], all_logits: bool) -> Result<usize> {
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

    fn event(&self) -> Result<CudaEvent> {
        self.gpu
            .stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| cuda_err("event", e))
    }

    fn need_head(&self) -> Result<()> {
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
    fn pass(
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

    fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        eps: f32,
        out: &mut CudaSlice<f32>,
        n: usize,
        cols: usize,
    ) -> Result<()> {
        let cols_i = dim(cols, "cols")?;
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.rms_norm);
        b.arg(x).arg(w).arg(&eps).arg(out).arg(&cols_i);
        // SAFETY: (const float*, const float*, float, float*, int); x and out hold n × cols
        // floats (one block per row), w cols.
        unsafe { b.launch(grid(n, 1, 256)?) }.map_err(|e| cuda_err("rms_norm", e))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_quant(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        cols: usize,
        stride: usize,
        n: usize,
        q: &mut CudaSlice<i8>,
        scales: &mut CudaSlice<f32>,
    ) -> Result<()> {
        debug_assert!(q.len() >= n * stride && stride >= cols);
        let (cols_i, stride_i, eps) = (
            dim(cols, "cols")?,
            dim(stride, "stride")?,
            self.cfg.rms_norm_eps,
        );
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.norm_quant);
        b.arg(x)
            .arg(w)
            .arg(&eps)
            .arg(&cols_i)
            .arg(q)
            .arg(&stride_i)
            .arg(scales);
        // SAFETY: (const float*, const float*, float, int, int8*, int, float*); x holds n ×
        // cols, w cols, q n × stride (sized for the widest layer input), scales n. 1024
        // threads: rows of up to 8192 columns are held in registers (NQ_THREADS, NQ_PER).
        unsafe { b.launch(grid(n, 1, 1024)?) }.map_err(|e| cuda_err("norm_quant", e))?;
        Ok(())
    }

    fn quantize(
        &self,
        x: &CudaSlice<f32>,
        cols: usize,
        stride: usize,
        n: usize,
        q: &mut CudaSlice<i8>,
        scales: &mut CudaSlice<f32>,
    ) -> Result<()> {
        debug_assert!(q.len() >= n * stride && stride >= cols);
        let (cols_i, stride_i) = (dim(cols, "cols")?, dim(stride, "stride")?);
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.quantize_padded);
        b.arg(x).arg(&cols_i).arg(q).arg(&stride_i).arg(scales);
        // SAFETY: (const float*, int, int8*, int, float*); x holds n × cols, q n × stride (the
        // buffer is sized for the widest layer input), scales n.
        unsafe { b.launch(grid(n, 1, 256)?) }.map_err(|e| cuda_err("quantize_padded", e))?;
        Ok(())
    }

    /// Up to three projections of one input in one launch; `accumulate` adds into `out`.
    fn linear(
        &self,
        mats: [Option<(&GpuLinear, &mut CudaSlice<f32>)>; 3],
        row_bytes: usize,
        (q, scales): (&CudaSlice<i8>, &CudaSlice<f32>),
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        const WARPS: usize = 8;
        let null = 0u64;
        let zero_rows = 0i32;
        let zero_gamma = 0f32;
        let mut total = 0;
        let mut rows = [0i32; 3];
        for (r, m) in rows.iter_mut().zip(&mats) {
            if let Some((l, _)) = m {
                debug_assert_eq!(l.row_bytes, row_bytes);
                *r = dim(l.rows, "rows")?;
                total += l.rows;
            }
        }
        let (row_bytes_i, n_i, acc) = (
            dim(row_bytes, "row bytes")?,
            dim(n, "tokens")?,
            i32::from(accumulate),
        );
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.ternary_linear);
        for (m, r) in mats.into_iter().zip(&rows) {
            match m {
                Some((l, out)) => {
                    b.arg(&l.data).arg(r).arg(&l.gamma).arg(out);
                }
                None => {
                    b.arg(&null).arg(&zero_rows).arg(&zero_gamma).arg(&null);
                }
            }
        }
        b.arg(&row_bytes_i).arg(q).arg(scales).arg(&n_i).arg(&acc);
        // SAFETY: (3 × (const u8*, int, float, float*), int, const int8*, const float*, int,
        // int); each matrix holds rows × row_bytes, its out n × rows (absent ones have 0 rows
        // and are never read), q n rows of 4 × row_bytes, scales n.
        unsafe {
            b.launch(grid(
                total.div_ceil(WARPS),
                n.div_ceil(LIN_TOK),
                32 * WARPS as u32,
            )?)
        }
        .map_err(|e| cuda_err("ternary_linear", e))?;
        Ok(())
    }

    fn gate_up(
        &self,
        g: &GpuLinear,
        u: &GpuLinear,
        (q, scales): (&CudaSlice<i8>, &CudaSlice<f32>),
        n: usize,
        relu2: i32,
        m: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const WARPS: usize = 8;
        debug_assert!(g.rows == u.rows && g.row_bytes == u.row_bytes);
        let (rows, row_bytes, n_i) = (
            dim(g.rows, "rows")?,
            dim(g.row_bytes, "row bytes")?,
            dim(n, "tokens")?,
        );
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.gate_up_glu);
        b.arg(&g.data)
            .arg(&g.gamma)
            .arg(&u.data)
            .arg(&u.gamma)
            .arg(&rows)
            .arg(&row_bytes)
            .arg(q)
            .arg(scales)
            .arg(&n_i)
            .arg(&relu2)
            .arg(m);
        // SAFETY: (const u8*, float, const u8*, float, int, int, const int8*, const float*,
        // int, int, float*); both matrices hold rows × row_bytes, q n rows of 4 × row_bytes,
        // scales n, m n × rows.
        unsafe {
            b.launch(grid(
                g.rows.div_ceil(WARPS),
                n.div_ceil(LIN_TOK),
                32 * WARPS as u32,
            )?)
        }
        .map_err(|e| cuda_err("gate_up_glu", e))?;
        Ok(())
    }

    fn rope_kv(
        &self,
        q: &mut CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        (kc, vc): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
        (pos, table): (&CudaSlice<i32>, &CudaSlice<f32>),
        n: usize,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (heads, kvh, d) = (
            dim(cfg.num_heads, "heads")?,
            dim(cfg.num_kv_heads, "kv heads")?,
            dim(cfg.head_dim, "head_dim")?,
        );
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.rope_kv);
        b.arg(q)
            .arg(k)
            .arg(v)
            .arg(kc)
            .arg(vc)
            .arg(pos)
            .arg(&heads)
            .arg(&kvh)
            .arg(&d)
            .arg(table);
        // SAFETY: (float*, const float*, const float*, float*, float*, const int*, int, int,
        // int, const float2*); q holds n × heads × d, k and v n × kv_heads × d, the caches
        // capacity rows of kv_dim with *pos + n <= capacity (checked by run), the table
        // capacity × d / 2 pairs.
        unsafe { b.launch(grid(n, cfg.num_heads + cfg.num_kv_heads, 64)?) }
            .map_err(|e| cuda_err("rope_kv", e))?;
        Ok(())
    }

    /// Attention scores of the n new queries against the cache (kernels/bitnet.cu
    /// attn_scores), into `scratch` `[n × heads, ctx]`.
    fn attn_scores(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        past: &CudaSlice<i32>,
        n: usize,
        ctx: usize,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        let (heads_i, kvh_i, d_i, ctx_i) = self.attn_dims(ctx)?;
        // Blocks per score row: enough to fill the GPU on a decode step; the grid is fixed
        // when the step is captured, so blocks past the visible keys return at once.
        let chunks = ctx.div_ceil(ATT_KEYS).clamp(1, (64 / n).max(1));
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.attn_scores);
        b.arg(q)
            .arg(k)
            .arg(scratch)
            .arg(past)
            .arg(&heads_i)
            .arg(&kvh_i)
            .arg(&d_i)
            .arg(&ctx_i)
            .arg(&scale);
        // SAFETY: (const float* q, k, float* scratch, const int* past, int heads, kv_heads, d,
        // ctx, float scale); q holds n × heads × d, k the cache (ctx rows of kv_dim), scratch
        // n × heads × ctx, and *past + n <= ctx (checked by run).
        unsafe { b.launch(grid(n * cfg.num_heads, chunks, 256)?) }
            .map_err(|e| cuda_err("attn_scores", e))?;
        Ok(())
    }

    /// Softmax of the scores and the weighted sum of the values (attn_softmax_v) into `out`.
    fn attn_softmax_v(
        &self,
        scratch: &mut CudaSlice<f32>,
        v: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        past: &CudaSlice<i32>,
        n: usize,
        ctx: usize,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (heads_i, kvh_i, d_i, ctx_i) = self.attn_dims(ctx)?;
        let threads = cfg.head_dim.next_multiple_of(32).clamp(32, 1024) as u32;
        let tiled = att_tiled();
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.attn_softmax_v);
        b.arg(scratch)
            .arg(v)
            .arg(out)
            .arg(past)
            .arg(&heads_i)
            .arg(&kvh_i)
            .arg(&d_i)
            .arg(&ctx_i)
            .arg(&tiled);
        // SAFETY: (float* scratch, const float* v, float* out, const int* past, int heads,
        // kv_heads, d, ctx, int tiled); scratch holds n × heads × ctx, v the cache (ctx rows of kv_dim),
        // out n × heads × d, and *past + n <= ctx (checked by run).
        unsafe { b.launch(grid(n * cfg.num_heads, 1, threads)?) }
            .map_err(|e| cuda_err("attn_softmax_v", e))?;
        Ok(())
    }

    fn attn_dims(&self, ctx: usize) -> Result<(i32, i32, i32, i32)> {
        let cfg = &self.cfg;
        Ok((
            dim(cfg.num_heads, "heads")?,
            dim(cfg.num_kv_heads, "kv heads")?,
            dim(cfg.head_dim, "head_dim")?,
            dim(ctx, "context")?,
        ))
    }
}

/// A candidate key (kernels/bitnet.cu topk_key) back to (token, logit).
fn decode_key(key: u64) -> (TokenId, f32) {
    let id = u32::MAX - key as u32;
    let b = (key >> 32) as u32;
    let bits = if b & 0x8000_0000 != 0 {
        b & 0x7fff_ffff
    } else {
        !b
    };
    (id, f32::from_bits(bits))
}

/// The head's bytes as stored: bf16 stays bf16 (the kernel widens), f16 is widened to f32 here.
fn upload_head(gpu: &Gpu, head: &FloatMatrix) -> Result<(CudaSlice<u8>, bool)> {
    let up = |b: &[u8]| gpu.stream.clone_htod(b).map_err(|e| cuda_err("upload", e));
    match head.dtype {
        DType::BF16 => Ok((up(&head.data[..])?, true)),
        DType::F32 => Ok((up(&head.data[..])?, false)),
        _ => {
            let mut f = vec![0.0f32; head.rows * head.cols];
            for (r, row) in f.chunks_exact_mut(head.cols).enumerate() {
                head.row_into(r, row);
            }
            let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((up(&bytes)?, false))
        }
    }
}
