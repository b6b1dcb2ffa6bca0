//! Random and mutated bytes fed to the loader: it returns an error or a model, never panics or hangs.

use std::fs;
use std::path::Path;

use bit_ttt::{Model, ModelParams};
use proptest::prelude::*;
use tempfile::TempDir;

const FIX: &str = "bitnet_packed_auto";

fn fixture_file(name: &str) -> Vec<u8> {
    fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(FIX)
            .join(name),
    )
    .unwrap()
}

fn folder_with(safetensors: &[u8], config: &[u8]) -> TempDir {
    let tmp = TempDir::new().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(FIX);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    fs::write(tmp.path().join("model.safetensors"), safetensors).unwrap();
    fs::write(tmp.path().join("config.json"), config).unwrap();
    tmp
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_safetensors_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let dir = folder_with(&bytes, &fixture_file("config.json"));
        let loaded = Model::load(dir.path(), &ModelParams { n_threads: 1, ..Default::default() });
        prop_assert!(loaded.is_err());
    }

    #[test]
    fn mutated_safetensors(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
                           cut in proptest::option::of(any::<prop::sample::Index>())) {
        let mut bytes = fixture_file("model.safetensors");
        // Mutations concentrate on the header, where the structure lives.
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (i, b) in edits {
            let at = if b % 2 == 0 { i.index(header) } else { i.index(bytes.len()) };
            bytes[at] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        let dir = folder_with(&bytes, &fixture_file("config.json"));
        let _ = Model::load(dir.path(), &ModelParams { n_threads: 1, ..Default::default() });
    }

    #[test]
    fn mutated_config(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut config = fixture_file("config.json");
        for (i, b) in edits {
            let at = i.index(config.len());
            config[at] = b;
        }
        let dir = folder_with(&fixture_file("model.safetensors"), &config);
        let _ = Model::load(dir.path(), &ModelParams { n_threads: 1, ..Default::default() });
    }
}
