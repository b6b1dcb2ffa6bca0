//! aarch64 ternary kernels over the layout of `packed`: plain NEON (`smull` + `sadalp`) and
//! NEON with the dot-product extension (`sdot`). Same results as `packed::gemm_portable`.

use std::arch::aarch64::*;
use std::arch::asm;

use super::packed::{BLOCK, BLOCK_BYTES, PackedTernary, Packing, QuantizedRows, for_rows};

/// The four code vectors of a 16-byte quarter block: columns 64·k + (0..16) for k = 0..3.
///
/// # Safety
/// The CPU supports NEON; `p` points to 16 readable bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn codes(p: *const u8) -> [int8x16_t; 4] {
    // SAFETY: 16 readable bytes (caller's contract).
    let wv = unsafe { vld1q_u8(p) };
    let mask = vdupq_n_u8(3);
    [
        vreinterpretq_s8_u8(vandq_u8(wv, mask)),
        vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(wv), mask)),
        vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(wv), mask)),
        vreinterpretq_s8_u8(vshrq_n_u8::<6>(wv)),
    ]
}

/// Σ code·q over one row for N tokens with plain NEON.
///
/// # Safety
/// The CPU supports NEON; `row` points to `blocks * 64` bytes and each `q[t]` to
/// `blocks * 256` int8 values.
#[target_feature(enable = "neon")]
unsafe fn row_neon<const N: usize>(row: *const u8, q: [*const i8; N], blocks: usize) -> [i32; N] {
    let mut acc = [vdupq_n_s32(0); N];
    for b in 0..blocks {
        for h in 0..4 {
            // SAFETY: quarter h of block b lies within the row.
            let c = unsafe { codes(row.add(b * BLOCK_BYTES + h * 16)) };
            for t in 0..N {
                for (k, ck) in c.iter().enumerate() {
                    // SAFETY: columns 64·k + 16·h .. +16 of block b, within the token's values.
                    let qv = unsafe { vld1q_s8(q[t].add(b * BLOCK + 64 * k + 16 * h)) };
                    // |code·q| ≤ 256 per i16 lane, pairwise added into i32.
                    acc[t] = vpadalq_s16(acc[t], vmull_s8(vget_low_s8(*ck), vget_low_s8(qv)));
                    acc[t] = vpadalq_s16(acc[t], vmull_high_s8(*ck, qv));
                }
            }
        }
    }
    acc.map(|a| vaddvq_s32(a))
}

/// `acc += a · b` on groups of four int8 lanes (the `sdot` instruction).
///
/// # Safety
/// The CPU supports the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    // SAFETY: `sdot` only reads and writes the named vector registers.
    unsafe {
        asm!("sdot {r:v}.4s, {a:v}.16b, {b:v}.16b", r = inout(vreg) r, a = in(vreg) a, b = in(vreg) b,
             options(pure, nomem, nostack));
    }
    r
}

/// Σ code·q over one row for N tokens with NEON `sdot`.
///
/// # Safety
/// The CPU supports NEON and dotprod; pointers as for `row_neon`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn row_dotprod<const N: usize>(
    row: *const u8,
    q: [*const i8; N],
    blocks: usize,
) -> [i32; N] {
    let mut acc = [vdupq_n_s32(0); N];
    for b in 0..blocks {
        for h in 0..4 {
            // SAFETY: quarter h of block b lies within the row.
            let c = unsafe { codes(row.add(b * BLOCK_BYTES + h * 16)) };
            for t in 0..N {
                for (k, ck) in c.iter().enumerate() {
                    // SAFETY: as in `row_neon`; dotprod is enabled for this function.
                    acc[t] = unsafe {
                        sdot(acc[t], *ck, vld1q_s8(q[t].add(b * BLOCK + 64 * k + 16 * h)))
                    };
                }
            }
        }
    }
    acc.map(|a| vaddvq_s32(a))
}

/// NEON kernel; same contract as `packed::gemm_portable`.
///
/// # Safety
/// The CPU has NEON (the dispatch table holds this function only there).
pub(super) unsafe fn gemm_neon(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
    debug_assert!(
        std::arch::is_aarch64_feature_detected!("neon"),
        "NEON kernel on a CPU without NEON"
    );
    assert!(x.cols_padded >= w.cols_padded && w.packing == Packing::Bits2);
    let blocks = w.cols_padded / BLOCK;
    // SAFETY: NEON is present (the caller's contract); rows and tokens have `blocks` whole blocks.
    for_rows(
        w,
        x,
        r0,
        acc,
        |r, q| unsafe { row_neon::<4>(r, q, blocks) },
        // SAFETY: as for the four-token rows above, one token.
        |r, q| unsafe { row_neon::<1>(r, q, blocks) },
    );
}

/// NEON dot-product kernel; same contract as `packed::gemm_portable`.
///
/// # Safety
/// The CPU has NEON and dotprod (the dispatch table holds this function only there).
pub(super) unsafe fn gemm_dotprod(
    w: &PackedTernary,
    x: &QuantizedRows,
    r0: usize,
    acc: &mut [i32],
) {
    debug_assert!(
        std::arch::is_aarch64_feature_detected!("dotprod"),
        "dotprod kernel on a CPU without it"
    );
    assert!(x.cols_padded >= w.cols_padded && w.packing == Packing::Bits2);
    let blocks = w.cols_padded / BLOCK;
    // SAFETY: NEON and dotprod are present (the caller's contract); whole blocks as for NEON.
    for_rows(
        w,
        x,
        r0,
        acc,
        |r, q| unsafe { row_dotprod::<4>(r, q, blocks) },
        // SAFETY: as for the four-token rows above, one token.
        |r, q| unsafe { row_dotprod::<1>(r, q, blocks) },
    );
}
