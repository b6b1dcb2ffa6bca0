//! What the quantised output heads (int8, int4) cost in accuracy on every fixture: top-1
//! agreement with the native head, and the NLL against transformers' reference. The bounds are
//! set from the measured values (printed) with headroom, so a broken path fails. The fixtures
//! are random models with nearly flat predictions, the hardest case for top-1 agreement; the
//! trained sample model's figures are in tests/sample_model.rs.

mod common;
use common::{FIXTURES, fixture};

use std::path::Path;

use bit_ttt::{HeadFormat, Model, ModelParams, Session, SessionParams};
use serde_json::Value;

/// Bounds for int4 from the measured 168/204 (82.4 %) and 1.09e-2, with headroom.
const INT4_AGREEMENT: f64 = 0.75;
const INT4_NLL: f64 = 2e-2;

fn session(dir: &Path, head: HeadFormat) -> Session {
    let model = Model::load(
        dir,
        &ModelParams {
            head,
            ..Default::default()
        },
    )
    .unwrap();
    Session::new(
        &model,
        &SessionParams {
            n_ctx: 256,
            ..Default::default()
        },
    )
    .unwrap()
}

/// (top-1 agreement with the native head, worst NLL relative error against transformers).
fn accuracy_cost(head: HeadFormat) -> (f64, f64) {
    let (mut agree, mut total, mut worst_nll) = (0usize, 0usize, 0.0f64);
    for name in FIXTURES {
        let dir = fixture(name);
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let ids: Vec<u32> = reference["score"]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let (mut native, mut quant) = (session(&dir, HeadFormat::Native), session(&dir, head));
        let vocab = native.model().config().vocab_size;
        let a = native.eval(&ids).unwrap();
        let b = quant.eval(&ids).unwrap();
        let (mut ag, mut n) = (0, 0);
        for (x, y) in a.chunks(vocab).zip(b.chunks(vocab)) {
            n += 1;
            ag += usize::from(
                bit_ttt::__internal::sampling::argmax(x)
                    == bit_ttt::__internal::sampling::argmax(y),
            );
        }
        let theirs: f64 = reference["score"]["nll"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        let nll_native = session(&dir, HeadFormat::Native)
            .score_tokens(&ids)
            .unwrap()
            .nll_sum();
        let nll = session(&dir, head).score_tokens(&ids).unwrap().nll_sum();
        let rel = (nll - theirs).abs() / theirs;
        println!(
            "{name}: {} top-1 agreement {ag}/{n}; NLL native {nll_native:.4}, {} {nll:.4}, reference {theirs:.4} (relative error {rel:.2e})",
            head.name(),
            head.name()
        );
        agree += ag;
        total += n;
        worst_nll = worst_nll.max(rel);
    }
    let rate = agree as f64 / total as f64;
    println!(
        "{} head: top-1 agreement {agree}/{total} ({:.1}%), worst NLL relative error {worst_nll:.2e}",
        head.name(),
        100.0 * rate
    );
    (rate, worst_nll)
}

#[test]
fn int8_head_accuracy_cost() {
    let (rate, worst_nll) = accuracy_cost(HeadFormat::Int8);
    assert!(rate >= 0.95, "top-1 agreement {rate}");
    assert!(worst_nll < 5e-3, "NLL relative error {worst_nll}");
}

#[test]
fn int4_head_accuracy_cost() {
    let (rate, worst_nll) = accuracy_cost(HeadFormat::Int4);
    assert!(rate >= INT4_AGREEMENT, "top-1 agreement {rate}");
    assert!(worst_nll < INT4_NLL, "NLL relative error {worst_nll}");
}
