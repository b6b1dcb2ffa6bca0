//! The transformer: weights as loaded, and the forward pass over a KV cache.

pub mod forward;
pub mod head;
pub mod kv_cache;
pub mod linear;
pub mod lora;
pub mod rope;
pub mod tape;

use crate::config::Config;
use linear::{FloatMatrix, Linear};

/// One transformer block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub post_attention_norm: Vec<f32>,
    /// BitNet family only: RMSNorm on the attention output, before o_proj.
    pub attn_sub_norm: Option<Vec<f32>>,
    /// BitNet family only: RMSNorm on the GLU output, before down_proj.
    pub ffn_sub_norm: Option<Vec<f32>>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl LayerWeights {
    pub fn linears(&self) -> [&Linear; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }
}

/// All weights of a model.
#[derive(Debug, Clone)]
pub struct Weights {
    pub config: Config,
    pub embed: FloatMatrix,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<FloatMatrix>,
    /// Quantised copies of the head found with the weights (a pre-packed file may hold them).
    pub stored_heads: Vec<head::StoredHead>,
}

impl Weights {
    /// The output head matrix `[vocab, hidden]`.
    pub fn head(&self) -> &FloatMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}
