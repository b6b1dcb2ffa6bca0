//! The backward pass of one taped window: cross-entropy over the output head → final norm →
//! blocks from the top down to the lowest adapted layer, accumulating the adapters' gradients.
//! Frozen BitLinears pass gradients with the straight-through estimator: ∂x = γ·Tᵀ·∂y.

use super::ops::{self, AttnShape};
use crate::config::Activation;
use crate::transformer::Weights;
use crate::transformer::forward::Transformer;
use crate::transformer::kv_cache::KvCache;
use crate::transformer::linear::Linear;
use crate::transformer::lora::Adapters;
use crate::transformer::tape::{LayerTape, Tape};

/// The transpose of the forward pass's rotary embedding on gradients of q and k at positions
/// `start..`.
fn rope_backward(tf: &Transformer, dq: &mut [f32], dk: &mut [f32], start: usize) {
    let cfg = &tf.weights.config;
    let (d, rope) = (cfg.head_dim, tf.rope());
    let mut cos = vec![0.0; rope.half_dim()];
    let mut sin = vec![0.0; rope.half_dim()];
    for (t, (qt, kt)) in dq
        .chunks_exact_mut(cfg.q_dim())
        .zip(dk.chunks_exact_mut(cfg.kv_dim()))
        .enumerate()
    {
        rope.cos_sin(start + t, &mut cos, &mut sin);
        qt.chunks_exact_mut(d)
            .chain(kt.chunks_exact_mut(d))
            .for_each(|h| ops::rope_backward(h, &cos, &sin));
    }
}

/// `dx += Wᵀ·dy` for a frozen projection.
fn frozen_t(tf: &Transformer, l: &Linear, dy: &[f32], n: usize, dx: &mut [f32]) {
    match l {
        Linear::Ternary(t) => {
            let scaled: Vec<f32> = dy.iter().map(|g| g * t.gamma).collect();
            tf.kernel().ternary_gemm_t(&t.packed, &scaled, n, dx);
        }
        Linear::Dense(_) => {
            let (rows, cols) = (l.rows(), l.cols());
            let w = l.dequantized();
            for (dyt, dxt) in dy.chunks_exact(rows).zip(dx.chunks_exact_mut(cols)) {
                for (r, &g) in dyt.iter().enumerate() {
                    crate::kernels::scalar::axpy(g, &w[r * cols..][..cols], dxt);
                }
            }
        }
    }
}

struct Ctx<'a> {
    tf: &'a Transformer,
    adapters: &'a Adapters,
    grads: &'a mut Adapters,
    n: usize,
}

impl Ctx<'_> {
    /// Backward of projection `p` of layer `li` whose input was `x` and output gradient `dy`:
    /// adapter gradients, and `dx += ∂/∂x` when `dx` is given.
    #[allow(clippy::too_many_arguments)]
    fn projection(
        &mut self,
        li: usize,
        p: usize,
        l: &Linear,
        x: &[f32],
        u: &Option<Vec<f32>>,
        dy: &[f32],
        mut dx: Option<&mut [f32]>,
    ) {
        if let Some(dx) = dx.as_deref_mut() {
            frozen_t(self.tf, l, dy, self.n, dx);
        }
        if let (Some(lora), Some(u)) = (self.adapters.get(li, p), u) {
            let g = self.grads.layers[li][p]
                .as_mut()
                .expect("gradients have the adapters' shape");
            ops::lora_backward(
                &lora.a,
                &lora.b,
                self.adapters.shape.rank,
                self.adapters.scale(),
                x,
                u,
                dy,
                &mut g.a,
                &mut g.b,
                dx,
            );
        }
    }
}

/// Mean next-token loss of a taped window and its gradients.
///
/// `hidden` are the final-normed states the forward returned; position t predicts
/// `targets[t]` for `t < targets.len()`. Gradients are added into `grads`; returns the mean loss.
pub fn window(
    tf: &Transformer,
    adapters: &Adapters,
    cache: &KvCache,
    tape: &Tape,
    hidden: &[f32],
    targets: &[u32],
    grads: &mut Adapters,
) -> f32 {
    let w: &Weights = &tf.weights;
    let cfg = &w.config;
    let (h, n) = (cfg.hidden_size, tape.n);
    let m = targets.len();
    let head = w.head();
    let mut dh = vec![0.0f32; n * h];
    let loss = ops::cross_entropy_tiled(
        &hidden[..m * h],
        h,
        head.rows,
        |r0, out: &mut [f32]| {
            for (i, row) in out.chunks_exact_mut(h).enumerate() {
                head.row_into(r0 + i, row);
            }
        },
        targets,
        1.0 / m as f32,
        &mut dh[..m * h],
    ) / m as f32;
    let mut dx = vec![0.0f32; n * h];
    ops::rms_norm_backward(&tape.x_final, &w.final_norm, cfg.rms_norm_eps, &dh, &mut dx);

    let mut ctx = Ctx {
        tf,
        adapters,
        grads,
        n,
    };
    for (i, rec) in tape.layers.iter().enumerate().rev() {
        let li = tape.from_layer + i;
        let lowest = i == 0;
        dx = layer(&mut ctx, li, rec, cache, tape, dx, lowest);
    }
    loss
}

/// Backward of layer `li`: takes ∂loss/∂(layer output), returns ∂loss/∂(layer input) (not
/// computed for the lowest adapted layer, where the backward pass stops).
fn layer(
    ctx: &mut Ctx,
    li: usize,
    rec: &LayerTape,
    cache: &KvCache,
    tape: &Tape,
    dx: Vec<f32>,
    lowest: bool,
) -> Vec<f32> {
    let tf = ctx.tf;
    let cfg = &tf.weights.config;
    let lw = &tf.weights.layers[li];
    let (n, eps) = (tape.n, cfg.rms_norm_eps);
    let (hd, qd, kvd, ffn) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );

    // Feed-forward: x_out = x_mid + down(sub_norm(glu(gate(h2), up(h2)))).
    let mut d_glu_n = vec![0.0f32; n * ffn];
    ctx.projection(
        li,
        6,
        &lw.down,
        &rec.glu_normed,
        &rec.lora_u[6],
        &dx,
        Some(&mut d_glu_n),
    );
    let d_glu = match &lw.ffn_sub_norm {
        Some(wn) => {
            let mut g = vec![0.0f32; n * ffn];
            ops::rms_norm_backward(&rec.glu, wn, eps, &d_glu_n, &mut g);
            g
        }
        None => d_glu_n,
    };
    let (mut d_gate, mut d_up) = (vec![0.0f32; n * ffn], vec![0.0f32; n * ffn]);
    match cfg.activation {
        Activation::Relu2 => {
            ops::relu2_glu_backward(&rec.gate, &rec.up, &d_glu, &mut d_gate, &mut d_up)
        }
        Activation::Silu => {
            ops::silu_glu_backward(&rec.gate, &rec.up, &d_glu, &mut d_gate, &mut d_up)
        }
    }
    let mut d_h2 = vec![0.0f32; n * hd];
    ctx.projection(
        li,
        4,
        &lw.gate,
        &rec.h2,
        &rec.lora_u[4],
        &d_gate,
        Some(&mut d_h2),
    );
    ctx.projection(
        li,
        5,
        &lw.up,
        &rec.h2,
        &rec.lora_u[5],
        &d_up,
        Some(&mut d_h2),
    );
    let mut d_mid = dx;
    ops::rms_norm_backward(&rec.x_mid, &lw.post_attention_norm, eps, &d_h2, &mut d_mid);

    // Attention: x_mid = x + o(sub_norm(attn(rope(q(h)), rope(k(h)), v(h)))).
    let mut d_attn_n = vec![0.0f32; n * qd];
    ctx.projection(
        li,
        3,
        &lw.o,
        &rec.attn_normed,
        &rec.lora_u[3],
        &d_mid,
        Some(&mut d_attn_n),
    );
    let d_attn = match &lw.attn_sub_norm {
        Some(wn) => {
            let mut g = vec![0.0f32; n * qd];
            ops::rms_norm_backward(&rec.attn, wn, eps, &d_attn_n, &mut g);
            g
        }
        None => d_attn_n,
    };
    let (mut dq, mut dk, mut dv) = (
        vec![0.0f32; n * qd],
        vec![0.0f32; n * kvd],
        vec![0.0f32; n * kvd],
    );
    let total = tape.start + n;
    let (k_rows, v_rows) = cache.layer_rows(li, total);
    ops::attention_backward(
        AttnShape {
            n,
            past: tape.start,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        },
        &rec.q,
        &k_rows,
        &v_rows,
        &d_attn,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    rope_backward(tf, &mut dq, &mut dk, tape.start);
    let mut d_h = (!lowest).then(|| vec![0.0f32; n * hd]);
    ctx.projection(
        li,
        0,
        &lw.q,
        &rec.h,
        &rec.lora_u[0],
        &dq,
        d_h.as_deref_mut(),
    );
    ctx.projection(
        li,
        1,
        &lw.k,
        &rec.h,
        &rec.lora_u[1],
        &dk,
        d_h.as_deref_mut(),
    );
    ctx.projection(
        li,
        2,
        &lw.v,
        &rec.h,
        &rec.lora_u[2],
        &dv,
        d_h.as_deref_mut(),
    );
    if let Some(d_h) = d_h {
        ops::rms_norm_backward(&rec.x, &lw.input_norm, eps, &d_h, &mut d_mid);
    }
    d_mid
}
