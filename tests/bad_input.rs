//! Bad input gets a clear error that names what is wrong, never a panic.

use std::fs;
use std::path::{Path, PathBuf};

use bit_ttt::{ErrorKind, GenerateParams, Model, ModelParams, Session, SessionParams};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tempfile::TempDir;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A writable copy of a fixture.
fn copy_of(name: &str) -> TempDir {
    let tmp = TempDir::new().unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> bit_ttt::Error {
    match Model::load(dir, &ModelParams::default()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

fn assert_mentions(err: &bit_ttt::Error, kind: ErrorKind, words: &[&str]) {
    assert_eq!(err.kind(), kind, "{err}");
    for w in words {
        assert!(
            err.message().contains(w),
            "error {err:?} does not mention {w:?}"
        );
    }
}

/// Rewrites model.safetensors with `edit` applied to its (name, dtype, shape, bytes) list.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

const FIX: &str = "bitnet_packed_auto";

#[test]
fn missing_folder_and_files() {
    let e = load_err(Path::new("/no/such/model"));
    assert_mentions(&e, ErrorKind::Io, &["/no/such/model"]);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let dir = copy_of(FIX);
        fs::remove_file(dir.path().join(file)).unwrap();
        let e = load_err(dir.path());
        assert_eq!(e.kind(), ErrorKind::Io, "{file}: {e}");
        assert!(
            e.message().contains(file.split('.').next().unwrap()),
            "{file}: {e}"
        );
    }
}

#[test]
fn truncated_safetensors() {
    let dir = copy_of(FIX);
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        fs::write(&path, &bytes[..cut]).unwrap();
        let e = load_err(dir.path());
        assert_mentions(
            &e,
            ErrorKind::InvalidModel,
            &["model.safetensors", "safetensors"],
        );
    }
}

#[test]
fn header_offsets_that_lie() {
    let dir = copy_of(FIX);
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    // Shift the first "data_offsets":[0, …] to start one byte late, same length on disk.
    let lied = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[1,", 1);
    assert_ne!(lied, header, "fixture header has no tensor at offset 0");
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(lied.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    fs::write(&path, out).unwrap();
    let e = load_err(dir.path());
    assert_mentions(&e, ErrorKind::InvalidModel, &["model.safetensors"]);
}

#[test]
fn wrong_shape_and_dtype_name_the_tensor() {
    let dir = copy_of(FIX);
    rewrite(dir.path(), |t| {
        let q = t
            .iter_mut()
            .find(|t| t.0 == "model.layers.1.self_attn.k_proj.weight")
            .unwrap();
        q.2 = vec![q.2[0] * 2, q.2[1] / 2];
    });
    let e = load_err(dir.path());
    assert_mentions(
        &e,
        ErrorKind::InvalidModel,
        &["model.layers.1.self_attn.k_proj.weight", "expected [6, 72]"],
    );

    let dir = copy_of(FIX);
    rewrite(dir.path(), |t| {
        let n = t.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        n.1 = Dtype::U8;
        n.2 = vec![n.3.len()];
    });
    let e = load_err(dir.path());
    assert_mentions(&e, ErrorKind::InvalidModel, &["model.norm.weight"]);
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_of(FIX);
    rewrite(dir.path(), |t| {
        t.retain(|t| t.0 != "model.layers.0.mlp.ffn_sub_norm.weight")
    });
    let e = load_err(dir.path());
    assert_mentions(
        &e,
        ErrorKind::InvalidModel,
        &["model.layers.0.mlp.ffn_sub_norm.weight", "missing"],
    );
}

#[test]
fn invalid_ternary_data_is_named() {
    let dir = copy_of(FIX);
    rewrite(dir.path(), |t| {
        let w = t
            .iter_mut()
            .find(|t| t.0 == "model.layers.0.mlp.up_proj.weight")
            .unwrap();
        w.3[5] = 0xFF; // code 3 is not a ternary value
    });
    let e = load_err(dir.path());
    assert_mentions(
        &e,
        ErrorKind::InvalidModel,
        &["model.layers.0.mlp.up_proj.weight", "code 3"],
    );

    let dir = copy_of("bitnet_ternary_bf16");
    rewrite(dir.path(), |t| {
        let w = t
            .iter_mut()
            .find(|t| t.0 == "model.layers.1.self_attn.o_proj.weight")
            .unwrap();
        w.3[0..2].copy_from_slice(&half::bf16::from_f32(0.37).to_le_bytes());
    });
    let e = load_err(dir.path());
    assert_mentions(
        &e,
        ErrorKind::InvalidModel,
        &["o_proj.weight", "not ternary"],
    );
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let p = dir.join("config.json");
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn bad_configs_are_named() {
    let cases = [
        (
            "\"model_type\": \"bitnet\"",
            "\"model_type\": \"mamba\"",
            ErrorKind::Unsupported,
            "mamba",
        ),
        (
            "\"num_key_value_heads\": 2",
            "\"num_key_value_heads\": 4",
            ErrorKind::InvalidModel,
            "num_key_value_heads",
        ),
        (
            "\"hidden_size\": 72",
            "\"hidden_size\": 0",
            ErrorKind::InvalidModel,
            "hidden_size",
        ),
        (
            "\"linear_class\": \"autobitlinear\"",
            "\"linear_class\": \"fancy\"",
            ErrorKind::Unsupported,
            "fancy",
        ),
        ("{", "{{", ErrorKind::InvalidModel, "config.json"),
    ];
    for (from, to, kind, word) in cases {
        let dir = copy_of(FIX);
        edit_config(dir.path(), from, to);
        let e = load_err(dir.path());
        assert_mentions(&e, kind, &[word]);
    }
}

#[test]
fn prompt_longer_than_context() {
    let model = Model::load(fixture(FIX), &ModelParams::default()).unwrap();
    let mut s = Session::new(
        &model,
        &SessionParams {
            n_ctx: 8,
            n_batch: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let e = s
        .generate(
            "a b c d e f g h i j k l m n o p",
            &GenerateParams::default(),
            |_| true,
        )
        .unwrap_err();
    assert_mentions(&e, ErrorKind::ContextFull, &["does not fit"]);
    // The session is still usable.
    let r = s
        .generate(
            "a",
            &GenerateParams {
                max_tokens: 2,
                ..Default::default()
            },
            |_| true,
        )
        .unwrap();
    assert_eq!(r.tokens.len(), 2);
}

#[test]
fn absurd_parameters_are_rejected() {
    let model = Model::load(fixture(FIX), &ModelParams::default()).unwrap();
    assert_eq!(
        Session::new(
            &model,
            &SessionParams {
                n_ctx: 1 << 30,
                n_batch: 4,
                ..Default::default()
            }
        )
        .err()
        .unwrap()
        .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        Session::new(
            &model,
            &SessionParams {
                n_ctx: 16,
                n_batch: 0,
                ..Default::default()
            }
        )
        .err()
        .unwrap()
        .kind(),
        ErrorKind::InvalidArgument
    );
    let mut s = Session::new(&model, &SessionParams::default()).unwrap();
    let mut p = GenerateParams::default();
    p.sampling.top_p = 2.0;
    let e = s.generate("hi", &p, |_| true).unwrap_err();
    assert_mentions(&e, ErrorKind::InvalidArgument, &["top_p"]);
    let e = s
        .generate_tokens(&[1_000_000], &GenerateParams::default(), |_| true)
        .unwrap_err();
    assert_mentions(&e, ErrorKind::InvalidArgument, &["1000000"]);
}
