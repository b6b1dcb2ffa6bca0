//! `bit-ttt convert` files: the same model, bit for bit, loaded without repacking.

mod common;
use common::{FIXTURES, fixture};

use std::path::Path;

use bit_ttt::{ErrorKind, HeadFormat, Model, ModelParams, Session, SessionParams};

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

/// A file in either ternary layout loads on every kernel of this CPU (in place, except base-3
/// rows for a kernel that reads only 2-bit ones fast, which are repacked) with the logits of the model folder on
/// that kernel (the float parts, the head's product among them, differ between kernels);
/// a base-3 file says so in its format, so that a library reading only 2-bit files refuses it
/// by name.
#[test]
fn both_layouts_load_on_every_kernel_with_the_same_logits() {
    use bit_ttt::__internal::kernels::Isa;
    use bit_ttt::__internal::kernels::packed::Packing;
    let tmp = tempfile::TempDir::new().unwrap();
    for name in ["bitnet_packed_auto", "llama_packed_sharded"] {
        let dir = fixture(name);
        let ids = [1u32, 5, 9, 3, 7, 2];
        let params = |kernel| ModelParams {
            kernel: Some(kernel),
            ..Default::default()
        };
        let want: Vec<Vec<f32>> = Isa::available()
            .into_iter()
            .map(|k| logits(&Model::load(&dir, &params(k)).unwrap(), &ids))
            .collect();
        for packing in [Packing::Bits2, Packing::Base3] {
            let out = tmp.path().join(format!("{name}-{}.bttt", packing.name()));
            bit_ttt::convert_with(&dir, &out, HeadFormat::Native, packing).unwrap();
            let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap()[..4096]).to_string();
            let format = match packing {
                Packing::Bits2 => "packed-v1",
                Packing::Base3 => "packed-v2",
            };
            assert!(text.contains(format), "{name} {}: {format}", packing.name());
            for (kernel, want) in Isa::available().into_iter().zip(&want) {
                let m = Model::load(&out, &params(kernel)).unwrap();
                assert_eq!(
                    &logits(&m, &ids),
                    want,
                    "{name}: {} file on {}",
                    packing.name(),
                    kernel.name()
                );
            }
        }
    }
}

/// A file converted with a quantised head: loading it with that head maps the stored copy (no
/// quantisation at load) and gives the logits of quantising at load; any other head still works.
#[test]
fn stored_quantised_heads_equal_heads_quantised_at_load() {
    let tmp = tempfile::TempDir::new().unwrap();
    for name in ["bitnet_packed_auto", "llama_packed_sharded"] {
        let dir = fixture(name);
        let ids = [1u32, 5, 9, 3, 7];
        for head in [HeadFormat::Int8, HeadFormat::Int4] {
            let out = tmp.path().join(format!("{name}-{}.bttt", head.name()));
            bit_ttt::convert_with_head(&dir, &out, head).unwrap();
            let params = |head| ModelParams {
                head,
                ..Default::default()
            };
            let at_load = Model::load(&dir, &params(head)).unwrap();
            let stored = Model::load(&out, &params(head)).unwrap();
            assert_eq!(stored.head_format(), head);
            assert_eq!(
                logits(&stored, &ids),
                logits(&at_load, &ids),
                "{name} {}",
                head.name()
            );
            assert_eq!(stored.fingerprint(), at_load.fingerprint());
            for other in HeadFormat::ALL {
                let m = Model::load(&out, &params(other)).unwrap();
                let plain = Model::load(&dir, &params(other)).unwrap();
                assert_eq!(
                    logits(&m, &ids),
                    logits(&plain, &ids),
                    "{name} {}",
                    other.name()
                );
            }
            // The stored copy is what computes the logits: change it and they change.
            let tensor = format!("bit_ttt.head.{}.values", head.name());
            let changed = tmp.path().join("changed.bttt");
            let mut bytes = std::fs::read(&out).unwrap();
            let at = data_offset(&bytes, &tensor);
            for b in &mut bytes[at..at + 4096] {
                *b ^= 0x11;
            }
            std::fs::write(&changed, bytes).unwrap();
            let m = Model::load(&changed, &params(head)).unwrap();
            assert_ne!(
                logits(&m, &ids),
                logits(&at_load, &ids),
                "{name} {}",
                head.name()
            );
        }
    }
}

/// Where tensor `name`'s bytes start in a safetensors file.
fn data_offset(file: &[u8], name: &str) -> usize {
    let len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + len]).unwrap();
    8 + len + header[name]["data_offsets"][0].as_u64().unwrap() as usize
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

/// Files written before the int4 head's scales became f16 hold them as f32: such a file loads,
/// its scales rounded to f16, and computes what the current file does.
#[test]
fn int4_heads_with_f32_scales_still_load() {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = fixture("bitnet_packed_auto");
    let out = tmp.path().join("int4.bttt");
    bit_ttt::convert_with_head(&dir, &out, HeadFormat::Int4).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let scales = "bit_ttt.head.int4.scales";
    let widened: Vec<u8> = st
        .tensor(scales)
        .unwrap()
        .data()
        .chunks_exact(2)
        .flat_map(|b| {
            half::f16::from_le_bytes([b[0], b[1]])
                .to_f32()
                .to_le_bytes()
        })
        .collect();
    assert_eq!(st.tensor(scales).unwrap().dtype(), Dtype::F16);
    let tensors: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            if name == scales {
                let view = TensorView::new(Dtype::F32, t.shape().to_vec(), &widened).unwrap();
                (name, view)
            } else {
                (name, t)
            }
        })
        .collect();
    let old = tmp.path().join("int4-f32-scales.bttt");
    let written = safetensors::serialize(tensors, meta.metadata().clone()).unwrap();
    std::fs::write(&old, written).unwrap();
    let params = ModelParams {
        head: HeadFormat::Int4,
        ..Default::default()
    };
    let ids = [1u32, 5, 9, 3, 7];
    let current = logits(&Model::load(&out, &params).unwrap(), &ids);
    assert_eq!(logits(&Model::load(&old, &params).unwrap(), &ids), current);
}
