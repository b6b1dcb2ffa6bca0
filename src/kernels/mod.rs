//! CPU compute. `scalar` is the reference implementation (the oracle): every faster kernel must
//! produce the same int32 accumulators bit for bit.

pub mod scalar;

/// Name of the ternary kernel in use.
pub fn kernel_name() -> &'static str {
    "scalar"
}

/// SIMD features of this CPU that matter to the kernels.
pub fn cpu_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$( if std::arch::is_x86_feature_detected!($name) { f.push($name); } )*};
        }
        probe!(
            "sse4.1",
            "avx2",
            "fma",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avxvnni",
            "avx512bf16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$( if std::arch::is_aarch64_feature_detected!($name) { f.push($name); } )*};
        }
        probe!("neon", "dotprod", "i8mm", "sve");
    }
    f
}

/// One line per fact: library version, CPU features, kernel chosen.
pub fn system_info() -> String {
    format!(
        "bit_ttt {}\narch: {}\ncpu features: {}\nternary kernel: {}\nthreads available: {}\ncuda: not built\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        cpu_features().join(" "),
        kernel_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
}
