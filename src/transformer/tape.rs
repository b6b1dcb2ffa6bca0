//! What the forward pass keeps for the backward pass of `adapt`, for the layers the gradient
//! reaches (the lowest adapted layer and above).

/// One layer's saved tensors, all `[n, width]` row-major.
#[derive(Debug, Default, Clone)]
pub struct LayerTape {
    /// Residual stream entering the layer.
    pub x: Vec<f32>,
    /// After the input RMSNorm (input of Q, K, V).
    pub h: Vec<f32>,
    /// Queries after RoPE.
    pub q: Vec<f32>,
    /// Attention output before the sub-norm, and after it (input of O).
    pub attn: Vec<f32>,
    pub attn_normed: Vec<f32>,
    /// Residual stream after attention.
    pub x_mid: Vec<f32>,
    /// After the post-attention RMSNorm (input of gate and up).
    pub h2: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    /// GLU output before the sub-norm, and after it (input of down).
    pub glu: Vec<f32>,
    pub glu_normed: Vec<f32>,
    /// Per projection: A·x of its adapter (`[n, rank]`), when adapted.
    pub lora_u: [Option<Vec<f32>>; 7],
}

/// The tape of one forward call over `n` tokens at positions `start..start + n`.
#[derive(Debug, Clone)]
pub struct Tape {
    /// Layers below this one are run without recording.
    pub from_layer: usize,
    pub start: usize,
    pub n: usize,
    /// Layers `from_layer..`.
    pub layers: Vec<LayerTape>,
    /// Residual stream before the final norm.
    pub x_final: Vec<f32>,
}

impl Tape {
    pub fn new(from_layer: usize) -> Self {
        Self {
            from_layer,
            start: 0,
            n: 0,
            layers: Vec::new(),
            x_final: Vec::new(),
        }
    }
}
