//! Writes include/bit_ttt.h from src/ffi/ with cbindgen (configuration in cbindgen.toml).

use std::path::PathBuf;

fn main() {
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
