//! The kernel launches of one pass (kernels/bitnet.cu): fused norm + quantise, the projections
//! (q/k/v in one launch, gate + up + GLU, residual adds inside), RoPE into the cache, attention;
//! their grid shapes and the constants they share with the CUDA source.

use cudarc::driver::{CudaEvent, CudaSlice, LaunchConfig, PushKernelArg};

use super::{cuda_err, dim};
use crate::error::Result;

use super::upload::*;

/// How attn_softmax_v reads the values: in tiles copied asynchronously to shared memory (1), or
/// straight from the cache (0). BIT_TTT_CUDA_ATTN=tiled|plain overrides the default.
pub(super) fn att_tiled() -> i32 {
    static V: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *V.get_or_init(|| match std::env::var("BIT_TTT_CUDA_ATTN").as_deref() {
        Ok("plain") => 0,
        Ok("tiled") => 1,
        _ => 1,
    })
}

pub(super) fn grid(x: usize, y: usize, threads: u32) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (dim(x, "grid")? as u32, dim(y, "grid")? as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Keys per attention block and pass (kernels/bitnet.cu ATT_KEYS).
pub(super) const ATT_KEYS: usize = 32;
/// Tokens per warp of the projections and of the head (LIN_TOK, HEAD_TOK).
pub(super) const LIN_TOK: usize = 4;
pub(super) const HEAD_TOK: usize = 4;
/// Logits sorted per block by the candidate kernels (TOPK_CHUNK).
pub(super) const TOPK_CHUNK: usize = 4096;
/// The most sampling candidates a decode step returns.
pub const MAX_CANDIDATES: usize = 128;

/// Timings of one profiled pass: (kernel, microseconds), in launch order.
pub type Profile = Vec<(&'static str, f64)>;

/// Events recorded after each launch of a profiled pass.
pub(super) type Marks = Vec<(&'static str, CudaEvent)>;

impl GpuCore {
    pub(super) fn event(&self) -> Result<CudaEvent> {
        self.gpu
            .stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| cuda_err("event", e))
    }

    pub(super) fn rms_norm(
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
    pub(super) fn norm_quant(
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

    pub(super) fn quantize(
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
    pub(super) fn linear(
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

    pub(super) fn gate_up(
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

    pub(super) fn rope_kv(
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
    pub(super) fn attn_scores(
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
    pub(super) fn attn_softmax_v(
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

    pub(super) fn attn_dims(&self, ctx: usize) -> Result<(i32, i32, i32, i32)> {
        let cfg = &self.cfg;
        Ok((
            dim(cfg.num_heads, "heads")?,
            dim(cfg.num_kv_heads, "kv heads")?,
            dim(cfg.head_dim, "head_dim")?,
            dim(ctx, "context")?,
        ))
    }
}
