//! CPU compute. `scalar` holds the reference implementation (the oracle) over the Hugging Face
//! layout; `packed` the layout the fast kernels read and the portable kernel over it; `x86`
//! the AVX2 and AVX-512 VNNI kernels, and `amx` the AMX tiles that take the AVX-512 kernel's
//! prompts on Intel CPUs that have them. Every kernel must produce the oracle's int32 accumulators
//! bit for bit. The kernel is chosen once per model at load, by CPU detection, the model
//! params, or the BIT_TTT_KERNEL environment variable. `neon` holds the aarch64 kernels.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
pub mod dense;
pub mod int4;
pub mod int8;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod packed;
pub mod pool;
pub mod scalar;
pub mod transposed;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use crate::error::{Error, Result};
use packed::{PackedTernary, Packing, QuantizedRows};

/// A ternary matrix-product implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Plain Rust over the packed layout: any CPU.
    Portable,
    /// x86-64 AVX2.
    Avx2,
    /// x86-64 AVX-512 with VNNI.
    Avx512Vnni,
    /// aarch64 NEON.
    Neon,
    /// aarch64 NEON with the dot-product extension.
    NeonDot,
}

impl Kernel {
    pub const ALL: [Kernel; 5] = [
        Kernel::Portable,
        Kernel::Avx2,
        Kernel::Avx512Vnni,
        Kernel::Neon,
        Kernel::NeonDot,
    ];

    /// The ternary layout this kernel reads fastest: base-3 (1.6 bits per weight, a fifth fewer
    /// bytes per token) where AVX-512 VBMI looks its digits up in registers, 2-bit elsewhere.
    pub fn packing(self) -> Packing {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni
                if std::arch::is_x86_feature_detected!("avx512vbmi") && !x86::half_width() =>
            {
                Packing::Base3
            }
            _ => Packing::Bits2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::Neon => "neon",
            Kernel::NeonDot => "neondot",
        }
    }

    pub fn parse(name: &str) -> Result<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == name.trim())
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "unknown kernel `{name}` (known: {})",
                    Kernel::ALL.map(Kernel::name).join(", ")
                ))
            })
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512Vnni => false,
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[cfg(not(target_arch = "aarch64"))]
            Kernel::Neon | Kernel::NeonDot => false,
        }
    }

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        *Kernel::available()
            .last()
            .expect("the portable kernel always runs")
    }

    /// The kernel for a new model: `requested`, else BIT_TTT_KERNEL, else the best. A kernel
    /// the CPU cannot run is an error, not a crash.
    pub fn select(requested: Option<Kernel>) -> Result<Kernel> {
        let k = match (requested, std::env::var("BIT_TTT_KERNEL")) {
            (Some(k), _) => k,
            (None, Ok(name)) if !name.is_empty() => Kernel::parse(&name)?,
            _ => Kernel::best(),
        };
        if !k.is_supported() {
            return Err(Error::unsupported(format!(
                "kernel `{}` is not supported by this CPU",
                k.name()
            )));
        }
        Ok(k)
    }

    /// One task's rows: `acc` is row-major `[rows][n_tok]` for rows `r0..`.
    fn run(self, w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
        if w.packing == Packing::Base3 {
            // Only the VBMI kernel reads base-3 fast; a matrix packed so for it runs anywhere.
            #[cfg(target_arch = "x86_64")]
            if self == Kernel::Avx512Vnni && std::arch::is_x86_feature_detected!("avx512vbmi") {
                return x86::gemm_avx512_base3(w, x, r0, acc);
            }
            return packed::gemm_portable(w, x, r0, acc);
        }
        match self {
            Kernel::Portable => packed::gemm_portable(w, x, r0, acc),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::gemm_avx2(w, x, r0, acc),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::gemm_avx512_vnni(w, x, r0, acc),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => neon::gemm_neon(w, x, r0, acc),
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => neon::gemm_dotprod(w, x, r0, acc),
            #[allow(unreachable_patterns)]
            _ => unreachable!("select() refuses kernels this CPU cannot run"),
        }
    }

    /// `acc[r][t] = Σ_c T[r][c] · q[t][c]` (row-major `[rows][n_tok]`), rows split across the
    /// current pool.
    pub fn ternary_gemm(self, w: &PackedTernary, x: &QuantizedRows, acc: &mut [i32]) {
        self.ternary_gemm_many(&[w], x, &mut [acc]);
    }

    /// `ternary_gemm` of several matrices that read the same input (Q/K/V, gate/up), as one
    /// parallel job: one hand-off between threads instead of one per matrix.
    pub fn ternary_gemm_many(
        self,
        ws: &[&PackedTernary],
        x: &QuantizedRows,
        accs: &mut [&mut [i32]],
    ) {
        assert_eq!(ws.len(), accs.len(), "ternary_gemm_many: outputs");
        let mut tasks = Vec::new();
        for (w, acc) in ws.iter().zip(accs.iter_mut()) {
            assert_eq!(acc.len(), w.rows * x.n_tok, "ternary_gemm: output size");
            assert!(
                x.cols == w.cols && x.cols_padded >= w.cols_padded,
                "ternary_gemm: activation width"
            );
            // Decode on several threads is bound by memory: each thread streams one contiguous
            // share of the rows, a run the hardware prefetcher follows. A prompt re-reads each
            // task's rows once per block of tokens: 64 rows (40 KiB of a 2560-wide matrix) stay
            // in L1 meanwhile, and ran prefill 20-26 % faster than 256.
            let per_task = match x.n_tok {
                1 => pool::share(w.rows),
                _ => 64,
            };
            tasks.extend(
                acc.chunks_mut(per_task * x.n_tok)
                    .enumerate()
                    .map(|(i, chunk)| (*w, i * per_task, chunk)),
            );
        }
        #[cfg(target_arch = "x86_64")]
        if self.uses_amx(x.n_tok) {
            let tokens = amx::Tokens::new(x);
            return pool::for_each(tasks, |(w, r0, chunk)| amx::gemm(w, x, &tokens, r0, chunk));
        }
        pool::for_each(tasks, |(w, r0, chunk)| self.run(w, x, r0, chunk));
    }

    /// True where a product of `n_tok` tokens runs on AMX tiles: the AVX-512 kernel's prompts
    /// (16 tokens or more, a whole tile) on a CPU and OS that allow it (`amx::enabled`).
    pub fn uses_amx(self, n_tok: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self == Kernel::Avx512Vnni && n_tok >= 16 && amx::enabled();
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = n_tok;
            false
        }
    }
}

/// True where the plain loops outside the kernels (activation quantisation, RMSNorm) run
/// compiled for AVX-512 (`x86::quantize_activations`, `x86::rms_norm`): the library's x86-64
/// baseline compiles them for SSE2's four lanes. The operations are the same, so are the
/// results, bit for bit.
#[inline]
pub fn vectorised() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `quant::quantize_activations`, compiled for AVX-512 where `vectorised`.
pub fn quantize_activations(x: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if vectorised() {
        // SAFETY: `vectorised` checked AVX-512 F/BW/VL.
        return unsafe { x86::quantize_activations(x, q) };
    }
    crate::quant::quantize_activations_inline(x, q)
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
            "avx512vbmi",
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

/// Whether prompts run on AMX tiles here, in words.
pub fn amx_status() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if amx::enabled() {
        return "yes (with the avx512vnni kernel; BIT_TTT_AMX=0 turns them off)";
    }
    "no"
}
