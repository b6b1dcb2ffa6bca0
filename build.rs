//! Writes include/bit_ttt.h from src/ffi/ with cbindgen (configuration in cbindgen.toml), and
//! with the `cuda` feature compiles kernels/*.cu with nvcc into one fatbin that the library embeds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Machine code for these GPUs, plus compute_80 PTX that newer ones JIT-compile.
const CUDA_ARCHS: [&str; 4] = ["80", "86", "89", "90"];

/// nvcc from `NVCC`, else from PATH. None: the kernels are compiled by NVRTC at first use.
fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    let ok = Command::new("nvcc").arg("--version").output();
    ok.is_ok_and(|o| o.status.success())
        .then(|| PathBuf::from("nvcc"))
}

fn compile_cuda(crate_dir: &Path) {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    let Some(nvcc) = find_nvcc() else {
        println!(
            "cargo:warning=cuda feature: nvcc not found (set NVCC or put it on PATH); the kernels will be compiled by NVRTC at first use"
        );
        return;
    };
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("bitnet.fatbin");
    let mut cmd = Command::new(&nvcc);
    cmd.arg("-fatbin")
        .arg("-O3")
        .arg("-std=c++17")
        .arg("-fmad=false");
    for a in CUDA_ARCHS {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    cmd.arg("-gencode=arch=compute_80,code=compute_80");
    cmd.arg(crate_dir.join("kernels/bitnet.cu"))
        .arg("-o")
        .arg(&out);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cuda feature: cannot run {}: {e}", nvcc.display()));
    assert!(
        status.success(),
        "cuda feature: nvcc failed on kernels/bitnet.cu ({status})"
    );
    println!("cargo:rustc-cfg=bit_ttt_cuda_fatbin");
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(bit_ttt_cuda_fatbin)");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        compile_cuda(&dir);
    }
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let v = |k: &str| std::env::var(k).expect("cargo sets the version variables");
    config.after_includes = Some(format!(
        "\n#define BIT_TTT_VERSION_MAJOR {}\n#define BIT_TTT_VERSION_MINOR {}\n#define BIT_TTT_VERSION_PATCH {}\n#define BIT_TTT_VERSION \"{}\"\n\n/** Pass as a string length to mean \"the string is NUL-terminated\". */\n#define BIT_TTT_NUL_TERMINATED SIZE_MAX\n",
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
        v("CARGO_PKG_VERSION"),
    ));
    let header = crate_dir.join("include/bit_ttt.h");
    match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(&header);
        }
        // A broken header must not hide the compiler's own (better) error message.
        Err(e) => println!("cargo:warning=cbindgen could not generate include/bit_ttt.h: {e}"),
    }
}
