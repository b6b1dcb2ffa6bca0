//! Prompt products on Intel AMX (Sapphire Rapids and later): `tdpbusd` multiplies a 16 × 64
//! tile of unsigned bytes by a 64 × 16 tile of signed bytes into 16 × 16 int32 sums, 16,384
//! multiply-adds per instruction where an AVX-512 `vpdpbusd` does 64. The ternary codes of a
//! task's rows are unpacked to bytes once (the tiles read bytes) and reused by every block of
//! tokens; the tokens' int8 values are laid out once per input in the pairs-of-four order the
//! second operand wants. Same sums as `packed::gemm_portable`, exactly (integer arithmetic).
//!
//! Linux hands AMX state to a process only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`):
//! `enabled` asks once, and says no where the CPU, the kernel or `BIT_TTT_AMX=0` refuses.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::packed::{BLOCK, BLOCK_BYTES, BLOCK3, PackedTernary, Packing, QuantizedRows};
use super::x86::{Tables3, codes3};

/// Columns per tile step (one 64-byte row of the first operand).
const STEP: usize = 64;
/// Rows (and tokens) per tile.
const TILE: usize = 16;

/// True where the AMX path runs: CPU (AMX-TILE, AMX-INT8, and AVX-512 BW/VBMI for unpacking),
/// OS permission, and not turned off by `BIT_TTT_AMX=0`.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("BIT_TTT_AMX").as_deref() == Ok("0") {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let cpu = leaf7.edx & (1 << 24) != 0
            && leaf7.edx & (1 << 25) != 0
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi");
        cpu && request_permission()
    })
}

/// Asks Linux for the AMX tile data state (XFEATURE 18) for this process.
fn request_permission() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes this process's permitted
        // extended state; it reads and writes no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The tokens of an input in the layout of `tdpbusd`'s second operand: for each block of 16
/// tokens (zeros past the last) and each step of 64 columns, 16 rows of 64 bytes, row i
/// holding columns 4i..4i+4 of token 0, then of token 1, ….
pub struct Tokens {
    data: Vec<u8>,
    steps: usize,
    blocks: usize,
}

impl Tokens {
    pub fn new(x: &QuantizedRows) -> Self {
        let steps = x.cols_padded / STEP;
        // Blocks in pairs: each tile step multiplies two blocks of tokens.
        let blocks = x.n_tok.div_ceil(TILE).next_multiple_of(2);
        let mut data = vec![0u8; blocks * steps * TILE * STEP];
        for t in 0..x.n_tok {
            let q = x.token(t);
            let (b, lane) = (t / TILE, t % TILE);
            for s in 0..steps {
                let tile = &mut data[(b * steps + s) * TILE * STEP..][..TILE * STEP];
                for i in 0..TILE {
                    for j in 0..4 {
                        tile[i * STEP + 4 * lane + j] = q[s * STEP + 4 * i + j] as u8;
                    }
                }
            }
        }
        Tokens {
            data,
            steps,
            blocks,
        }
    }
}

/// The 64-byte tile configuration: palette 1, eight tiles of 16 rows × 64 bytes (tmm0..3 the
/// sums of two row tiles × two token tiles, tmm4..5 codes, tmm6..7 tokens).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(STEP as u16).to_le_bytes());
            c[48 + t] = TILE as u8;
        }
        TileConfig(c)
    }
}

thread_local! {
    /// A task's rows unpacked to one code byte per weight (reused between tasks).
    static CODES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One task's rows `r0..` for every token: `acc` is `[rows][n_tok]`, as `gemm_portable`.
pub fn gemm(w: &PackedTernary, x: &QuantizedRows, tokens: &Tokens, r0: usize, acc: &mut [i32]) {
    assert!(enabled(), "AMX kernel where AMX is not enabled");
    assert!(x.cols_padded >= w.cols_padded && tokens.steps * STEP == x.cols_padded);
    let n_tok = x.n_tok;
    let n_rows = acc.len() / n_tok;
    assert!(r0 + n_rows <= w.rows);
    let k = w.cols_padded;
    let rows_pad = n_rows.next_multiple_of(2 * TILE);
    // SAFETY: `enabled` checked AVX-512 (F is implied by BW).
    let tables = (w.packing == Packing::Base3).then(|| unsafe { Tables3::load() });
    CODES.with(|cell| {
        let mut codes = cell.borrow_mut();
        // Every byte of rows ..n_rows is written below; only the padding rows are zeroed
        // (zeroing the whole buffer per task took 7 % of a prompt).
        codes.resize(rows_pad * k, 0);
        codes[n_rows * k..rows_pad * k].fill(0);
        for i in 0..n_rows {
            let row = &w.data[(r0 + i) * w.row_bytes()..][..w.row_bytes()];
            let out = &mut codes[i * k..][..k];
            // SAFETY: `enabled` checked AVX-512 BW and VBMI; `row` holds whole blocks whose
            // codes fill `out` exactly.
            unsafe {
                match &tables {
                    None => unpack_bits2(row, out),
                    Some(t) => unpack_base3(t, row, out),
                }
            }
        }
        // SAFETY: `enabled` checked AMX and the OS permission; the codes hold rows_pad rows of
        // k bytes, the tokens `blocks` blocks of `steps` ≥ k / 64 tiles.
        unsafe { products(&codes, k, rows_pad, tokens, k / STEP, x, acc) };
    });
}

/// 2-bit codes of one row, byte by byte: field f of block byte j is column 64·f + j.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unpack_bits2(row: &[u8], out: &mut [u8]) {
    let mask = _mm512_set1_epi8(3);
    for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        // SAFETY: a whole 64-byte block; out holds BLOCK codes per block.
        unsafe {
            let v = _mm512_loadu_si512(block.as_ptr().cast());
            let o = out.as_mut_ptr().add(b * BLOCK);
            _mm512_storeu_si512(o.cast(), _mm512_and_si512(v, mask));
            _mm512_storeu_si512(
                o.add(64).cast(),
                _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask),
            );
            _mm512_storeu_si512(
                o.add(128).cast(),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
            );
            _mm512_storeu_si512(
                o.add(192).cast(),
                _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask),
            );
        }
    }
}

/// Base-3 codes of one row: digit k of block byte j is column 64·k + j.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn unpack_base3(tables: &Tables3, row: &[u8], out: &mut [u8]) {
    for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        // SAFETY: a whole 64-byte block; out holds BLOCK3 codes per block.
        unsafe {
            let v = _mm512_loadu_si512(block.as_ptr().cast());
            let (neg, abs) = (_mm512_movepi8_mask(v), _mm512_abs_epi8(v));
            for d in 0..5 {
                let c = codes3(abs, neg, tables.lo[d], tables.hi[d]);
                _mm512_storeu_si512(out.as_mut_ptr().add(b * BLOCK3 + 64 * d).cast(), c);
            }
        }
    }
}

/// Σ code·q − Σ q over the tiles: two row tiles by two token tiles at a time.
///
/// # Safety
/// AMX-TILE/INT8 are usable by this thread; `codes` holds `rows_pad` rows of `k` bytes
/// (`rows_pad` a multiple of 32); `tokens` holds its blocks of at least `steps` tiles.
unsafe fn products(
    codes: &[u8],
    k: usize,
    rows_pad: usize,
    tokens: &Tokens,
    steps: usize,
    x: &QuantizedRows,
    acc: &mut [i32],
) {
    let n_tok = x.n_tok;
    let n_rows = acc.len() / n_tok;
    let cfg = TileConfig::new();
    let mut sums = [[0i32; 2 * TILE]; 2 * TILE];
    let tile_bytes = TILE * STEP;
    // SAFETY: the configuration is a valid palette-1 layout (8 tiles of 16 × 64 bytes).
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    for rp in (0..rows_pad).step_by(2 * TILE) {
        for tb in (0..tokens.blocks).step_by(2) {
            // SAFETY: tiles 0..3 are configured.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                )
            };
            for s in 0..steps {
                let a0 = codes[rp * k + s * STEP..].as_ptr();
                let a1 = codes[(rp + TILE) * k + s * STEP..].as_ptr();
                let b0 = tokens.data[(tb * tokens.steps + s) * tile_bytes..].as_ptr();
                let b1 = tokens.data[((tb + 1) * tokens.steps + s) * tile_bytes..].as_ptr();
                // SAFETY: each load reads 16 rows of 64 bytes: rows rp.. and rp+16.. of the
                // codes (stride k) and one 1 KiB tile of each token block, all in bounds.
                unsafe {
                    asm!(
                        "tileloadd tmm4, [{a0} + {ka}*1]",
                        "tileloadd tmm5, [{a1} + {ka}*1]",
                        "tileloadd tmm6, [{b0} + {kb}*1]",
                        "tileloadd tmm7, [{b1} + {kb}*1]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a0 = in(reg) a0,
                        a1 = in(reg) a1,
                        b0 = in(reg) b0,
                        b1 = in(reg) b1,
                        ka = in(reg) k,
                        kb = in(reg) STEP,
                        options(nostack, readonly)
                    )
                };
            }
            let out = sums.as_mut_ptr().cast::<i32>();
            let stride = 2 * TILE * 4;
            // SAFETY: each store writes 16 rows of 64 bytes into its quarter of `sums`
            // (rows of 128 bytes).
            unsafe {
                asm!(
                    "tilestored [{p0} + {st}*1], tmm0",
                    "tilestored [{p1} + {st}*1], tmm1",
                    "tilestored [{p2} + {st}*1], tmm2",
                    "tilestored [{p3} + {st}*1], tmm3",
                    p0 = in(reg) out,
                    p1 = in(reg) out.add(TILE),
                    p2 = in(reg) out.add(TILE * 2 * TILE),
                    p3 = in(reg) out.add(TILE * 2 * TILE + TILE),
                    st = in(reg) stride,
                    options(nostack)
                )
            };
            let (t0, t_end) = (tb * TILE, n_tok.min((tb + 2) * TILE));
            for (r, row) in sums.iter().enumerate().take(n_rows.saturating_sub(rp)) {
                for t in t0..t_end {
                    acc[(rp + r) * n_tok + t] = row[t - t0] - x.sums[t];
                }
            }
        }
    }
    // SAFETY: releases the tile state this function configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::packed::gemm_portable;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// Bit for bit the portable kernel's sums, on sizes that are not multiples of any tile
    /// (rows, columns, tokens) and on extreme activations, both layouts.
    #[test]
    fn amx_equals_the_portable_kernel() {
        if !enabled() {
            eprintln!(
                "AMX not available on this CPU/OS: amx_equals_the_portable_kernel checks nothing here"
            );
            return;
        }
        let mut seed = 7u64;
        for &(rows, cols, n_tok) in &[
            (1, 64, 2),
            (17, 300, 3),
            (64, 2560, 33),
            (45, 1000, 17),
            (96, 1283, 40),
        ] {
            let t: Vec<i8> = (0..rows * cols)
                .map(|_| (lcg(&mut seed) % 3) as i8 - 1)
                .collect();
            let hf = crate::quant::pack_ternary(&t, rows, cols);
            for extreme in [None, Some(127i8), Some(-128), Some(0)] {
                let q: Vec<i8> = (0..n_tok * cols)
                    .map(|_| extreme.unwrap_or((lcg(&mut seed) % 256) as u8 as i8))
                    .collect();
                let x = QuantizedRows::from_int8(&q, n_tok);
                let tokens = Tokens::new(&x);
                for packing in [Packing::Bits2, Packing::Base3] {
                    let w = PackedTernary::from_hf_as(&hf, rows, cols, packing);
                    let mut want = vec![0i32; rows * n_tok];
                    gemm_portable(&w, &x, 0, &mut want);
                    // Two tasks, the second starting at an odd row.
                    let split = rows / 2 + usize::from(rows > 1 && (rows / 2) % 2 == 0);
                    let split = split.min(rows);
                    let mut got = vec![0i32; rows * n_tok];
                    let (a, b) = got.split_at_mut(split * n_tok);
                    if !a.is_empty() {
                        gemm(&w, &x, &tokens, 0, a);
                    }
                    if !b.is_empty() {
                        gemm(&w, &x, &tokens, split, b);
                    }
                    assert_eq!(
                        got, want,
                        "{rows}x{cols}, {n_tok} tokens, {packing:?}, {extreme:?}"
                    );
                }
            }
        }
    }
}
