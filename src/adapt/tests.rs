//! Whole-model checks of `adapt` on the committed fixtures: adapter gradients against finite
//! differences, identity of a fresh adapter and of lr = 0, and the loss falling step by step.

use super::*;
use crate::kernels::Isa;
use crate::loader;
use crate::storage::Source;

fn transformer(name: &str, kernel: Isa) -> Transformer {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let (weights, _) = loader::load_weights(&Source::Dir(dir), Isa::best().packing()).unwrap();
    Transformer::new(
        weights,
        kernel.kernels(),
        crate::transformer::head::HeadFormat::Native,
    )
}

fn tokens(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

/// Mean next-token NLL of `window` after the `prefix` already in `cache`, in f64 from the logits.
fn loss(tf: &Transformer, cache: &KvCache, adapters: &Adapters, window: &[u32]) -> f64 {
    let mut cache = cache.clone();
    let hidden = tf
        .forward_with(&mut cache, window, Some(adapters), None)
        .unwrap();
    let logits = tf.logits(&hidden);
    let vocab = tf.weights.config.vocab_size;
    let m = window.len() - 1;
    (0..m)
        .map(|t| {
            crate::session::neg_log_softmax(&logits[t * vocab..][..vocab], window[t + 1] as usize)
        })
        .sum::<f64>()
        / m as f64
}

fn gradient_check(name: &str) {
    let tf = transformer(name, Isa::Portable).with_float_activations();
    let cfg = tf.weights.config.clone();
    let p = AdaptParams {
        rank: 3,
        alpha: 6.0,
        layers: cfg.num_layers,
        ..AdaptParams::default()
    };
    let mut trainer = Trainer::new(&tf.weights, p.shape(cfg.num_layers), 7);
    // B = 0 would make every ∂/∂A zero: give B random values so both are exercised.
    let mut s = 99u64;
    trainer.adapters.for_each_tensor_mut(|t| {
        for v in t.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v += ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4;
        }
    });
    // A prefix in the cache (constants for the backward pass), then the window.
    let all = tokens(cfg.vocab_size, 11, 5);
    let (prefix, window) = all.split_at(4);
    let mut cache = KvCache::new(&cfg, 64, crate::KvType::F32);
    tf.forward_with(&mut cache, prefix, Some(&trainer.adapters), None)
        .unwrap();
    let base = cache.clone();

    let mut tape = Tape::new(0);
    let hidden = tf
        .forward_with(&mut cache, window, Some(&trainer.adapters), Some(&mut tape))
        .unwrap();
    let mut grads = trainer.adapters.zeros_like();
    let got = backward::window(
        &tf,
        &trainer.adapters,
        &cache,
        &tape,
        &hidden,
        &window[1..],
        &mut grads,
    );
    let want = loss(&tf, &base, &trainer.adapters, window);
    assert!(
        (f64::from(got) - want).abs() < 1e-4 * want.abs(),
        "{name}: loss {got} vs {want}"
    );

    // Finite differences on entries spread over every layer, projection, A and B.
    let mut checked = 0;
    let mut worst = 0.0f64;
    for li in 0..cfg.num_layers {
        for proj in 0..7 {
            for which in 0..2 {
                for k in 0..2 {
                    let g = grads.layers[li][proj].as_ref().unwrap();
                    let t = if which == 0 { &g.a } else { &g.b };
                    let i = (k * 7919 + li * 31 + proj * 17) % t.len();
                    let analytic = f64::from(t[i]);
                    let h = 1e-2f32;
                    let eval = |delta: f32| {
                        let mut a = trainer.adapters.clone();
                        let l = a.layers[li][proj].as_mut().unwrap();
                        let t = if which == 0 { &mut l.a } else { &mut l.b };
                        t[i] += delta;
                        loss(&tf, &base, &a, window)
                    };
                    // Two step sizes: the larger one suffers curvature, the smaller f32
                    // rounding; a right gradient matches at least one of them closely.
                    let numeric =
                        [h, h / 10.0].map(|h| (eval(h) - eval(-h)) / (2.0 * f64::from(h)));
                    let (err, numeric) = numeric
                        .iter()
                        .map(|&n| ((analytic - n).abs(), n))
                        .fold((f64::MAX, 0.0), |a, b| if b.0 < a.0 { b } else { a });
                    worst = worst.max(err / (numeric.abs() + 1e-3));
                    assert!(
                        err <= 0.03 * numeric.abs() + 3e-4,
                        "{name}: layer {li} {} {} [{i}]: analytic {analytic}, numeric {numeric}",
                        crate::transformer::lora::PROJECTIONS[proj],
                        ["A", "B"][which]
                    );
                    checked += 1;
                }
            }
        }
    }
    eprintln!(
        "{name}: {checked} adapter gradients match finite differences (worst rel {worst:.2e})"
    );
}

#[test]
fn adapter_gradients_match_finite_differences_bitnet() {
    // ReLU² GLU, sub-norms, GQA 6/2, tied head.
    gradient_check("bitnet_packed_auto");
}

#[test]
fn adapter_gradients_match_finite_differences_llama() {
    // SiLU GLU, no sub-norms, llama3 RoPE scaling, untied head.
    gradient_check("llama_packed_sharded");
}

#[test]
fn fresh_adapters_and_zero_learning_rate_change_nothing() {
    for kernel in Isa::available() {
        let tf = transformer("bitnet_packed_auto", kernel);
        let cfg = tf.weights.config.clone();
        let text = tokens(cfg.vocab_size, 40, 3);
        let base = {
            let mut c = KvCache::new(&cfg, 64, crate::KvType::F32);
            tf.logits(&tf.forward(&mut c, &text).unwrap())
        };
        let p = AdaptParams {
            learning_rate: 0.0,
            layers: cfg.num_layers,
            ..AdaptParams::default()
        };
        let mut trainer = Trainer::new(&tf.weights, p.shape(cfg.num_layers), 1);
        let with = |a: &Adapters| {
            let mut c = KvCache::new(&cfg, 64, crate::KvType::F32);
            tf.logits(&tf.forward_with(&mut c, &text, Some(a), None).unwrap())
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&with(&trainer.adapters)),
            bits(&base),
            "fresh adapters"
        );
        for _ in 0..3 {
            let mut c = KvCache::new(&cfg, 64, crate::KvType::F32);
            trainer.step(&tf, &mut c, &text[..20], &p).unwrap();
        }
        assert_eq!(
            bits(&with(&trainer.adapters)),
            bits(&base),
            "after lr = 0 steps"
        );
    }
}

#[test]
fn training_lowers_the_loss_step_by_step() {
    let tf = transformer("bitnet_packed_auto", Isa::best());
    let cfg = tf.weights.config.clone();
    let text = tokens(cfg.vocab_size, 48, 11);
    let p = AdaptParams {
        learning_rate: 5e-3,
        ..AdaptParams::default()
    };
    let mut trainer = Trainer::new(&tf.weights, p.shape(cfg.num_layers), 1);
    let mut losses = Vec::new();
    for _ in 0..8 {
        let mut c = KvCache::new(&cfg, 64, crate::KvType::F32);
        losses.push(trainer.step(&tf, &mut c, &text, &p).unwrap().loss);
    }
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "losses do not fall step by step: {losses:?}"
    );
    assert!(losses[7] < losses[0] * 0.9, "losses: {losses:?}");
}

#[test]
fn windows_cover_the_text() {
    assert_eq!(windows(10, 4), vec![0..4, 4..8, 8..10]);
    assert_eq!(windows(9, 4), vec![0..4, 4..9]);
    assert_eq!(windows(1, 4), Vec::<std::ops::Range<usize>>::new());
    assert_eq!(windows(5, 512), vec![0..5]);
}
