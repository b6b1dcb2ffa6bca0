//! NVIDIA GPU backend (cargo feature `cuda`). The kernels (kernels/*.cu) are compiled at build
//! time by nvcc into an embedded fatbin, or at first use by NVRTC when the build had no nvcc.
//! The driver is loaded at run time, so a library built with `cuda` loads and runs on the CPU
//! on machines without one; [`status`] says why CUDA is off.
//!
//! A model loaded with a CUDA device (`ModelParams::device`) holds a [`GpuCore`]: its first
//! `gpu_layers` layers (and the head, when that is all of them) on the GPU. Sessions of such a
//! model run their passes there while they hold no adapters; tests/cuda.rs compares every
//! kernel and whole passes with the CPU.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use crate::error::{Error, ErrorKind, Result};

mod cache;
mod forward;
mod launch;
mod upload;
pub use cache::GpuCache;
pub use launch::{MAX_CANDIDATES, Profile};
pub(crate) use upload::GpuCore;

/// The kernels' source, for NVRTC when no fatbin was built.
const SOURCE: &str = include_str!("../../kernels/bitnet.cu");

#[cfg(bit_ttt_cuda_fatbin)]
const FATBIN: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/bitnet.fatbin")));
#[cfg(not(bit_ttt_cuda_fatbin))]
const FATBIN: Option<&[u8]> = None;

/// The first CUDA device with the kernels loaded.
pub struct Gpu {
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    /// "fatbin (nvcc)" or "NVRTC".
    pub kernels_from: &'static str,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) k: Kernels,
    /// Held by whoever uses the stream: sessions on several threads share it, and a decode step
    /// being captured into a graph must not take in another session's launches.
    pub(crate) lock: parking_lot::Mutex<()>,
}

/// Every kernel of kernels/bitnet.cu.
pub(crate) struct Kernels {
    pub quantize_rows: CudaFunction,
    pub ternary_gemv: CudaFunction,
    pub rms_norm: CudaFunction,
    pub quantize_padded: CudaFunction,
    pub norm_quant: CudaFunction,
    pub ternary_linear: CudaFunction,
    pub gate_up_glu: CudaFunction,
    pub rope_table: CudaFunction,
    pub rope_kv: CudaFunction,
    pub attn_scores: CudaFunction,
    pub attn_softmax_v: CudaFunction,
    pub dense_head: CudaFunction,
    pub topk_chunks: CudaFunction,
    pub topk_merge: CudaFunction,
}

/// The GPU, or why CUDA is off (no driver, no device, a load error). Probed once.
pub fn status() -> std::result::Result<&'static Gpu, &'static str> {
    static GPU: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();
    GPU.get_or_init(probe).as_ref().map_err(String::as_str)
}

/// One line for system_info.
pub fn describe() -> String {
    match status() {
        Ok(g) => format!(
            "{} (sm_{}{}), kernels from {}",
            g.name, g.capability.0, g.capability.1, g.kernels_from
        ),
        Err(why) => format!("off ({why})"),
    }
}

fn driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"]
        .iter()
        .any(|name| {
            let c = std::ffi::CString::new(*name).expect("no NUL in the names");
            // SAFETY: dlopen with a valid C string; a found handle is closed right away (the
            // driver library stays loaded only through cudarc's own loader).
            unsafe {
                let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
                if h.is_null() {
                    false
                } else {
                    libc::dlclose(h);
                    true
                }
            }
        })
}

fn probe() -> std::result::Result<Gpu, String> {
    if !driver_present() {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    // cudarc panics when a symbol it wants is missing from the driver: keep that a reason too.
    std::panic::catch_unwind(open)
        .unwrap_or_else(|_| Err("the CUDA driver could not be loaded".into()))
}

fn open() -> std::result::Result<Gpu, String> {
    let count = CudaContext::device_count().map_err(|e| format!("cuInit/device count: {e:?}"))?;
    if count < 1 {
        return Err("the CUDA driver reports no device".into());
    }
    let ctx = CudaContext::new(0).map_err(|e| format!("device 0: {e:?}"))?;
    // SAFETY: every buffer is used on the one stream below, so cudarc's cross-stream events
    // (which a graph capture cannot contain) are not needed; turned off before any allocation.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(|e| format!("stream: {e:?}"))?;
    let name = ctx.name().map_err(|e| format!("device name: {e:?}"))?;
    let capability = ctx
        .compute_capability()
        .map_err(|e| format!("compute capability: {e:?}"))?;
    let (module, kernels_from) = match FATBIN {
        Some(bin) => (
            ctx.load_module(cudarc::nvrtc::Ptx::from_binary(bin.to_vec())),
            "fatbin (nvcc)",
        ),
        None => {
            let opts = cudarc::nvrtc::CompileOptions {
                arch: Some("compute_80"),
                fmad: Some(false),
                ..Default::default()
            };
            let ptx =
                std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts))
                    .map_err(|_| "NVRTC (libnvrtc) could not be loaded".to_string())?
                    .map_err(|e| format!("NVRTC: {e:?}"))?;
            (ctx.load_module(ptx), "NVRTC")
        }
    };
    let module = module.map_err(|e| format!("loading the kernels: {e:?}"))?;
    let f = |n: &str| {
        module
            .load_function(n)
            .map_err(|e| format!("kernel {n}: {e:?}"))
    };
    let k = Kernels {
        quantize_rows: f("quantize_rows")?,
        ternary_gemv: f("ternary_gemv")?,
        rms_norm: f("rms_norm")?,
        quantize_padded: f("quantize_padded")?,
        norm_quant: f("norm_quant")?,
        ternary_linear: f("ternary_linear")?,
        gate_up_glu: f("gate_up_glu")?,
        rope_table: f("rope_table")?,
        rope_kv: f("rope_kv")?,
        attn_scores: f("attn_scores")?,
        attn_softmax_v: f("attn_softmax_v")?,
        dense_head: f("dense_head")?,
        topk_chunks: f("topk_chunks")?,
        topk_merge: f("topk_merge")?,
    };
    Ok(Gpu {
        name,
        capability,
        kernels_from,
        stream,
        k,
        lock: parking_lot::Mutex::new(()),
    })
}

pub(crate) fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::new(ErrorKind::Internal, format!("CUDA {what}: {e:?}"))
}

pub(crate) fn dim(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::invalid_argument(format!("{what} = {n} is too large for the GPU kernels"))
    })
}

/// Ternary weights resident on the GPU, in the Hugging Face packed layout.
pub struct GpuTernary {
    packed: CudaSlice<u8>,
    rows: usize,
    cols: usize,
}

impl Gpu {
    /// Uploads packed ternary weights `[ceil(rows/4), cols]`.
    pub fn upload_ternary(&self, packed: &[u8], rows: usize, cols: usize) -> Result<GpuTernary> {
        let _stream = self.lock.lock();
        if packed.len() != crate::quant::packed_rows(rows) * cols {
            return Err(Error::invalid_argument(format!(
                "packed weights have {} bytes, [{rows}, {cols}] needs {}",
                packed.len(),
                crate::quant::packed_rows(rows) * cols
            )));
        }
        let packed = self
            .stream
            .clone_htod(packed)
            .map_err(|e| cuda_err("upload", e))?;
        Ok(GpuTernary { packed, rows, cols })
    }

    /// Per-row absmax int8 quantisation of `x` `[n_tok, cols]` on the GPU: (q, scales), equal to
    /// `quant::quantize_activations` row by row.
    pub fn quantize_rows(&self, x: &[f32], cols: usize) -> Result<(Vec<i8>, Vec<f32>)> {
        let _stream = self.lock.lock();
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(Error::invalid_argument(format!(
                "{} values are not rows of {cols}",
                x.len()
            )));
        }
        let n_tok = x.len() / cols;
        let dx = self
            .stream
            .clone_htod(x)
            .map_err(|e| cuda_err("upload", e))?;
        let mut q = self
            .stream
            .alloc_zeros::<i8>(x.len())
            .map_err(|e| cuda_err("alloc", e))?;
        let mut s = self
            .stream
            .alloc_zeros::<f32>(n_tok)
            .map_err(|e| cuda_err("alloc", e))?;
        let cols_i = dim(cols, "cols")?;
        let cfg = LaunchConfig {
            grid_dim: (dim(n_tok, "tokens")? as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.k.quantize_rows);
        b.arg(&dx).arg(&mut q).arg(&mut s).arg(&cols_i);
        // SAFETY: the arguments match the kernel's signature (const float*, int8*, float*, int)
        // and the buffers hold n_tok × cols and n_tok elements, the ranges the kernel touches.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("quantize_rows", e))?;
        let q = self
            .stream
            .clone_dtoh(&q)
            .map_err(|e| cuda_err("download", e))?;
        let s = self
            .stream
            .clone_dtoh(&s)
            .map_err(|e| cuda_err("download", e))?;
        Ok((q, s))
    }

    /// `acc[t][r] = Σ_c T[r][c] · q[t][c]` on the GPU, equal to `kernels::scalar::ternary_gemm`.
    pub fn ternary_gemv(&self, w: &GpuTernary, q: &[i8]) -> Result<Vec<i32>> {
        let _stream = self.lock.lock();
        if w.cols == 0 || !q.len().is_multiple_of(w.cols) {
            return Err(Error::invalid_argument(format!(
                "{} activations are not rows of {}",
                q.len(),
                w.cols
            )));
        }
        let n_tok = q.len() / w.cols;
        let dq = self
            .stream
            .clone_htod(q)
            .map_err(|e| cuda_err("upload", e))?;
        let mut acc = self
            .stream
            .alloc_zeros::<i32>(n_tok * w.rows)
            .map_err(|e| cuda_err("alloc", e))?;
        let slab = crate::quant::packed_rows(w.rows);
        const WARPS_PER_BLOCK: usize = 8;
        let cfg = LaunchConfig {
            grid_dim: (
                dim(slab.div_ceil(WARPS_PER_BLOCK), "rows")? as u32,
                dim(n_tok, "tokens")? as u32,
                1,
            ),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows, cols) = (dim(w.rows, "rows")?, dim(w.cols, "cols")?);
        let mut b = self.stream.launch_builder(&self.k.ternary_gemv);
        b.arg(&w.packed)
            .arg(&rows)
            .arg(&cols)
            .arg(&dq)
            .arg(&mut acc);
        // SAFETY: the arguments match (const u8*, int, int, const int8*, int*); packed holds
        // ceil(rows/4) × cols bytes, q n_tok × cols, acc n_tok × rows, which bound every access.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("ternary_gemv", e))?;
        self.stream
            .clone_dtoh(&acc)
            .map_err(|e| cuda_err("download", e))
    }
}
