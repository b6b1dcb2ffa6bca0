//! A sequence's keys and values on the GPU, the activation buffers its passes reuse, and the
//! captured decode step.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{Gpu, cuda_err, dim};
use crate::error::{Error, Result};

use super::launch::*;
use super::upload::*;

/// Keys and values of one sequence on the GPU (the offloaded layers), and the activation
/// buffers its forward passes reuse (allocated for the largest batch seen, so decoding
/// allocates nothing per token).
pub struct GpuCache {
    pub(super) gpu: &'static Gpu,
    pub(super) k: Vec<CudaSlice<f32>>,
    pub(super) v: Vec<CudaSlice<f32>>,
    pub(super) len: usize,
    pub(super) capacity: usize,
    pub(super) work: Option<Work>,
    /// The position of the first token of the next pass (read by the kernels). Options here and
    /// below only so that `drop` can free them while it holds the stream.
    pub(super) pos: Option<CudaSlice<i32>>,
    /// (cos, sin) of every position's rotary angles, `[capacity][head_dim / 2]`.
    pub(super) rope: Option<CudaSlice<f32>>,
    /// The single-token step, captured on first use (it points into `work`).
    pub(super) graph: Option<StepGraph>,
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
pub(super) struct StepGraph(pub(super) cudarc::driver::CudaGraph);

// SAFETY: graph handles belong to the CUDA context, not to a thread: cudarc makes the context
// current on the calling thread at every launch, and destroying a graph needs no current
// context. A cache (and so its graph) is used by one thread at a time (`&mut GpuCache`).
unsafe impl Send for StepGraph {}

/// Activations of up to `n` tokens.
pub(super) struct Work {
    pub(super) n: usize,
    pub(super) x: CudaSlice<f32>,
    pub(super) h: CudaSlice<f32>,
    pub(super) q: CudaSlice<f32>,
    pub(super) k: CudaSlice<f32>,
    pub(super) v: CudaSlice<f32>,
    pub(super) att: CudaSlice<f32>,
    pub(super) m: CudaSlice<f32>,
    pub(super) qi8: CudaSlice<i8>,
    pub(super) qs: CudaSlice<f32>,
    /// Attention scores, `[n × heads, capacity]`.
    pub(super) scratch: CudaSlice<f32>,
    pub(super) logits: CudaSlice<f32>,
    /// Sampling candidates: per-chunk keys, then the merged ones.
    pub(super) top_chunks: CudaSlice<u64>,
    pub(super) top: CudaSlice<u64>,
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

impl GpuCore {
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

    pub(super) fn work(&self, n: usize, capacity: usize) -> Result<Work> {
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
}
