//! AdamW (decoupled weight decay, as PyTorch defines it) with global-norm gradient clipping and
//! an optional pull towards the initial adapter.

use crate::transformer::lora::Adapters;

/// First and second moments and the step count: saved with a session so training resumes.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub m: Adapters,
    pub v: Adapters,
    pub step: u64,
}

/// The optimiser's hyper-parameters for one step.
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Largest global gradient norm; 0 = no clipping.
    pub clip: f32,
    /// Pull λ towards the initial adapter: p −= lr·λ·(p − p₀).
    pub decay_to_init: f32,
}

/// The global L2 norm of all gradients.
pub fn global_norm(grads: &Adapters) -> f64 {
    grads
        .tensors()
        .flat_map(|t| t.iter())
        .map(|&g| f64::from(g) * f64::from(g))
        .sum::<f64>()
        .sqrt()
}

impl AdamW {
    pub fn new(like: &Adapters) -> Self {
        Self {
            m: like.zeros_like(),
            v: like.zeros_like(),
            step: 0,
        }
    }

    /// One step on `params` from `grads` (clipped in place). Returns the norm before clipping.
    pub fn step(
        &mut self,
        params: &mut Adapters,
        grads: &mut Adapters,
        init: &Adapters,
        h: &Hyper,
    ) -> f64 {
        let norm = global_norm(grads);
        if h.clip > 0.0 && norm > f64::from(h.clip) {
            let k = (f64::from(h.clip) / norm) as f32;
            grads.for_each_tensor_mut(|t| t.iter_mut().for_each(|g| *g *= k));
        }
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        let mut grads_it = grads.tensors();
        let mut init_it = init.tensors();
        let mut m_all: Vec<&mut [f32]> = Vec::new();
        let mut v_all: Vec<&mut [f32]> = Vec::new();
        for lora in self
            .m
            .layers
            .iter_mut()
            .flat_map(|l| l.iter_mut().flatten())
        {
            m_all.push(&mut lora.a);
            m_all.push(&mut lora.b);
        }
        for lora in self
            .v
            .layers
            .iter_mut()
            .flat_map(|l| l.iter_mut().flatten())
        {
            v_all.push(&mut lora.a);
            v_all.push(&mut lora.b);
        }
        let mut mi = m_all.into_iter();
        let mut vi = v_all.into_iter();
        params.for_each_tensor_mut(|p| {
            let (g, p0) = (grads_it.next().unwrap(), init_it.next().unwrap());
            let (m, v) = (mi.next().unwrap(), vi.next().unwrap());
            for i in 0..p.len() {
                m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
                v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g[i] * g[i];
                let update = (m[i] / bc1) / ((v[i] / bc2).sqrt() + h.eps);
                p[i] *= 1.0 - h.lr * h.weight_decay;
                p[i] -= h.lr * update;
                if h.decay_to_init != 0.0 {
                    p[i] -= h.lr * h.decay_to_init * (p[i] - p0[i]);
                }
            }
        });
        norm
    }
}
