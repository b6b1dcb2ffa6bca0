//! The door for this repository's own tests, benches and examples into the crate's internals
//! (kernels against their oracle, the tokenizer against its reference, the GPU pass alone).
//! Hidden from the docs and not part of the API: nothing here is stable, and `src/ffi/` and
//! `cli/` must not use it (tools/check_layers.py fails CI when they do).

pub mod kernels {
    pub use crate::kernels::*;
}
pub mod quant {
    pub use crate::quant::*;
}
pub mod sampling {
    pub use crate::rng::Rng;
    pub use crate::sampling::*;
}
pub mod storage {
    pub use crate::storage::*;
}
pub mod text {
    pub use crate::text::*;
}

#[cfg(feature = "cuda")]
pub mod cuda {
    pub use crate::cuda::*;

    use std::sync::Arc;

    use crate::cuda::GpuCore;
    use crate::error::Result;
    use crate::model::Model;
    use crate::text::tokenizer::TokenId;

    /// A model's weights on the GPU, for tests and benchmarks that drive the GPU pass directly
    /// (sessions use the copy a model loaded with a CUDA device holds).
    pub struct GpuModel {
        core: Arc<GpuCore>,
        model: Model,
    }

    impl GpuModel {
        /// Uploads every layer and the head of `model`.
        pub fn new(model: &Model) -> Result<Self> {
            Self::with_layers(model, model.config().num_layers)
        }

        /// Uploads the first `n_layers` layers (all of them: the head too).
        pub fn with_layers(model: &Model, n_layers: usize) -> Result<Self> {
            Ok(Self {
                core: Arc::new(GpuCore::new(model.transformer(), n_layers)?),
                model: model.clone(),
            })
        }

        /// Bytes of weights on the device.
        pub fn device_bytes(&self) -> usize {
            self.core.device_bytes()
        }

        pub fn new_cache(&self, capacity: usize) -> Result<GpuCache> {
            self.core.new_cache(capacity)
        }

        /// Runs `tokens` at positions `cache.len()..` and returns the logits `[n, vocab]` of every
        /// token (`all_logits`) or of the last one only.
        pub fn forward(
            &self,
            cache: &mut GpuCache,
            tokens: &[u32],
            all_logits: bool,
        ) -> Result<Vec<f32>> {
            let x = self.model.transformer().embed(tokens)?;
            self.core.forward(cache, &x, all_logits)
        }

        /// The `k` best (token, logit) pairs of the last of `tokens`, best first.
        pub fn forward_top(
            &self,
            cache: &mut GpuCache,
            tokens: &[u32],
            k: usize,
        ) -> Result<Vec<(TokenId, f32)>> {
            let x = self.model.transformer().embed(tokens)?;
            self.core.forward_top(cache, &x, k)
        }

        /// Hidden states after the offloaded layers.
        pub fn forward_hidden(&self, cache: &mut GpuCache, tokens: &[u32]) -> Result<Vec<f32>> {
            let x = self.model.transformer().embed(tokens)?;
            self.core.forward_hidden(cache, &x)
        }

        /// Per-launch timings of one pass of `tokens` (see [`GpuCore::profile`]).
        pub fn profile(&self, cache: &mut GpuCache, tokens: &[u32]) -> Result<Profile> {
            let x = self.model.transformer().embed(tokens)?;
            self.core.profile(cache, &x)
        }

        pub fn max_candidates(&self) -> usize {
            self.core.max_candidates()
        }
    }
}
