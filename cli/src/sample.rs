//! Finds the sample model shipped in the repository (`models/sample/`), the model every command
//! uses when no `--model` is given.

use std::path::{Path, PathBuf};

const SAMPLE: &str = "models/sample";

/// Where to look, in order: `BIT_TTT_MODEL`; next to the executable and in its ancestors (a build
/// in `target/release/` finds the repository's `models/sample`, also after the repository folder
/// is moved); the crate's source tree as it was at build time.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("BIT_TTT_MODEL").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
        return out;
    }
    if let Ok(exe) = std::env::current_exe() {
        let exe = exe.canonicalize().unwrap_or(exe);
        for dir in exe.ancestors().skip(1).take(5) {
            out.push(dir.join(SAMPLE));
        }
    }
    out.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(SAMPLE),
    );
    out
}

pub fn sample_model() -> bit_ttt::Result<PathBuf> {
    let candidates = candidates();
    candidates
        .iter()
        .find(|p| p.join("config.json").is_file() || p.is_file())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            bit_ttt::Error::new(
                bit_ttt::ErrorKind::Io,
                format!(
                    "no --model given and the sample model was not found (looked in {}); \
                     pass --model DIR or set BIT_TTT_MODEL",
                    looked.join(", ")
                ),
            )
        })
}
