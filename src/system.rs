//! What this machine and build offer, as `bit-ttt info` and `bit_ttt_system_info` print it: it
//! asks both the CPU kernels and the CUDA backend, so it sits above both.

use crate::error::{Error, Result};
use crate::kernels::{self, Isa, pool};

/// One line per fact: library version, CPU features, kernels available and the default.
pub fn system_info() -> String {
    let default = Isa::select(None).map_or_else(
        |e| format!("error: {e}"),
        |k| format!("{} (weights {})", k.name(), k.packing().name()),
    );
    format!(
        "bit_ttt {}\narch: {}\ncpu features: {}\nternary kernels: {}\nternary kernel: {}\nprompt products on AMX tiles: {}\nthreads available: {}\ncuda: {}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        kernels::cpu_features().join(" "),
        Isa::available()
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" "),
        default,
        kernels::amx_status(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cuda_line(),
    )
}

#[cfg(feature = "cuda")]
fn cuda_line() -> String {
    crate::cuda::describe()
}

#[cfg(not(feature = "cuda"))]
fn cuda_line() -> String {
    "not built (cargo feature `cuda`)".to_string()
}

/// Memory read bandwidth with `threads` threads (0 = all cores), in bytes/s: the best of three
/// sums of a
/// 512 MiB buffer (larger than any cache).
pub fn read_bandwidth(threads: usize) -> Result<f64> {
    let pool =
        pool::Pool::new(threads).map_err(|e| Error::internal(format!("thread pool: {e}")))?;
    let buf: Vec<u64> = (0..(512usize << 20) / 8).map(|i| i as u64).collect();
    Ok((0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            let sum = pool.install(|| {
                pool::map(buf.chunks(1 << 16).collect(), |c| {
                    c.iter().fold(0u64, |s, &x| s.wrapping_add(x))
                })
                .into_iter()
                .fold(0, u64::wrapping_add)
            });
            std::hint::black_box(sum);
            (buf.len() * 8) as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max))
}
