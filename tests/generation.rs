//! The generation loop: seeds, stop strings and tokens, callbacks, context limits, cancellation.

use std::path::Path;
use std::sync::mpsc;

use bit_ttt::{
    GenerateParams, KvType, Model, ModelParams, SamplingParams, Session, SessionParams, StopReason,
};

fn model() -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bitnet_packed_auto");
    Model::load(dir, &ModelParams::default()).unwrap()
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

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

const PROMPT: &str = "Once upon a time there was";

#[test]
fn same_seed_same_text_and_streamed_text_equals_result() {
    let m = model();
    let run = |seed| {
        let mut s = session(&m);
        let mut streamed = String::new();
        let p = GenerateParams {
            sampling: SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..Default::default()
            },
            max_tokens: 40,
            ignore_eos: true,
            ..Default::default()
        };
        let r = s
            .generate(PROMPT, &p, |ev| {
                streamed += ev.text;
                true
            })
            .unwrap();
        assert_eq!(streamed, r.text);
        assert_eq!(r.stop_reason, StopReason::MaxTokens);
        r.tokens
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn stop_string_ends_generation_before_it() {
    let m = model();
    let full = session(&m).generate(PROMPT, &greedy(30), |_| true).unwrap();
    // A stop string from the middle of the greedy text.
    let chars: Vec<char> = full.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let mut streamed = String::new();
    let p = GenerateParams {
        stop: vec![stop.clone()],
        ..greedy(30)
    };
    let r = session(&m)
        .generate(PROMPT, &p, |ev| {
            streamed += ev.text;
            true
        })
        .unwrap();
    assert_eq!(r.stop_reason, StopReason::StopString);
    assert_eq!(r.text, full.text[..cut]);
    assert_eq!(streamed, r.text);
    assert!(!streamed.contains(&stop));
}

#[test]
fn stop_tokens_callbacks_and_max_tokens() {
    let m = model();
    let full = session(&m).generate(PROMPT, &greedy(10), |_| true).unwrap();
    assert_eq!(
        (full.tokens.len(), full.stop_reason),
        (10, StopReason::MaxTokens)
    );

    let p = GenerateParams {
        stop_tokens: vec![full.tokens[3]],
        ..greedy(10)
    };
    let r = session(&m).generate(PROMPT, &p, |_| true).unwrap();
    let first = full
        .tokens
        .iter()
        .position(|&t| t == full.tokens[3])
        .unwrap();
    assert_eq!(r.stop_reason, StopReason::StopToken);
    assert_eq!(r.tokens, full.tokens[..=first]);

    let mut calls = 0;
    let r = session(&m)
        .generate(PROMPT, &greedy(10), |_| {
            calls += 1;
            calls < 2
        })
        .unwrap();
    assert_eq!((r.stop_reason, r.tokens.len()), (StopReason::Callback, 2));

    // The model's own EOS ends generation unless ignored.
    let eos = m.stop_tokens()[0];
    let p = GenerateParams {
        stop_tokens: vec![],
        ignore_eos: false,
        ..greedy(10)
    };
    let r = session(&m).generate(PROMPT, &p, |_| true).unwrap();
    assert!(r.stop_reason == StopReason::MaxTokens || r.tokens.last() == Some(&eos));
}

#[test]
fn context_full_is_a_stop_reason() {
    let m = model();
    let n_prompt = m.tokenize(PROMPT, true).unwrap().len();
    let mut s = Session::new(
        &m,
        &SessionParams {
            n_ctx: n_prompt + 3,
            n_batch: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let r = s.generate(PROMPT, &greedy(0), |_| true).unwrap();
    assert_eq!(r.stop_reason, StopReason::ContextFull);
    // Three more positions hold three generated tokens; the fourth is sampled from the last.
    assert_eq!(r.tokens.len(), 4);
}

#[test]
fn generate_continues_the_context_and_reset_forgets_it() {
    let m = model();
    let mut s = session(&m);
    let one = s.generate(PROMPT, &greedy(5), |_| true).unwrap();
    let two = s.generate(" and", &greedy(5), |_| true).unwrap();
    let mut expected = m.tokenize(PROMPT, true).unwrap();
    expected.extend(&one.tokens);
    expected.extend(m.tokenize(" and", false).unwrap());
    expected.extend(&two.tokens);
    assert_eq!(s.tokens(), expected);
    // The same conversation in one go gives the same second answer.
    let mut fresh = session(&m);
    let prefix: Vec<u32> = expected[..expected.len() - two.tokens.len()].to_vec();
    let again = fresh
        .generate_tokens(&prefix, &greedy(5), |_| true)
        .unwrap();
    assert_eq!(again.tokens, two.tokens);
    s.reset();
    assert!(s.tokens().is_empty());
    assert_eq!(
        s.generate(PROMPT, &greedy(5), |_| true).unwrap().tokens,
        one.tokens
    );
}

#[test]
fn score_does_not_touch_the_context() {
    let m = model();
    let mut s = session(&m);
    s.generate(PROMPT, &greedy(3), |_| true).unwrap();
    let before = s.tokens();
    let sc = s.score("The quick brown fox jumps").unwrap();
    assert_eq!(sc.nll.len(), sc.tokens.len() - 1);
    assert!(sc.nll.iter().all(|x| x.is_finite() && *x >= 0.0));
    assert_eq!(s.tokens(), before);
}

#[test]
fn cancel_from_another_thread_stops_within_one_token() {
    let m = model();
    let mut s = session(&m);
    let handle = s.cancel_handle();
    let (to_canceller, started) = mpsc::channel::<()>();
    let (ack, cancelled) = mpsc::channel::<()>();
    let canceller = std::thread::spawn(move || {
        started.recv().unwrap();
        handle.cancel();
        ack.send(()).unwrap();
    });
    let mut n = 0;
    let r = s
        .generate(PROMPT, &greedy(0), |_| {
            n += 1;
            if n == 1 {
                to_canceller.send(()).unwrap();
                cancelled.recv().unwrap();
            }
            true
        })
        .unwrap();
    canceller.join().unwrap();
    assert_eq!(r.stop_reason, StopReason::Cancelled);
    assert_eq!(r.tokens.len(), 1);
}

#[test]
fn saved_state_continues_exactly_and_foreign_state_is_refused() {
    let m = model();
    let mut s = session(&m);
    let sampled = GenerateParams {
        sampling: SamplingParams {
            temperature: 1.0,
            ..Default::default()
        },
        max_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    s.generate(PROMPT, &sampled, |_| true).unwrap();
    let blob = s.save_state();
    let next = s.generate(" and then", &sampled, |_| true).unwrap();

    let mut restored = session(&m);
    restored.load_state(&blob).unwrap();
    assert_eq!(
        restored
            .generate(" and then", &sampled, |_| true)
            .unwrap()
            .tokens,
        next.tokens
    );

    let other_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bitnet_latent_f32");
    let other = Model::load(other_dir, &ModelParams::default()).unwrap();
    let mut foreign = session(&other);
    foreign.generate(PROMPT, &greedy(2), |_| true).unwrap();
    let before = foreign.tokens();
    let err = foreign.load_state(&blob).unwrap_err();
    assert_eq!(err.kind(), bit_ttt::ErrorKind::IncompatibleState, "{err}");
    assert_eq!(foreign.tokens(), before);
    let mut corrupt = blob.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 1;
    assert_eq!(
        restored.load_state(&corrupt).unwrap_err().kind(),
        bit_ttt::ErrorKind::IncompatibleState
    );
}

/// An f16 KV cache: a continuation after a saved state is the same as without the save (the
/// state keeps the cache's values exactly); an f32 session takes the same state too.
#[test]
fn f16_kv_cache_state_round_trips_into_either_cache_type() {
    let m = model();
    let params = |kv_cache| SessionParams {
        n_ctx: 256,
        n_batch: 16,
        kv_cache,
        ..Default::default()
    };
    let mut s = Session::new(&m, &params(KvType::F16)).unwrap();
    s.generate(PROMPT, &greedy(6), |_| true).unwrap();
    let blob = s.save_state();
    let saved = s.tokens();
    let next = s.generate(" and then", &greedy(8), |_| true).unwrap();
    let mut r = Session::new(&m, &params(KvType::F16)).unwrap();
    r.load_state(&blob).unwrap();
    let again = r.generate(" and then", &greedy(8), |_| true).unwrap();
    assert_eq!(again.tokens, next.tokens);
    let mut wide = Session::new(&m, &params(KvType::F32)).unwrap();
    wide.load_state(&blob).unwrap();
    assert_eq!(wide.tokens(), saved);
}

#[test]
fn model_from_memory_equals_model_from_folder() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bitnet_packed_bitlinear");
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::sync::Arc::new(std::fs::read(&p).unwrap()),
            )
        })
        .collect();
    let mem = Model::load_memory(files, &ModelParams::default()).unwrap();
    let disk = Model::load(&dir, &ModelParams::default()).unwrap();
    assert_eq!(mem.fingerprint(), disk.fingerprint());
    let a = session(&mem)
        .generate(PROMPT, &greedy(8), |_| true)
        .unwrap();
    let b = session(&disk)
        .generate(PROMPT, &greedy(8), |_| true)
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
}

#[test]
fn estimate_matches_loaded_sizes() {
    for name in [
        "bitnet_packed_auto",
        "bitnet_latent_bf16",
        "llama_packed_sharded",
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let est = bit_ttt::estimate_memory(&dir, 256, 512).unwrap();
        let info = Model::load(&dir, &ModelParams::default()).unwrap().info();
        let ratio = est.weight_bytes as f64 / info.weight_bytes as f64;
        assert!(
            (0.99..1.01).contains(&ratio),
            "{name}: estimate {} vs loaded {}",
            est.weight_bytes,
            info.weight_bytes
        );
        assert!(est.kv_cache_bytes > 0 && est.total() > est.weight_bytes);
    }
}

#[test]
fn a_prompt_that_starts_with_bos_gets_no_second_one() {
    // A rendered chat template starts with BOS; generate adds BOS to an empty context only when
    // the text does not already hold it.
    let model = model();
    let rendered = model
        .apply_chat_template(
            &[bit_ttt::ChatMessage {
                role: "user".into(),
                content: "Hello".into(),
            }],
            true,
        )
        .unwrap();
    let plain = model.tokenize(&rendered, false).unwrap();
    assert_eq!(
        plain[0],
        model.tokenize("", true).unwrap()[0],
        "template starts with BOS"
    );
    let mut s = Session::new(&model, &SessionParams::default()).unwrap();
    let params = GenerateParams {
        max_tokens: 1,
        ..GenerateParams::default()
    };
    s.generate(&rendered, &params, |_| true).unwrap();
    assert_eq!(&s.tokens()[..plain.len()], &plain[..]);
}
