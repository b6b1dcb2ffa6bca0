//! What the int8 output head costs in accuracy, on every fixture: top-1 agreement with the
//! native head, and the change in NLL against transformers' reference. The bounds are set from
//! the measured values (printed) with headroom, so a broken int8 path fails.

mod common;
use common::{FIXTURES, fixture};

use std::path::Path;

use bit_ttt::{Model, ModelParams, Session, SessionParams};
use serde_json::Value;

fn session(dir: &Path, int8_head: bool) -> Session {
    let model = Model::load(
        dir,
        &ModelParams {
            head: if int8_head {
                bit_ttt::HeadFormat::Int8
            } else {
                bit_ttt::HeadFormat::Native
            },
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

#[test]
fn int8_head_accuracy_cost() {
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
        let (mut native, mut int8) = (session(&dir, false), session(&dir, true));
        let vocab = native.model().config().vocab_size;
        let a = native.eval(&ids).unwrap();
        let b = int8.eval(&ids).unwrap();
        let (mut ag, mut n) = (0, 0);
        for (x, y) in a.chunks(vocab).zip(b.chunks(vocab)) {
            n += 1;
            ag += usize::from(bit_ttt::sampling::argmax(x) == bit_ttt::sampling::argmax(y));
        }
        let theirs: f64 = reference["score"]["nll"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        let nll_native = session(&dir, false).score_tokens(&ids).unwrap().nll_sum();
        let nll_int8 = session(&dir, true).score_tokens(&ids).unwrap().nll_sum();
        let rel = (nll_int8 - theirs).abs() / theirs;
        println!(
            "{name}: top-1 agreement {ag}/{n}; NLL native {nll_native:.4}, int8 {nll_int8:.4}, reference {theirs:.4} (int8 relative error {rel:.2e})"
        );
        agree += ag;
        total += n;
        worst_nll = worst_nll.max(rel);
    }
    let rate = agree as f64 / total as f64;
    println!(
        "int8 head: top-1 agreement {agree}/{total} ({:.1}%), worst NLL relative error {worst_nll:.2e}",
        100.0 * rate
    );
    assert!(rate >= 0.95, "top-1 agreement {rate}");
    assert!(worst_nll < 5e-3, "NLL relative error {worst_nll}");
}
