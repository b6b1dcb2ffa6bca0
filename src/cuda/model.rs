//! The forward pass on the GPU: weights resident on the device in the CPU kernels' layout (the
//! same bytes, uploaded once), a device KV cache per sequence, one launch per op. Mirrors
//! `model::forward::Transformer::forward_with` for the base model (no adapters).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{Gpu, cuda_err, dim, status};
use crate::Model;
use crate::config::Activation;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::packed::Packing;
use crate::loader::safetensors::DType;
use crate::model::linear::{FloatMatrix, Linear};

/// One BitLinear on the device: `rows` rows of `row_bytes` bytes in the kernels' layout.
struct GpuLinear {
    data: CudaSlice<u8>,
    rows: usize,
    cols: usize,
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

/// A model's weights on the GPU.
pub struct GpuModel {
    gpu: &'static Gpu,
    model: Model,
    layers: Vec<GpuLayer>,
    final_norm: CudaSlice<f32>,
    /// The output head as stored (bf16 or f32, as u16 or u32 words).
    head: CudaSlice<u8>,
    head_bf16: bool,
    inv_freq: CudaSlice<f32>,
}

/// Keys and values of one sequence on the GPU, and the activation buffers its forward passes
/// reuse (allocated for the largest batch seen, so decoding allocates nothing per token).
pub struct GpuCache {
    k: Vec<CudaSlice<f32>>,
    v: Vec<CudaSlice<f32>>,
    len: usize,
    capacity: usize,
    work: Option<Work>,
    /// The position of the first token of the next pass (read by the kernels).
    pos: CudaSlice<i32>,
    /// The single-token step, captured on first use (it points into `work`).
    graph: Option<cudarc::driver::CudaGraph>,
}

/// Activations of up to `n` tokens.
struct Work {
    n: usize,
    x: CudaSlice<f32>,
    h: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    att: CudaSlice<f32>,
    att_n: CudaSlice<f32>,
    o: CudaSlice<f32>,
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
    m: CudaSlice<f32>,
    m_n: CudaSlice<f32>,
    qi8: CudaSlice<i8>,
    qs: CudaSlice<f32>,
    /// Attention scores, `[n × heads, capacity]`.
    scratch: CudaSlice<f32>,
    logits: CudaSlice<f32>,
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
}

fn cfg1(n: usize, threads: u32) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            dim(n.div_ceil(threads as usize).max(1), "grid")? as u32,
            1,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn grid(x: usize, y: usize, threads: u32) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (dim(x, "grid")? as u32, dim(y, "grid")? as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl GpuModel {
    /// Uploads `model`'s weights. Refuses models the GPU path does not cover yet (dense
    /// projections) with a named error, and says why when CUDA is off.
    pub fn new(model: &Model) -> Result<Self> {
        let gpu = status()
            .map_err(|why| Error::new(ErrorKind::Unsupported, format!("CUDA is off: {why}")))?;
        let tf = model.transformer();
        let w = &tf.weights;
        let up_f32 = |v: &[f32]| gpu.stream.clone_htod(v).map_err(|e| cuda_err("upload", e));
        let mut layers = Vec::with_capacity(w.layers.len());
        for (li, l) in w.layers.iter().enumerate() {
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
                            cols: packed.cols,
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
        let (head, head_bf16) = upload_head(gpu, w.head())?;
        Ok(Self {
            gpu,
            model: model.clone(),
            layers,
            final_norm: up_f32(&w.final_norm)?,
            head,
            head_bf16,
            inv_freq: up_f32(tf.rope().inv_freq())?,
        })
    }

    /// Bytes of weights on the device.
    pub fn device_bytes(&self) -> usize {
        let lin: usize = self
            .layers
            .iter()
            .flat_map(|l| l.lin.iter())
            .map(|l| l.rows * l.row_bytes)
            .sum();
        lin + self.head.len()
    }

    pub fn new_cache(&self, capacity: usize) -> Result<GpuCache> {
        let cfg = self.model.config();
        let n = capacity * cfg.kv_dim();
        let alloc = || {
            (0..cfg.num_layers)
                .map(|_| {
                    self.gpu
                        .stream
                        .alloc_zeros::<f32>(n.max(1))
                        .map_err(|e| cuda_err("alloc", e))
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(GpuCache {
            k: alloc()?,
            v: alloc()?,
            len: 0,
            capacity,
            work: None,
            pos: self
                .gpu
                .stream
                .alloc_zeros::<i32>(1)
                .map_err(|e| cuda_err("alloc", e))?,
            graph: None,
        })
    }

    fn work(&self, n: usize, capacity: usize) -> Result<Work> {
        let cfg = self.model.config();
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
        Ok(Work {
            n,
            x: f(n * hidden)?,
            h: f(n * hidden)?,
            q: f(n * q_dim)?,
            k: f(n * kv_dim)?,
            v: f(n * kv_dim)?,
            att: f(n * q_dim)?,
            att_n: f(n * q_dim)?,
            o: f(n * hidden)?,
            gate: f(n * ffn)?,
            up: f(n * ffn)?,
            m: f(n * ffn)?,
            m_n: f(n * ffn)?,
            qi8: s
                .alloc_zeros::<i8>(n * widest.div_ceil(256) * 256)
                .map_err(|e| cuda_err("alloc", e))?,
            qs: f(n)?,
            scratch: f(n * cfg.num_heads * capacity)?,
            logits: f(n * cfg.vocab_size)?,
        })
    }

    /// Runs `tokens` at positions `cache.len()..` and returns the logits `[n, vocab]` of every
    /// token (`all_logits`) or of the last one only. A single-token step (decoding) is captured
    /// into a CUDA graph on first use and replayed after: the position is read from device
    /// memory, so one graph serves every step of the sequence.
    pub fn forward(
        &self,
        cache: &mut GpuCache,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let cfg = self.model.config();
        let n = tokens.len();
        if n == 0 {
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
        let (hidden, s) = (cfg.hidden_size, &self.gpu.stream);
        let x_host = self.model.transformer().embed(tokens)?;
        if cache.work.as_ref().is_none_or(|w| w.n < n) {
            cache.graph = None; // it points into the buffers about to be replaced
            cache.work = None;
            cache.work = Some(self.work(n, cache.capacity)?);
        }
        let past = dim(cache.len, "position")?;
        {
            let work = cache.work.as_mut().expect("allocated above");
            s.memcpy_htod(&x_host, &mut work.x.slice_mut(0..n * hidden))
                .map_err(|e| cuda_err("upload", e))?;
        }
        s.memcpy_htod(&[past], &mut cache.pos)
            .map_err(|e| cuda_err("upload", e))?;
        let rows = if all_logits { n } else { 1 };
        if n == 1 && !all_logits {
            if cache.graph.is_none() {
                s.begin_capture(
                    cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                )
                .map_err(|e| cuda_err("begin capture", e))?;
                let pass = self.pass(cache, 1, false);
                // End the capture whatever happened, so the stream is usable again.
                let graph = s
                    .end_capture(
                        cudarc::driver::sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
                    )
                    .map_err(|e| cuda_err("end capture", e))?;
                pass?;
                cache.graph = graph;
            }
            match &cache.graph {
                Some(g) => g.launch().map_err(|e| cuda_err("graph launch", e))?,
                None => self.pass(cache, 1, false)?,
            }
        } else {
            self.pass(cache, n, all_logits)?;
        }
        cache.len += n;
        let work = cache.work.as_ref().expect("allocated above");
        s.clone_dtoh(&work.logits.slice(0..rows * cfg.vocab_size))
            .map_err(|e| cuda_err("download", e))
    }

    /// The forward pass of `n` tokens whose embeddings are in the work buffer and whose first
    /// position is in `cache.pos`: kernel launches only (no host transfers, so it can be
    /// captured). Logits of the last token, or of all, go to the work buffer.
    fn pass(&self, cache: &mut GpuCache, n: usize, all_logits: bool) -> Result<()> {
        let cfg = self.model.config();
        let (hidden, s) = (cfg.hidden_size, &self.gpu.stream);
        let (q_dim, kv_dim, ffn) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let eps = cfg.rms_norm_eps;
        let GpuCache {
            k: kc,
            v: vc,
            capacity,
            work,
            pos,
            ..
        } = cache;
        let Work {
            x,
            h,
            q,
            k: kbuf,
            v: vbuf,
            att,
            att_n,
            o,
            gate,
            up: upb,
            m,
            m_n,
            qi8,
            qs,
            scratch,
            logits,
            ..
        } = work.as_mut().expect("allocated by forward");
        let relu2 = i32::from(cfg.activation == Activation::Relu2);
        for (li, l) in self.layers.iter().enumerate() {
            let [lq, lk, lv, lo, lg, lu, ld] = &l.lin;
            self.rms_norm(x, &l.input_norm, eps, h, n, hidden)?;
            self.quantize(h, hidden, lq.row_bytes * 4, n, qi8, qs)?;
            self.linear(lq, qi8, qs, n, q)?;
            self.linear(lk, qi8, qs, n, kbuf)?;
            self.linear(lv, qi8, qs, n, vbuf)?;
            self.rope(q, n, cfg.num_heads, pos)?;
            self.rope(kbuf, n, cfg.num_kv_heads, pos)?;
            self.kv_store(kbuf, &mut kc[li], pos, n * kv_dim)?;
            self.kv_store(vbuf, &mut vc[li], pos, n * kv_dim)?;
            self.attention(q, &kc[li], &vc[li], att, scratch, pos, n, *capacity)?;
            let a_in = match &l.attn_sub_norm {
                Some(wn) => {
                    self.rms_norm(att, wn, eps, att_n, n, q_dim)?;
                    &*att_n
                }
                None => &*att,
            };
            self.quantize(a_in, q_dim, lo.row_bytes * 4, n, qi8, qs)?;
            self.linear(lo, qi8, qs, n, o)?;
            self.add(x, o, n * hidden)?;

            self.rms_norm(x, &l.post_attention_norm, eps, h, n, hidden)?;
            self.quantize(h, hidden, lg.row_bytes * 4, n, qi8, qs)?;
            self.linear(lg, qi8, qs, n, gate)?;
            self.linear(lu, qi8, qs, n, upb)?;
            let glu_len = (n * ffn) as i64;
            let mut b = s.launch_builder(&self.gpu.k.glu);
            b.arg(&*gate)
                .arg(&*upb)
                .arg(&mut *m)
                .arg(&glu_len)
                .arg(&relu2);
            // SAFETY: (const float*, const float*, float*, long long, int); all hold n × ffn.
            unsafe { b.launch(cfg1(n * ffn, 256)?) }.map_err(|e| cuda_err("glu", e))?;
            let m_in = match &l.ffn_sub_norm {
                Some(wn) => {
                    self.rms_norm(m, wn, eps, m_n, n, ffn)?;
                    &*m_n
                }
                None => &*m,
            };
            self.quantize(m_in, ffn, ld.row_bytes * 4, n, qi8, qs)?;
            self.linear(ld, qi8, qs, n, o)?;
            self.add(x, o, n * hidden)?;
        }
        self.rms_norm(x, &self.final_norm, eps, h, n, hidden)?;
        let (first, rows) = if all_logits { (0, n) } else { (n - 1, 1) };
        let hs = h.slice(first * hidden..n * hidden);
        let vocab = cfg.vocab_size;
        let (vocab_i, cols_i, bf16) = (
            dim(vocab, "vocab")?,
            dim(hidden, "hidden")?,
            i32::from(self.head_bf16),
        );
        let mut b = s.launch_builder(&self.gpu.k.dense_head);
        b.arg(&self.head)
            .arg(&bf16)
            .arg(&vocab_i)
            .arg(&cols_i)
            .arg(&hs)
            .arg(&mut *logits);
        // SAFETY: (const void*, int, int, int, const float*, float*): the head holds vocab ×
        // hidden words of its dtype, hs rows × hidden floats, logits ≥ rows × vocab.
        unsafe { b.launch(grid(vocab.div_ceil(8), rows, 256)?) }
            .map_err(|e| cuda_err("dense_head", e))?;
        Ok(())
    }

    fn kv_store(
        &self,
        src: &CudaSlice<f32>,
        cache: &mut CudaSlice<f32>,
        pos: &CudaSlice<i32>,
        len: usize,
    ) -> Result<()> {
        let kv_dim = dim(self.model.config().kv_dim(), "kv_dim")?;
        let len_i = len as i64;
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.kv_store);
        b.arg(src).arg(cache).arg(pos).arg(&kv_dim).arg(&len_i);
        // SAFETY: (const float*, float*, const int*, int, long long): src holds len floats, the
        // cache capacity × kv_dim with *pos × kv_dim + len within it (checked by forward).
        unsafe { b.launch(cfg1(len, 256)?) }.map_err(|e| cuda_err("kv_store", e))?;
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

    fn linear(
        &self,
        l: &GpuLinear,
        q: &CudaSlice<i8>,
        scales: &CudaSlice<f32>,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const WARPS: usize = 8;
        const LIN_TOK: usize = 4;
        let (rows, row_bytes, n_i) = (
            dim(l.rows, "rows")?,
            dim(l.row_bytes, "row bytes")?,
            dim(n, "tokens")?,
        );
        debug_assert!(l.cols <= l.row_bytes * 4);
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.ternary_linear);
        b.arg(&l.data)
            .arg(&rows)
            .arg(&row_bytes)
            .arg(q)
            .arg(scales)
            .arg(&l.gamma)
            .arg(&n_i)
            .arg(out);
        // SAFETY: (const u8*, int, int, const int8*, const float*, float, int, float*); data
        // holds rows × row_bytes, q n rows of 4 × row_bytes, scales n, out n × rows.
        unsafe {
            b.launch(grid(
                l.rows.div_ceil(WARPS),
                n.div_ceil(LIN_TOK),
                32 * WARPS as u32,
            )?)
        }
        .map_err(|e| cuda_err("ternary_linear", e))?;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        n: usize,
        heads: usize,
        start: &CudaSlice<i32>,
    ) -> Result<()> {
        let d = self.model.config().head_dim;
        let (heads_i, d_i) = (dim(heads, "heads")?, dim(d, "head_dim")?);
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.rope);
        b.arg(x)
            .arg(&heads_i)
            .arg(&d_i)
            .arg(start)
            .arg(&self.inv_freq);
        // SAFETY: (float*, int, int, const int*, const float*); x holds n × heads × d, start one
        // int, inv_freq d / 2.
        unsafe { b.launch(grid(n, heads, 64)?) }.map_err(|e| cuda_err("rope", e))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        past: &CudaSlice<i32>,
        n: usize,
        ctx: usize,
    ) -> Result<()> {
        let cfg = self.model.config();
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        let (heads_i, kvh_i, d_i, ctx_i) = (
            dim(cfg.num_heads, "heads")?,
            dim(cfg.num_kv_heads, "kv heads")?,
            dim(cfg.head_dim, "head_dim")?,
            dim(ctx, "context")?,
        );
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.attention);
        b.arg(q).arg(k).arg(v).arg(out).arg(scratch);
        b.arg(past)
            .arg(&heads_i)
            .arg(&kvh_i)
            .arg(&d_i)
            .arg(&ctx_i)
            .arg(&scale);
        // SAFETY: (const float* q, k, v, float* out, scratch, const int* past, int heads,
        // kv_heads, d, ctx, float scale); q/out hold n × heads × d, k/v the cache (ctx rows of
        // kv_dim), scratch n × heads × ctx, and *past + n <= ctx (checked by forward).
        unsafe { b.launch(grid(n * cfg.num_heads, 1, 128)?) }
            .map_err(|e| cuda_err("attention", e))?;
        Ok(())
    }

    fn add(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, len: usize) -> Result<()> {
        let len_i = len as i64;
        let mut b = self.gpu.stream.launch_builder(&self.gpu.k.add_inplace);
        b.arg(x).arg(y).arg(&len_i);
        // SAFETY: (float*, const float*, long long); both hold len floats.
        unsafe { b.launch(cfg1(len, 256)?) }.map_err(|e| cuda_err("add_inplace", e))?;
        Ok(())
    }
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
