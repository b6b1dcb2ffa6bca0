//! CPU compute. `scalar` holds the reference implementation (the oracle) over the Hugging Face
//! layout; `packed` the layout the fast kernels read and the portable kernel over it; `x86`
//! the AVX2 and AVX-512 VNNI kernels, and `amx` the AMX tiles that take the AVX-512 kernel's
//! prompts on Intel CPUs that have them; `neon` the aarch64 kernels. Every kernel must produce
//! the oracle's results bit for bit.
//!
//! Which function runs is said in one place: a model picks an instruction set (`Isa`) once at
//! load (CPU detection, the model params, or BIT_TTT_KERNEL), and `dispatch` builds that ISA's
//! `Kernels` table, which names the function of every operation. Callers pass the table.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
pub mod dense;
mod dispatch;
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

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::storage::DType;
use int4::{Int4Input, Int4Matrix};
use packed::{PackedTernary, Packing, QuantizedRows};

/// The instruction set the kernels run with (each has a `Kernels` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
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

impl Isa {
    pub const ALL: [Isa; 5] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::NeonDot,
    ];

    /// The ternary layout this ISA reads fastest on this CPU: base-3 (1.6 bits per weight, a
    /// fifth fewer bytes per token) where AVX-512 VBMI looks its digits up in registers at full
    /// width, 2-bit elsewhere.
    pub fn packing(self) -> Packing {
        self.kernels().packing
    }

    /// This ISA's table of functions.
    pub fn kernels(self) -> &'static Kernels {
        Kernels::of(self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDot => "neondot",
        }
    }

    pub fn parse(name: &str) -> Result<Isa> {
        Isa::ALL
            .into_iter()
            .find(|k| k.name() == name.trim())
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "unknown kernel `{name}` (known: {})",
                    Isa::ALL.map(Isa::name).join(", ")
                ))
            })
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni => false,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Neon | Isa::NeonDot => false,
        }
    }

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|k| k.is_supported()).collect()
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Isa {
        *Isa::available()
            .last()
            .expect("the portable kernel always runs")
    }

    /// The kernel for a new model: `requested`, else BIT_TTT_KERNEL, else the best. A kernel
    /// the CPU cannot run is an error, not a crash.
    pub fn select(requested: Option<Isa>) -> Result<Isa> {
        let k = match (requested, std::env::var("BIT_TTT_KERNEL")) {
            (Some(k), _) => k,
            (None, Ok(name)) if !name.is_empty() => Isa::parse(&name)?,
            _ => Isa::best(),
        };
        if !k.is_supported() {
            return Err(Error::unsupported(format!(
                "kernel `{}` is not supported by this CPU",
                k.name()
            )));
        }
        Ok(k)
    }
}

/// One task's rows of a ternary product: `acc` is row-major `[rows][n_tok]` for rows `r0..`.
pub type TernaryRows = fn(&PackedTernary, &QuantizedRows, usize, &mut [i32]);
/// One tile of the transposed product (`transposed`): tokens from `t0`, column block `b`.
pub type TransposedTile = fn(&PackedTernary, &[f32], usize, usize, &mut [f32]);
/// `attention::scores` over keys stored as `T`.
pub type Scores<T> = fn(&[f32], usize, &[T], f32, &mut [f32]);
/// `attention::weighted_sum_columns` over values stored as `T`: (p, v, (d, w), out).
pub type Values<T> = fn(&[f32], &[T], (usize, usize), &mut [f32]);

/// Per-token int8 quantisation: writes q, returns the scale.
pub type Quantize = fn(&[f32], &mut [i8]) -> f32;
/// RMSNorm of one row: (x, weight, eps, out).
pub type RmsNorm = fn(&[f32], &[f32], f32, &mut [f32]);
/// A stored float row · f32 values.
pub type DenseDot = fn(DType, &[u8], &[f32]) -> f32;
/// Exact int32 dot product of two int8 rows.
pub type Int8Dot = fn(&[i8], &[i8]) -> i32;
/// One int4 row · an input.
pub type Int4Dot = fn(&Int4Matrix, usize, &Int4Input) -> f32;
/// A task's int4 rows: (matrix, input, first row, scale, out).
pub type Int4Rows = fn(&Int4Matrix, &Int4Input, usize, f32, &mut [f32]);

/// A function and the name `bit-ttt info` shows for it.
#[derive(Clone, Copy)]
pub struct Op<F> {
    pub name: &'static str,
    pub run: F,
}

/// The function of every CPU operation, for one instruction set.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub isa: Isa,
    /// The ternary layout the products read fastest on this CPU.
    pub packing: Packing,
    /// Ternary products over 2-bit and base-3 weights.
    pub ternary_bits2: Op<TernaryRows>,
    pub ternary_base3: Op<TernaryRows>,
    /// Products of 16 tokens or more on AMX tiles instead (Intel, where Linux grants them).
    pub ternary_amx: bool,
    /// The transposed product's tile (the backward pass of `adapt`).
    pub transposed_tile: Op<TransposedTile>,
    /// Per-token int8 quantisation of activations (`quant::quantize_activations`).
    pub quantize: Op<Quantize>,
    pub rms_norm: Op<RmsNorm>,
    pub softmax: Op<fn(&mut [f32])>,
    /// Attention over an f32 and an f16 KV cache.
    pub scores_f32: Op<Scores<f32>>,
    pub scores_f16: Op<Scores<half::f16>>,
    pub values_f32: Op<Values<f32>>,
    pub values_f16: Op<Values<half::f16>>,
    /// A float row (f32/bf16/f16) · f32 values: the native output head, dense projections.
    pub dense_dot: Op<DenseDot>,
    /// int8 head: exact int32 dot product of two int8 rows (lengths multiples of 64).
    pub int8_dot: Op<Int8Dot>,
    /// int4 head: one row, and a task's rows (`out[k] = (W[r0 + k] · x) · inv`).
    pub int4_dot: Op<Int4Dot>,
    pub int4_rows: Op<Int4Rows>,
}

impl Kernels {
    /// The table for `isa`, built on first use. The caller has checked `isa.is_supported()`
    /// (`Isa::select` does); an unsupported ISA gets the portable table, never a crash.
    pub fn of(isa: Isa) -> &'static Kernels {
        static TABLES: [OnceLock<Kernels>; Isa::ALL.len()] =
            [const { OnceLock::new() }; Isa::ALL.len()];
        let i = Isa::ALL.iter().position(|&k| k == isa).expect("in ALL");
        TABLES[i].get_or_init(|| {
            if isa.is_supported() {
                dispatch::build(isa)
            } else {
                dispatch::build(Isa::Portable)
            }
        })
    }

    /// The table of the fastest ISA this CPU runs: for work outside a model (convert, load-time
    /// quantisation of a head).
    pub fn best() -> &'static Kernels {
        Kernels::of(Isa::best())
    }

    /// `acc[r][t] = Σ_c T[r][c] · q[t][c]` (row-major `[rows][n_tok]`), rows split across the
    /// current pool.
    pub fn ternary_gemm(&self, w: &PackedTernary, x: &QuantizedRows, acc: &mut [i32]) {
        self.ternary_gemm_many(&[w], x, &mut [acc]);
    }

    /// `ternary_gemm` of several matrices that read the same input (Q/K/V, gate/up), as one
    /// parallel job: one hand-off between threads instead of one per matrix.
    pub fn ternary_gemm_many(
        &self,
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
        pool::for_each(tasks, |(w, r0, chunk)| {
            self.ternary_rows(w)(w, x, r0, chunk)
        });
    }

    /// True where a product of `n_tok` tokens runs on AMX tiles: prompts (16 tokens or more, a
    /// whole tile) where the table says AMX (`amx::enabled`, the AVX-512 ISA).
    pub fn uses_amx(&self, n_tok: usize) -> bool {
        self.ternary_amx && n_tok >= 16
    }

    /// The ternary product's rows for `w`'s layout.
    pub fn ternary_rows(&self, w: &PackedTernary) -> TernaryRows {
        match w.packing {
            Packing::Bits2 => self.ternary_bits2.run,
            Packing::Base3 => self.ternary_base3.run,
        }
    }

    /// (operation, function) for every entry, as `bit-ttt info` prints them.
    pub fn describe(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("ternary 2-bit", self.ternary_bits2.name),
            ("ternary base-3", self.ternary_base3.name),
            (
                "ternary prompts (16+ tokens)",
                if self.ternary_amx {
                    "amx::gemm"
                } else {
                    "as above"
                },
            ),
            ("ternary transposed", self.transposed_tile.name),
            ("quantize activations", self.quantize.name),
            ("rms_norm", self.rms_norm.name),
            ("softmax", self.softmax.name),
            ("attention scores f32", self.scores_f32.name),
            ("attention scores f16", self.scores_f16.name),
            ("attention values f32", self.values_f32.name),
            ("attention values f16", self.values_f16.name),
            ("dense dot", self.dense_dot.name),
            ("int8 head dot", self.int8_dot.name),
            ("int4 head dot", self.int4_dot.name),
            ("int4 head rows", self.int4_rows.name),
        ]
    }
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
