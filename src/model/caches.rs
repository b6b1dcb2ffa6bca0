//! The one seam between CPU and GPU: where each layer of a pass runs, and where its keys and
//! values are kept. A session holds one `Caches`; so do the scratch contexts that `score` and
//! the recompute after `adapt` build aside. Session code calls these methods and never asks
//! which device it is on.
//!
//! With a GPU part (a model loaded with a CUDA device), layers `..gpu_layers` run there and
//! their keys and values stay there, while no adapters are applied; the rest, and every layer
//! while adapters are applied (they train and run on the CPU), run on the CPU and keep their
//! keys and values in `cpu`.

use super::{Model, gpu};
use crate::error::Result;
use crate::text::tokenizer::TokenId;
use crate::transformer::kv_cache::{KvCache, KvType};
use crate::transformer::lora::Adapters;

/// What a forward pass gives back: final-normed hidden states (the CPU computes the logits
/// from them) or logits the GPU computed.
pub(crate) enum Pass {
    Hidden(Vec<f32>),
    Logits(Vec<f32>),
}

/// Keys or values of every layer, `[len][kv_dim]` each (the session-state layout).
pub(crate) type LayerRows = Vec<Vec<f32>>;

/// A context's keys and values, on the CPU and (for the GPU's layers) on the GPU.
pub(crate) struct Caches {
    /// Every layer's keys and values while adapters are applied, else those of the layers the
    /// CPU runs.
    pub(crate) cpu: KvCache,
    /// The GPU's layers' keys and values: present when the model has a GPU part and the
    /// context was made for it.
    gpu: Option<gpu::Cache>,
}

impl Caches {
    /// Room for `capacity` tokens; with a GPU part when `on_gpu` and the model has one.
    pub(crate) fn new(model: &Model, capacity: usize, kv: KvType, on_gpu: bool) -> Result<Caches> {
        let gpu = match model.gpu() {
            Some(core) if on_gpu => Some(core.new_cache(capacity)?),
            _ => None,
        };
        Ok(Caches {
            cpu: KvCache::new(model.config(), capacity, kv),
            gpu,
        })
    }

    /// True when passes without adapters run on the GPU.
    pub(crate) fn has_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cpu.capacity()
    }

    /// Forgets every position, on both devices.
    pub(crate) fn clear(&mut self) {
        self.cpu.clear();
        if let Some(g) = self.gpu.as_mut() {
            g.clear();
        }
    }

    /// One forward pass of `chunk`: on the GPU when it holds the GPU's layers and no adapters
    /// are given (the rest of the layers on the CPU), else all on the CPU with the adapters.
    /// `all_logits`: the GPU returns every token's logits, not only the last one's.
    pub(crate) fn forward(
        &mut self,
        model: &Model,
        chunk: &[TokenId],
        adapters: Option<&Adapters>,
        all_logits: bool,
    ) -> Result<Pass> {
        let tf = model.transformer();
        if adapters.is_none()
            && let (Some(core), Some(gcache)) = (model.gpu(), self.gpu.as_mut())
        {
            let x = tf.embed(chunk)?;
            if core.is_full() {
                return Ok(Pass::Logits(core.forward(gcache, &x, all_logits)?));
            }
            let h = core.forward_hidden(gcache, &x)?;
            let first = core.n_layers();
            let cpu = &mut self.cpu;
            return Ok(Pass::Hidden(
                model.compute(|| tf.forward_from(cpu, h, first))?,
            ));
        }
        let cpu = &mut self.cpu;
        Ok(Pass::Hidden(
            model.compute(|| tf.forward_with(cpu, chunk, adapters, None))?,
        ))
    }

    /// The `k` best (token, logit) pairs after `token`, computed and selected on the GPU, when
    /// the whole model is there and `k` is within what it selects; None otherwise (nothing
    /// run).
    pub(crate) fn forward_top(
        &mut self,
        model: &Model,
        token: TokenId,
        k: usize,
    ) -> Result<Option<Vec<(TokenId, f32)>>> {
        match (model.gpu(), self.gpu.as_mut()) {
            (Some(core), Some(gcache)) if core.is_full() && k <= core.max_candidates() => {
                let x = model.transformer().embed(&[token])?;
                Ok(Some(core.forward_top(gcache, &x, k)?))
            }
            _ => Ok(None),
        }
    }

    /// Every layer's keys and values for the first `len` positions, `[len][kv_dim]`, read from
    /// the GPU for its layers when `from_gpu`.
    pub(crate) fn snapshot(
        &self,
        model: &Model,
        len: usize,
        from_gpu: bool,
    ) -> Result<(LayerRows, LayerRows)> {
        if from_gpu && let Some(g) = &self.gpu {
            let cfg = model.config();
            let on_gpu = model.gpu_layers();
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for li in 0..cfg.num_layers {
                let (k, v) = if li < on_gpu {
                    g.layer_rows(li, cfg.kv_dim())?
                } else {
                    self.cpu.layer_rows(li, len)
                };
                ks.push(k);
                vs.push(v);
            }
            return Ok((ks, vs));
        }
        Ok(self.cpu.snapshot())
    }

    /// Sets the first `len` positions from a snapshot: on the CPU, and also on the GPU for its
    /// layers when `to_gpu`.
    pub(crate) fn restore(
        &mut self,
        k: &[Vec<f32>],
        v: &[Vec<f32>],
        len: usize,
        to_gpu: bool,
    ) -> Result<()> {
        if to_gpu && let Some(g) = self.gpu.as_mut() {
            g.restore(k, v, len)?;
        }
        self.cpu.restore(k, v, len);
        Ok(())
    }

    /// Brings the GPU's layers' keys and values for `len` positions into the CPU cache (when
    /// `copy`) and empties the GPU's: before adapters take the context to the CPU, so it
    /// carries over without being recomputed.
    pub(crate) fn move_to_cpu(&mut self, model: &Model, len: usize, copy: bool) -> Result<()> {
        if self.gpu.is_none() {
            return Ok(());
        }
        if copy && len > 0 {
            let (k, v) = self.snapshot(model, len, true)?;
            self.cpu.restore(&k, &v, len);
        }
        if let Some(g) = self.gpu.as_mut() {
            g.clear();
        }
        Ok(())
    }

    /// Takes over a context computed aside (`fresh`): its CPU cache always, its GPU cache when
    /// it has one (otherwise this context's own, emptied while adapters are applied, stays for
    /// when they are dropped).
    pub(crate) fn adopt(&mut self, fresh: Caches) {
        self.cpu = fresh.cpu;
        if fresh.gpu.is_some() {
            self.gpu = fresh.gpu;
        }
    }
}
