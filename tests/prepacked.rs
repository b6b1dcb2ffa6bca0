//! `bit-ttt convert` files: the same model, bit for bit, loaded without repacking.

mod common;
use common::{FIXTURES, fixture};

use std::path::Path;

use bit_ttt::{ErrorKind, Model, ModelParams, Session, SessionParams};

fn logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut s = Session::new(
        model,
        &SessionParams {
            n_ctx: 64,
            ..Default::default()
        },
    )
    .unwrap();
    s.eval(ids).unwrap()
}

#[test]
fn converted_files_give_identical_logits_and_share_state() {
    let tmp = tempfile::TempDir::new().unwrap();
    for name in FIXTURES {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let out = tmp.path().join(format!("{name}.bttt"));
        let stats = bit_ttt::convert(&dir, &out).unwrap();
        assert!(stats.tensors > 0 && stats.bytes == std::fs::metadata(&out).unwrap().len());
        let hf = Model::load(&dir, &ModelParams::default()).unwrap();
        let packed = Model::load(&out, &ModelParams::default()).unwrap();
        assert_eq!(hf.fingerprint(), packed.fingerprint(), "{name}");
        assert_eq!(hf.config(), packed.config(), "{name}");
        let ids = hf.tokenize("The quick brown fox jumps over", true).unwrap();
        assert_eq!(
            packed
                .tokenize("The quick brown fox jumps over", true)
                .unwrap(),
            ids
        );
        assert_eq!(logits(&hf, &ids), logits(&packed, &ids), "{name}");
        // A state saved with one form loads into the other.
        let mut a = Session::new(
            &hf,
            &SessionParams {
                n_ctx: 64,
                ..Default::default()
            },
        )
        .unwrap();
        a.eval(&ids).unwrap();
        let mut b = Session::new(
            &packed,
            &SessionParams {
                n_ctx: 64,
                ..Default::default()
            },
        )
        .unwrap();
        b.load_state(&a.save_state()).unwrap();
        assert_eq!(b.tokens(), ids);
    }
}

#[test]
fn foreign_files_are_refused_with_a_reason() {
    let tmp = tempfile::TempDir::new().unwrap();
    // A plain checkpoint file is not a converted model.
    let st = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bitnet_packed_auto/model.safetensors");
    let e = Model::load(&st, &ModelParams::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidModel, "{e}");
    assert!(e.message().contains("bit-ttt convert"), "{e}");
    // Garbage.
    let junk = tmp.path().join("junk.bttt");
    std::fs::write(&junk, b"not a model").unwrap();
    assert_eq!(
        Model::load(&junk, &ModelParams::default())
            .err()
            .unwrap()
            .kind(),
        ErrorKind::InvalidModel
    );
    // A truncated converted file.
    let dir = fixture("bitnet_packed_auto");
    let out = tmp.path().join("m.bttt");
    bit_ttt::convert(&dir, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&out, &bytes[..bytes.len() - 100]).unwrap();
    assert_eq!(
        Model::load(&out, &ModelParams::default())
            .err()
            .unwrap()
            .kind(),
        ErrorKind::InvalidModel
    );
}
