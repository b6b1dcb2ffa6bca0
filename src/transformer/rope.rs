//! Rotary position embedding frequencies, including LLaMA 3 frequency scaling.

use crate::config::{Config, RopeScaling};

/// Inverse frequencies for one head (head_dim / 2 of them).
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &Config) -> Self {
        let dim = cfg.head_dim;
        let base = f64::from(cfg.rope_theta);
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| (1.0 / base.powf((2 * i) as f64 / dim as f64)) as f32)
            .collect();
        if let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } = cfg.rope_scaling
        {
            let low_wavelen = original_max_position / low_freq_factor;
            let high_wavelen = original_max_position / high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (original_max_position / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
        Self { inv_freq }
    }

    /// cos and sin of every frequency at `pos`; the angle is formed in f32 as transformers does.
    pub fn cos_sin(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let angle = f64::from(pos as f32 * f);
            *c = angle.cos() as f32;
            *s = angle.sin() as f32;
        }
    }

    /// The inverse frequencies, one per rotated pair.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }
}
