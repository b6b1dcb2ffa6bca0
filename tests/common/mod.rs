//! Shared by the integration tests: the fixture checkpoints (tools/make_fixtures.py).
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};

/// One fixture per checkpoint format the engine loads.
pub const FIXTURES: &[&str] = &[
    "bitnet_packed_auto",
    "bitnet_packed_bitlinear",
    "bitnet_ternary_bf16",
    "bitnet_latent_f32",
    "bitnet_latent_bf16",
    "llama_packed_sharded",
];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The sample model shipped in the repository (tools/train_sample.py).
pub fn sample_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sample")
}

/// Every model with a transformers reference: (name, model folder, reference folder).
pub fn parity_cases() -> Vec<(&'static str, PathBuf, PathBuf)> {
    let mut cases: Vec<_> = FIXTURES
        .iter()
        .map(|&n| (n, fixture(n), fixture(n)))
        .collect();
    cases.push(("sample", sample_model(), fixture("sample_reference")));
    cases
}
