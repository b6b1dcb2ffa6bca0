//! `adapt`: test-time training of per-session LoRA adapters on the frozen ternary model
//! (docs/ADAPT.md). Text → windows of `chunk_tokens` → for each epoch and window:
//! forward with a tape, mean next-token loss, backward into A and B only, clip, AdamW.

pub mod backward;
pub mod ops;
pub mod optim;

use crate::error::{Error, ErrorKind, Result};
use crate::state::TrainerBlob;
use crate::transformer::Weights;
use crate::transformer::forward::Transformer;
use crate::transformer::kv_cache::KvCache;
use crate::transformer::lora::{ALL_PROJECTIONS, AdapterShape, Adapters};
use crate::transformer::tape::Tape;
use optim::{AdamW, Hyper};

/// Parameters of one `adapt` call.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptParams {
    /// LoRA rank r.
    pub rank: usize,
    /// LoRA α (the update is scaled by α / r).
    pub alpha: f32,
    /// Adapt the top `layers` layers; 0 = the last quarter (at least one); ≥ the model's layer
    /// count = all.
    pub layers: usize,
    /// Bit i: adapt projection i of q, k, v, o, gate, up, down.
    pub projections: u32,
    pub learning_rate: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Largest global gradient norm (0 = no clipping).
    pub clip: f32,
    /// Tokens per training window (one optimiser step each).
    pub chunk_tokens: usize,
    pub epochs: usize,
    /// Seed of A's initial values (used when the session has no adapters yet).
    pub seed: u64,
    /// Pull towards the initial adapter per step (0 = off).
    pub decay_to_init: f32,
    /// Keep the KV cache computed with the old adapters instead of recomputing it.
    pub keep_kv: bool,
}

impl Default for AdaptParams {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 16.0,
            layers: 0,
            projections: ALL_PROJECTIONS,
            learning_rate: 3e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip: 1.0,
            chunk_tokens: 512,
            epochs: 2,
            seed: 0xADA7,
            decay_to_init: 0.0,
            keep_kv: false,
        }
    }
}

impl AdaptParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid_argument(m));
        if self.rank == 0 || self.rank > 1024 {
            return bad(format!("adapt: rank {} is outside 1..=1024", self.rank));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad(format!(
                "adapt: alpha {} must be finite and > 0",
                self.alpha
            ));
        }
        if self.projections == 0 || self.projections & !ALL_PROJECTIONS != 0 {
            return bad(format!(
                "adapt: projections mask {:#x} must be a non-empty subset of 0x7f",
                self.projections
            ));
        }
        for (name, v) in [
            ("learning_rate", self.learning_rate),
            ("weight_decay", self.weight_decay),
            ("clip", self.clip),
            ("decay_to_init", self.decay_to_init),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("adapt: {name} {v} must be finite and >= 0"));
            }
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("adapt: {name} {v} must be in [0, 1)"));
            }
        }
        if !self.eps.is_finite() || self.eps <= 0.0 {
            return bad(format!("adapt: eps {} must be finite and > 0", self.eps));
        }
        if self.chunk_tokens < 2 {
            return bad(format!(
                "adapt: chunk_tokens {} must be at least 2",
                self.chunk_tokens
            ));
        }
        if self.epochs == 0 || self.epochs > 10_000 {
            return bad(format!(
                "adapt: epochs {} is outside 1..=10000",
                self.epochs
            ));
        }
        Ok(())
    }

    /// The adapter layout these parameters ask for on a model with `num_layers` layers.
    pub fn shape(&self, num_layers: usize) -> AdapterShape {
        let top = match self.layers {
            0 => (num_layers / 4).max(1),
            n => n.min(num_layers),
        };
        AdapterShape {
            rank: self.rank,
            alpha: self.alpha,
            first_layer: num_layers - top,
            projections: self.projections,
        }
    }

    fn hyper(&self) -> Hyper {
        Hyper {
            lr: self.learning_rate,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            clip: self.clip,
            decay_to_init: self.decay_to_init,
        }
    }
}

/// Reported after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptProgress {
    /// Steps done (1-based).
    pub step: usize,
    pub total_steps: usize,
    /// Mean next-token loss (nats) of this step's window, before the step.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// What an `adapt` call did.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptResult {
    pub steps: usize,
    /// Tokens of the text (each trained on `epochs` times).
    pub tokens: usize,
    /// Mean loss of the first and of the last step.
    pub first_loss: f32,
    pub last_loss: f32,
    pub seconds: f64,
}

/// What one optimiser step saw.
pub struct Step {
    /// Mean next-token loss of the window before the step.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Final-normed hidden states of the window (before the step), for its logits.
    pub hidden: Vec<f32>,
}

/// A session's trainable state: adapters, their initial values and the optimiser.
#[derive(Debug, Clone, PartialEq)]
pub struct Trainer {
    pub adapters: Adapters,
    pub init: Adapters,
    pub opt: AdamW,
}

impl Trainer {
    pub fn new(weights: &Weights, shape: AdapterShape, seed: u64) -> Self {
        let adapters = Adapters::new(weights, shape, seed);
        Self {
            init: adapters.clone(),
            opt: AdamW::new(&adapters),
            adapters,
        }
    }

    /// One optimiser step on one window of tokens whose keys and values before it are in
    /// `cache` (constants), or none. The window's keys and values (computed with the adapters
    /// before the step) are appended to `cache`.
    pub fn step(
        &mut self,
        tf: &Transformer,
        cache: &mut KvCache,
        window: &[u32],
        p: &AdaptParams,
    ) -> Result<Step> {
        if window.len() < 2 {
            return Err(Error::invalid_argument(
                "adapt: a training window needs at least 2 tokens",
            ));
        }
        let mut tape = Tape::new(self.adapters.shape.first_layer);
        let hidden = tf.forward_with(cache, window, Some(&self.adapters), Some(&mut tape))?;
        let mut grads = self.adapters.zeros_like();
        let loss = backward::window(
            tf,
            &self.adapters,
            cache,
            &tape,
            &hidden,
            &window[1..],
            &mut grads,
        );
        if !loss.is_finite() {
            return Err(Error::internal(format!(
                "adapt: the loss is not finite ({loss})"
            )));
        }
        let norm = self
            .opt
            .step(&mut self.adapters, &mut grads, &self.init, &p.hyper());
        Ok(Step {
            loss,
            grad_norm: norm as f32,
            hidden,
        })
    }
}

impl Trainer {
    /// For a saved session state.
    pub fn to_blob(&self) -> TrainerBlob {
        let sh = self.adapters.shape;
        TrainerBlob {
            rank: sh.rank as u64,
            alpha: sh.alpha,
            first_layer: sh.first_layer as u64,
            projections: sh.projections,
            step: self.opt.step,
            tensors: [&self.adapters, &self.init, &self.opt.m, &self.opt.v]
                .iter()
                .flat_map(|a| a.tensors().map(<[f32]>::to_vec))
                .collect(),
        }
    }

    /// From a saved session state, checked against this model's shapes.
    pub fn from_blob(weights: &Weights, b: &TrainerBlob) -> Result<Trainer> {
        let bad = |m: String| Error::new(ErrorKind::IncompatibleState, m);
        let layers = weights.layers.len() as u64;
        if b.rank == 0
            || b.rank > 1024
            || b.first_layer >= layers
            || b.projections == 0
            || b.projections & !ALL_PROJECTIONS != 0
            || !b.alpha.is_finite()
            || b.alpha <= 0.0
        {
            return Err(bad(format!(
                "session state has invalid adapters (rank {}, alpha {}, first layer {} of {layers}, projections {:#x})",
                b.rank, b.alpha, b.first_layer, b.projections
            )));
        }
        let shape = AdapterShape {
            rank: b.rank as usize,
            alpha: b.alpha,
            first_layer: b.first_layer as usize,
            projections: b.projections,
        };
        let mut t = Trainer::new(weights, shape, 0);
        t.opt.step = b.step;
        let per = t.adapters.tensors().count();
        if b.tensors.len() != 4 * per {
            return Err(bad(format!(
                "session state has {} adapter tensors, this model's adapters need {}",
                b.tensors.len(),
                4 * per
            )));
        }
        let mut src = b.tensors.iter();
        let mut result = Ok(());
        for target in [&mut t.adapters, &mut t.init, &mut t.opt.m, &mut t.opt.v] {
            target.for_each_tensor_mut(|dst| {
                let s = src.next().expect("count checked");
                if s.len() == dst.len() {
                    dst.copy_from_slice(s);
                } else if result.is_ok() {
                    result = Err(bad(format!(
                        "session state has an adapter tensor of {} values where {} are needed",
                        s.len(),
                        dst.len()
                    )));
                }
            });
        }
        result.map(|()| t)
    }
}

/// Splits `n` tokens into windows of at most `chunk` tokens; a last window shorter than 2
/// tokens joins the one before it.
pub fn windows(n: usize, chunk: usize) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(chunk)
        .map(|s| s..(s + chunk).min(n))
        .collect();
    if out.len() > 1 && out.last().is_some_and(|r| r.len() < 2) {
        let last = out.pop().expect("checked");
        out.last_mut().expect("checked").end = last.end;
    }
    out.retain(|r| r.len() >= 2);
    out
}

#[cfg(test)]
mod tests;
