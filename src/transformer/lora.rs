//! LoRA adapters on the BitLinear projections: y = γ·T·Q8(x)/s + (α/r)·B·(A·x). They belong to a
//! session, never to the shared model. B starts at zero, so a fresh adapter changes nothing
//! (the added term is exactly 0.0).

use std::ops::AddAssign;

use num_traits::Float;

use crate::kernels::scalar;
use crate::rng::Rng;

use super::Weights;

/// Projection names in the order adapters, gradients and saved states list them.
#[cfg(test)]
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
/// Bit mask of all seven projections.
pub const ALL_PROJECTIONS: u32 = 0x7f;

/// One adapter: `a` is `[rank, cols]`, `b` is `[rows, rank]`, fp32 master weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub rows: usize,
    pub cols: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// Which projections of which layers carry adapters, and their rank and α.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterShape {
    pub rank: usize,
    pub alpha: f32,
    /// Adapted layers are `first_layer..num_layers`.
    pub first_layer: usize,
    /// Bit i set: `PROJECTIONS[i]` is adapted.
    pub projections: u32,
}

/// The adapters of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapters {
    pub shape: AdapterShape,
    /// Per layer, per projection (`PROJECTIONS` order); `None` where not adapted.
    pub layers: Vec<[Option<Lora>; 7]>,
}

impl Adapters {
    /// A fresh set: A uniform in ±1/√cols (as PEFT initialises it), B zero.
    pub fn new(weights: &Weights, shape: AdapterShape, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let layers = weights
            .layers
            .iter()
            .enumerate()
            .map(|(li, layer)| {
                let linears = layer.linears();
                std::array::from_fn(|p| {
                    let on = li >= shape.first_layer && shape.projections & (1 << p) != 0;
                    on.then(|| {
                        let (rows, cols) = (linears[p].rows(), linears[p].cols());
                        let bound = 1.0 / (cols as f64).sqrt();
                        let a = (0..shape.rank * cols)
                            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                            .collect();
                        Lora {
                            rows,
                            cols,
                            a,
                            b: vec![0.0; rows * shape.rank],
                        }
                    })
                })
            })
            .collect();
        Self { shape, layers }
    }

    /// The same shapes filled with zeros (gradients, optimiser moments).
    pub fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        z.for_each_tensor_mut(|t| t.fill(0.0));
        z
    }

    /// α / r.
    pub fn scale(&self) -> f32 {
        self.shape.alpha / self.shape.rank as f32
    }

    pub fn get(&self, layer: usize, projection: usize) -> Option<&Lora> {
        self.layers.get(layer)?[projection].as_ref()
    }

    /// Every A and B in a fixed order (layer, projection, A then B).
    pub fn tensors(&self) -> impl Iterator<Item = &[f32]> {
        self.layers
            .iter()
            .flat_map(|l| l.iter().flatten())
            .flat_map(|lora| [lora.a.as_slice(), lora.b.as_slice()])
    }

    pub fn for_each_tensor_mut(&mut self, mut f: impl FnMut(&mut [f32])) {
        for lora in self.layers.iter_mut().flat_map(|l| l.iter_mut().flatten()) {
            f(&mut lora.a);
            f(&mut lora.b);
        }
    }

    /// Number of trainable values.
    pub fn len(&self) -> usize {
        self.tensors().map(<[f32]>::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// f32 for the engine, f64 for the finite-difference tests.
pub trait Real: Float + AddAssign + Send + Sync + 'static {
    fn dot(a: &[Self], b: &[Self]) -> Self;
}

impl Real for f32 {
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        scalar::dot(a, b)
    }
}

impl Real for f64 {
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
}

/// `out[t] += scale · B·(A·x[t])` and returns `u = A·x` `[n, rank]` for the backward pass.
/// `a` is `[rank, cols]`, `b` is `[rows, rank]`.
pub fn lora_forward<F: Real>(
    a: &[F],
    b: &[F],
    rank: usize,
    scale: F,
    x: &[F],
    out: &mut [F],
) -> Vec<F> {
    let cols = a.len() / rank;
    let rows = b.len() / rank;
    let n = x.len() / cols;
    let mut u = vec![F::zero(); n * rank];
    for t in 0..n {
        let xt = &x[t * cols..][..cols];
        for j in 0..rank {
            let aj = &a[j * cols..][..cols];
            u[t * rank + j] = F::dot(aj, xt);
        }
        let ut = &u[t * rank..][..rank];
        for r in 0..rows {
            let br = &b[r * rank..][..rank];
            out[t * rows + r] += scale * F::dot(br, ut);
        }
    }
    u
}
