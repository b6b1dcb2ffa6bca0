//! The GPU side of a model and of a session's caches: the CUDA backend's types when the `cuda`
//! feature is on, and uninhabited stand-ins of the same shape when it is off. Code above is
//! written once, with no `cfg`: a stand-in can never be constructed, so the compiler drops
//! every path that would use one.

use std::sync::Arc;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::ModelParams;
use crate::transformer::forward::Transformer;

#[cfg(feature = "cuda")]
pub(crate) use crate::cuda::{GpuCache as Cache, GpuCore as Core, describe};

/// The GPU part of a model loaded with `params`: None for the CPU. An explicit CUDA device that
/// cannot be used is an error naming why; `Auto` then falls back to the CPU and logs why.
#[cfg(feature = "cuda")]
pub(crate) fn load(tf: &Transformer, params: &ModelParams) -> Result<Option<Arc<Core>>> {
    use crate::log;
    let n_layers = params
        .gpu_layers
        .unwrap_or(usize::MAX)
        .min(tf.weights.layers.len());
    match params.device {
        Device::Cpu => Ok(None),
        Device::Cuda(i) if i != 0 => Err(Error::unsupported(format!(
            "device cuda:{i}: this build drives one GPU, cuda:0"
        ))),
        _ if n_layers == 0 => Ok(None),
        Device::Cuda(_) => Ok(Some(Arc::new(Core::new(tf, n_layers)?))),
        Device::Auto => match Core::new(tf, n_layers) {
            Ok(core) => Ok(Some(Arc::new(core))),
            Err(e) if e.kind() == crate::error::ErrorKind::Unsupported => {
                log::log(log::Level::Info, || format!("running on the CPU: {e}"));
                Ok(None)
            }
            Err(e) => Err(e),
        },
    }
}

/// Without CUDA there is no GPU part; asking for a CUDA device is an error that says so.
#[cfg(not(feature = "cuda"))]
pub(crate) fn load(tf: &Transformer, params: &ModelParams) -> Result<Option<Arc<Core>>> {
    let _ = tf;
    match params.device {
        Device::Cuda(_) => Err(Error::unsupported(format!(
            "device {}: this build of bit_ttt has no CUDA support (cargo feature `cuda`)",
            params.device.name()
        ))),
        _ => Ok(None),
    }
}

#[cfg(not(feature = "cuda"))]
pub(crate) use off::{Cache, Core, describe};

#[cfg(not(feature = "cuda"))]
mod off {
    //! The stand-ins: the methods of `cuda::GpuCore` and `cuda::GpuCache` that the model layer
    //! calls, on types without values.

    use crate::error::Result;
    use crate::text::tokenizer::TokenId;

    /// A model's layers on the GPU: none in this build.
    pub(crate) enum Core {}
    /// A session's keys and values on the GPU: none in this build.
    pub(crate) enum Cache {}

    pub(crate) fn describe() -> String {
        "not built (cargo feature `cuda`)".to_string()
    }

    impl Core {
        pub(crate) fn n_layers(&self) -> usize {
            match *self {}
        }
        pub(crate) fn is_full(&self) -> bool {
            match *self {}
        }
        pub(crate) fn max_candidates(&self) -> usize {
            match *self {}
        }
        pub(crate) fn new_cache(&self, _: usize) -> Result<Cache> {
            match *self {}
        }
        pub(crate) fn forward(&self, _: &mut Cache, _: &[f32], _: bool) -> Result<Vec<f32>> {
            match *self {}
        }
        pub(crate) fn forward_hidden(&self, _: &mut Cache, _: &[f32]) -> Result<Vec<f32>> {
            match *self {}
        }
        pub(crate) fn forward_top(
            &self,
            _: &mut Cache,
            _: &[f32],
            _: usize,
        ) -> Result<Vec<(TokenId, f32)>> {
            match *self {}
        }
    }

    impl Cache {
        pub(crate) fn clear(&mut self) {
            match *self {}
        }
        pub(crate) fn layer_rows(&self, _: usize, _: usize) -> Result<(Vec<f32>, Vec<f32>)> {
            match *self {}
        }
        pub(crate) fn restore(&mut self, _: &[Vec<f32>], _: &[Vec<f32>], _: usize) -> Result<()> {
            match *self {}
        }
    }
}
