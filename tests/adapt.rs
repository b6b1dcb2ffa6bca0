//! `adapt` through the public Rust API on the fixtures: the loss falls, identities hold bit for
//! bit, state round-trips, cancellation and bad parameters.

mod common;
use common::fixture;

use bit_ttt::AdaptParams;
use bit_ttt::ResetParts;
use bit_ttt::{
    ErrorKind, GenerateParams, Model, ModelParams, SamplingParams, Session, SessionParams,
};

const TEXT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time there was a \
little engine that ran on very few bits. It counted minus one, zero and plus one.";

fn model(name: &str) -> Model {
    Model::load(fixture(name), &ModelParams::default()).unwrap()
}

fn session(m: &Model) -> Session {
    Session::new(
        m,
        &SessionParams {
            n_ctx: 256,
            n_batch: 16,
            ..Default::default()
        },
    )
    .unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn params() -> AdaptParams {
    AdaptParams {
        learning_rate: 3e-3,
        chunk_tokens: 32,
        epochs: 3,
        ..AdaptParams::default()
    }
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: n,
        ignore_eos: true,
        ..GenerateParams::default()
    }
}

#[test]
fn adapting_lowers_the_texts_nll() {
    let m = model("bitnet_packed_auto");
    let mut s = session(&m);
    let before = s.eval_nll(TEXT).unwrap();
    let mut losses = Vec::new();
    let p = AdaptParams {
        learning_rate: 1e-2,
        chunk_tokens: 256,
        epochs: 6,
        ..params()
    };
    let r = s
        .adapt(TEXT, &p, |p| {
            losses.push(p.loss);
            true
        })
        .unwrap();
    let after = s.eval_nll(TEXT).unwrap();
    eprintln!(
        "NLL {before:.4} → {after:.4} in {} steps; losses {losses:?}",
        r.steps
    );
    assert_eq!(r.steps, losses.len());
    assert!(after < before * 0.9, "NLL {before} → {after}");
    // One window per epoch here: the loss falls step by step.
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "losses {losses:?}");
    assert!(s.has_adapters());
}

#[test]
fn zero_learning_rate_and_reset_are_exact_identities() {
    let m = model("bitnet_packed_auto");
    let prompt = m.tokenize("Once upon a time", true).unwrap();
    let base = session(&m).eval(&prompt).unwrap();

    let mut s = session(&m);
    let zero = AdaptParams {
        learning_rate: 0.0,
        ..params()
    };
    s.adapt(TEXT, &zero, |_| true).unwrap();
    assert_eq!(bits(&s.eval(&prompt).unwrap()), bits(&base), "lr = 0");

    let mut s = session(&m);
    s.adapt(TEXT, &params(), |_| true).unwrap();
    let adapted = s.eval(&prompt).unwrap();
    assert_ne!(bits(&adapted), bits(&base), "adapting changed nothing");
    s.reset_parts(ResetParts::ADAPTERS | ResetParts::CONTEXT);
    assert!(!s.has_adapters());
    assert_eq!(bits(&s.eval(&prompt).unwrap()), bits(&base), "after reset");
}

#[test]
fn adapting_recomputes_a_stale_context_unless_asked_to_keep_it() {
    let m = model("bitnet_packed_auto");
    let prompt = m.tokenize("She opened the door", true).unwrap();
    let next = m.tokenize(" and", false).unwrap();

    // Context first, then adapt: the next logits must equal a session that adapted first.
    let mut late = session(&m);
    late.eval(&prompt).unwrap();
    late.adapt(TEXT, &params(), |_| true).unwrap();
    let got = late.eval(&next).unwrap();

    let mut early = session(&m);
    early.adapt(TEXT, &params(), |_| true).unwrap();
    early.eval(&prompt).unwrap();
    let want = early.eval(&next).unwrap();
    assert_eq!(bits(&got), bits(&want));

    // keep_kv: the old keys and values stay, so the result differs.
    let mut kept = session(&m);
    kept.eval(&prompt).unwrap();
    let keep = AdaptParams {
        keep_kv: true,
        ..params()
    };
    kept.adapt(TEXT, &keep, |_| true).unwrap();
    assert_ne!(bits(&kept.eval(&next).unwrap()), bits(&want));
}

#[test]
fn saved_state_carries_adapters_and_optimizer() {
    let m = model("bitnet_packed_auto");
    let mut a = session(&m);
    a.adapt(TEXT, &params(), |_| true).unwrap();
    a.generate("The quick", &greedy(3), |_| true).unwrap();
    let blob = a.save_state();
    let want = a.generate(" brown", &greedy(8), |_| true).unwrap();
    // Training continues identically too (same moments, same step count).
    let more = a.adapt(TEXT, &params(), |_| true).unwrap();

    let mut b = session(&m);
    b.load_state(&blob).unwrap();
    assert!(b.has_adapters());
    let got = b.generate(" brown", &greedy(8), |_| true).unwrap();
    assert_eq!(got.tokens, want.tokens);
    let more_b = b.adapt(TEXT, &params(), |_| true).unwrap();
    assert_eq!(more_b.first_loss.to_bits(), more.first_loss.to_bits());
    assert_eq!(more_b.last_loss.to_bits(), more.last_loss.to_bits());

    // Another model's state is refused and leaves the session as it was.
    let other = model("bitnet_packed_bitlinear");
    let mut c = session(&other);
    let err = c.load_state(&blob).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IncompatibleState, "{err}");
    assert!(!c.has_adapters());
}

#[test]
fn cancel_stops_within_one_step() {
    let m = model("bitnet_packed_auto");
    let mut s = session(&m);
    let cancel = s.cancel_handle();
    let mut seen = 0;
    let p = AdaptParams {
        chunk_tokens: 8,
        ..params()
    };
    let err = s
        .adapt(TEXT, &p, |_| {
            seen += 1;
            cancel.cancel();
            true
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(seen, 1, "one step ran after the cancel");
    // The callback's false stops early without an error.
    let r = s.adapt(TEXT, &p, |pr| pr.step < 2).unwrap();
    assert_eq!(r.steps, 2);
}

#[test]
fn bad_parameters_are_named() {
    let m = model("bitnet_packed_auto");
    let mut s = session(&m);
    let cases = [
        AdaptParams {
            rank: 0,
            ..params()
        },
        AdaptParams {
            learning_rate: f32::NAN,
            ..params()
        },
        AdaptParams {
            projections: 0x80,
            ..params()
        },
        AdaptParams {
            chunk_tokens: 1,
            ..params()
        },
        AdaptParams {
            epochs: 0,
            ..params()
        },
        AdaptParams {
            beta2: 1.0,
            ..params()
        },
    ];
    for p in cases {
        let e = s.adapt(TEXT, &p, |_| true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{p:?}: {e}");
    }
    let e = s.adapt("", &params(), |_| true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // Adapters of one shape exist: another rank is refused until they are reset.
    s.adapt(TEXT, &params(), |_| true).unwrap();
    let e = s
        .adapt(
            TEXT,
            &AdaptParams {
                rank: 4,
                ..params()
            },
            |_| true,
        )
        .unwrap_err();
    assert!(e.message().contains("reset the adapters"), "{e}");
    s.reset_parts(ResetParts::ADAPTERS);
    s.adapt(
        TEXT,
        &AdaptParams {
            rank: 4,
            ..params()
        },
        |_| true,
    )
    .unwrap();
}

#[test]
fn windowed_scoring_equals_plain_scoring_when_the_text_fits() {
    let m = model("bitnet_packed_auto");
    let mut s = session(&m);
    let tokens = m.tokenize(TEXT, true).unwrap();
    let plain = s.score_tokens(&tokens).unwrap().nll;
    let wide = s.score_windowed(&tokens, 0, 2 * tokens.len()).unwrap();
    assert_eq!(plain, wide);
    // Narrow windows: every token scored once, from the position asked.
    let narrow = s.score_windowed(&tokens, 10, 16).unwrap();
    assert_eq!(narrow.len(), tokens.len() - 10);
    assert!(narrow.iter().all(|x| x.is_finite() && *x > 0.0));
    // The first window is tokens 2..18 (16 tokens) scoring positions 10..18.
    let sub = s.score_tokens(&tokens[2..18]).unwrap().nll;
    assert_eq!(narrow[..8], sub[7..15]);
    let e = s.score_windowed(&tokens, 0, 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn online_adapt_scores_each_window_before_stepping_and_reads_the_text() {
    let m = model("bitnet_packed_auto");
    let tokens = m.tokenize(TEXT, true).unwrap();
    let chunk = 12;

    // lr = 0: each reported loss is the base model's mean NLL of that window given all text
    // before it, and the context ends exactly as if the text had been a prompt.
    let mut s = session(&m);
    let base = s.score_tokens(&tokens).unwrap().nll;
    s.reset();
    let zero = AdaptParams {
        learning_rate: 0.0,
        chunk_tokens: chunk,
        ..AdaptParams::default()
    };
    let mut losses = Vec::new();
    let r = s
        .adapt_online(TEXT, &zero, |p| {
            losses.push(p.loss);
            true
        })
        .unwrap();
    let windows = bit_ttt::adapt_windows(tokens.len() - 1, chunk);
    assert_eq!(r.steps, windows.len());
    for (w, loss) in windows.iter().zip(&losses) {
        // nll[i] scores token i+1; window w trains on predicting tokens w.start+1..w.end.
        let want = base[w.start..w.end - 1].iter().sum::<f64>() / (w.len() - 1) as f64;
        assert!(
            (f64::from(*loss) - want).abs() < 1e-4 * want.max(1.0),
            "window {w:?}: online loss {loss} vs scored {want}"
        );
    }
    assert_eq!(
        s.tokens(),
        tokens,
        "the text is in the context, the last token unfed"
    );
    let after_online = s.generate_tokens(&[], &greedy(6), |_| true).unwrap().tokens;
    let mut plain = session(&m);
    let after_prompt = plain
        .generate_tokens(&tokens, &greedy(6), |_| true)
        .unwrap()
        .tokens;
    assert_eq!(after_online, after_prompt);

    // lr > 0 on a text read twice: the second reading is predicted better than without adapt.
    let twice = format!("{TEXT} {TEXT}");
    let run = |lr: f32| {
        let mut s = session(&m);
        let mut losses = Vec::new();
        let p = AdaptParams {
            learning_rate: lr,
            chunk_tokens: chunk,
            ..AdaptParams::default()
        };
        s.adapt_online(&twice, &p, |pr| {
            losses.push(pr.loss);
            true
        })
        .unwrap();
        losses[losses.len() / 2..].iter().sum::<f32>()
    };
    let (frozen, learning) = (run(0.0), run(1e-2));
    assert!(
        learning < frozen,
        "second reading: {learning} with adapt vs {frozen} without"
    );
}

#[test]
fn online_adapt_refuses_a_text_longer_than_the_context_and_keeps_the_session() {
    let m = model("bitnet_packed_auto");
    let mut s = Session::new(
        &m,
        &SessionParams {
            n_ctx: 24,
            ..Default::default()
        },
    )
    .unwrap();
    s.generate("The quick", &greedy(2), |_| true).unwrap();
    let before = s.tokens();
    let err = s
        .adapt_online(TEXT, &AdaptParams::default(), |_| true)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ContextFull, "{err}");
    assert_eq!(s.tokens(), before);
    assert!(!s.has_adapters());

    // Cancelled before the first window: nothing read, the pending token kept.
    s.cancel_handle().cancel();
    let err = s
        .adapt_online("a b", &AdaptParams::default(), |_| true)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(s.tokens(), before);
}
