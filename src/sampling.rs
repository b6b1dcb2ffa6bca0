//! Choosing the next token from logits: penalties, then top-k, top-p and min-p truncation, then
//! temperature and a draw from a seeded generator (same seed, same tokens). Temperature 0 is
//! greedy. The order follows llama.cpp's default sampler chain.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Sampling settings. Defaults match llama.cpp's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off. Divides positive logits (multiplies negative ones) of recent tokens.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every recent token.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every recent token.
    pub frequency_penalty: f32,
    /// Reseeds the session's generator before this call; `None` continues its stream.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Self::default()
        }
    }

    /// Rejects values that make no sense, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, v: f32, rule: &str| {
            Err(Error::invalid_argument(format!(
                "{name} = {v}: must be {rule}"
            )))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "finite and >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", self.repeat_penalty, "finite and > 0");
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty, "finite");
        }
        if !self.frequency_penalty.is_finite() {
            return bad("frequency_penalty", self.frequency_penalty, "finite");
        }
        Ok(())
    }
}

/// The seed a session starts with unless told otherwise.
pub const DEFAULT_SEED: u64 = 0x5EED;

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Applies repetition, presence and frequency penalties for the last `repeat_last_n` tokens.
pub fn apply_penalties(logits: &mut [f32], p: &SamplingParams, history: &[u32]) {
    if p.repeat_last_n == 0
        || (p.repeat_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0)
    {
        return;
    }
    let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in recent {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &n) in &counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if *l > 0.0 {
            *l /= p.repeat_penalty;
        } else {
            *l *= p.repeat_penalty;
        }
        *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
    }
}

/// Picks the next token. `logits` is modified (penalties applied).
pub fn sample(logits: &mut [f32], p: &SamplingParams, history: &[u32], rng: &mut Rng) -> u32 {
    apply_penalties(logits, p, history);
    if p.temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    // Candidates sorted by logit, best first, lower id first on ties. With top-k, the k best
    // are selected first and only they sorted: the same list as a full sort cut to k.
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, candidate_order);
        cand.truncate(p.top_k);
    }
    cand.sort_by(candidate_order);
    sample_candidates(cand, p, rng)
}

/// Best first: higher logit (`f32::total_cmp`), then lower id.
fn candidate_order(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// How many best candidates `sample_candidates` needs to pick exactly what `sample` would pick
/// from the whole row: 1 for greedy, top_k with top-k on; None when it needs the whole row
/// (no top-k, or penalties, which change logits outside any fixed set of candidates).
pub fn candidates_needed(p: &SamplingParams) -> Option<usize> {
    let penalties = p.repeat_last_n > 0
        && (p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0);
    if penalties {
        None
    } else if p.temperature <= 0.0 {
        Some(1)
    } else if p.top_k > 0 {
        Some(p.top_k)
    } else {
        None
    }
}

/// Picks the next token from the best candidates of a row, sorted best first, lower id first on
/// ties, at least `candidates_needed(p)` of them (or the whole row); no penalties applied.
pub fn sample_candidates(mut cand: Vec<(u32, f32)>, p: &SamplingParams, rng: &mut Rng) -> u32 {
    if cand.is_empty() {
        return 0;
    }
    if p.temperature <= 0.0 {
        return cand[0].0;
    }
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    let probs = |c: &[(u32, f32)], temp: f32| -> Vec<f64> {
        let max = f64::from(c[0].1);
        let e: Vec<f64> = c
            .iter()
            .map(|&(_, l)| ((f64::from(l) - max) / f64::from(temp)).exp())
            .collect();
        let sum: f64 = e.iter().sum();
        e.into_iter().map(|x| x / sum).collect()
    };
    if p.top_p < 1.0 {
        let pr = probs(&cand, 1.0);
        let mut cum = 0.0;
        let keep = pr.iter().position(|&x| {
            cum += x;
            cum >= f64::from(p.top_p)
        });
        cand.truncate(keep.map_or(cand.len(), |k| k + 1));
    }
    if p.min_p > 0.0 {
        let pr = probs(&cand, 1.0);
        let floor = pr[0] * f64::from(p.min_p);
        let keep = pr.iter().take_while(|&&x| x >= floor).count().max(1);
        cand.truncate(keep);
    }
    let pr = probs(&cand, p.temperature);
    let mut u = rng.next_f64();
    for (&(id, _), &x) in cand.iter().zip(&pr) {
        if u < x {
            return id;
        }
        u -= x;
    }
    cand.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut l = vec![0.1, 2.0, -1.0, 2.0];
        assert_eq!(
            sample(&mut l, &SamplingParams::greedy(), &[], &mut Rng::new(1)),
            1
        );
    }

    #[test]
    fn same_seed_same_draws() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..20)
                .map(|_| sample(&mut logits.clone(), &p, &[], &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        };
        let mut rng = Rng::new(3);
        for _ in 0..20 {
            assert_eq!(sample(&mut [0.0, 0.5, 0.4], &p, &[], &mut rng), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Probabilities ≈ [0.88, 0.12, 0.00002]: top_p 0.5 keeps only the first.
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..Default::default()
        };
        let mut rng = Rng::new(9);
        for _ in 0..50 {
            assert_eq!(sample(&mut [0.0, -2.0, -10.0], &p, &[], &mut rng), 0);
        }
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            ..Default::default()
        };
        for _ in 0..50 {
            assert_eq!(sample(&mut [0.0, -2.0, -10.0], &p, &[], &mut rng), 0);
        }
    }

    #[test]
    fn penalties_follow_llama_cpp() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let mut l = vec![4.0, -4.0, 1.0];
        apply_penalties(&mut l, &p, &[0, 1, 1]);
        assert_eq!(l, vec![4.0 / 2.0 - 0.25 - 0.5, -8.0 - 0.5 - 0.5, 1.0]);
    }

    #[test]
    fn candidates_give_what_the_whole_row_gives() {
        // Ties and repeated values, so the id order on ties matters.
        let logits: Vec<f32> = (0..300)
            .map(|i| ((i * 37 % 23) as f32 * 0.25).sin())
            .collect();
        let mut sorted: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        sorted.sort_by(candidate_order);
        for (temperature, top_k, top_p, min_p) in [
            (0.0, 0, 1.0, 0.0),
            (0.8, 40, 0.95, 0.05),
            (1.5, 7, 1.0, 0.0),
            (1.0, 100, 0.5, 0.1),
        ] {
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                ..Default::default()
            };
            let k = candidates_needed(&p).unwrap();
            let (mut a, mut b) = (Rng::new(11), Rng::new(11));
            for _ in 0..200 {
                let whole = sample(&mut logits.clone(), &p, &[], &mut a);
                let top = sample_candidates(sorted[..k].to_vec(), &p, &mut b);
                assert_eq!(whole, top, "{p:?}");
            }
        }
        let p = SamplingParams {
            repeat_penalty: 1.1,
            ..Default::default()
        };
        assert_eq!(candidates_needed(&p), None);
        let p = SamplingParams {
            top_k: 0,
            ..Default::default()
        };
        assert_eq!(candidates_needed(&p), None);
    }

    #[test]
    fn validation_names_the_parameter() {
        let p = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().message().contains("top_p"));
        let p = SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().message().contains("temperature"));
    }
}
