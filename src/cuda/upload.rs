//! Uploading a model's layers and head to the GPU once, in the CPU kernels' layout (the same
//! bytes): `GpuCore`, what a model holds of itself on the device.

use cudarc::driver::CudaSlice;

use super::{Gpu, cuda_err, status};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::packed::Packing;
use crate::storage::DType;
use crate::transformer::forward::Transformer;
use crate::transformer::linear::{FloatMatrix, Linear};

/// One BitLinear on the device: `rows` rows of `row_bytes` bytes in the kernels' layout.
pub(super) struct GpuLinear {
    pub(super) data: CudaSlice<u8>,
    pub(super) rows: usize,
    pub(super) row_bytes: usize,
    pub(super) gamma: f32,
}

pub(super) struct GpuLayer {
    pub(super) input_norm: CudaSlice<f32>,
    pub(super) post_attention_norm: CudaSlice<f32>,
    pub(super) attn_sub_norm: Option<CudaSlice<f32>>,
    pub(super) ffn_sub_norm: Option<CudaSlice<f32>>,
    /// q, k, v, o, gate, up, down.
    pub(super) lin: [GpuLinear; 7],
}

/// The output head and final norm, on the device only when every layer is.
pub(super) struct GpuHead {
    pub(super) final_norm: CudaSlice<f32>,
    /// As stored (bf16 or f32, as u16 or u32 words).
    pub(super) data: CudaSlice<u8>,
    pub(super) bf16: bool,
}

/// Weights of the first `layers.len()` layers (and the head when that is all of them) on the
/// GPU. Holds no reference to the `Model` (a model owns its GpuCore).
pub(crate) struct GpuCore {
    pub(super) gpu: &'static Gpu,
    pub(super) cfg: Config,
    pub(super) layers: Vec<GpuLayer>,
    pub(super) head: Option<GpuHead>,
    /// An Option only so that `drop` can free it while it holds the stream.
    pub(super) inv_freq: Option<CudaSlice<f32>>,
}

impl Drop for GpuCore {
    fn drop(&mut self) {
        let _stream = self.gpu.lock.lock();
        self.layers.clear();
        self.head = None;
        self.inv_freq = None;
    }
}

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
}

/// The head's bytes as stored: bf16 stays bf16 (the kernel widens), f16 is widened to f32 here.
pub(super) fn upload_head(gpu: &Gpu, head: &FloatMatrix) -> Result<(CudaSlice<u8>, bool)> {
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
