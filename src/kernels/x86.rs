//! x86-64 ternary kernels over the layout of `packed`: AVX2 (`vpmaddubsw` + `vpmaddwd`) and
//! AVX-512 VNNI (`vpdpbusd`). Both compute exactly what `packed::gemm_portable` computes.
//! Up to four tokens share each weight load (prefill); decode is the one-token case.

use std::arch::x86_64::*;

use super::packed::{BLOCK, BLOCK_BYTES, PackedTernary, QuantizedRows, TOKEN_BLOCK, for_rows};

/// Σ code·q over one row for N tokens with AVX2.
///
/// # Safety
/// The CPU supports AVX2; `row` points to `blocks * 64` bytes and each `q[t]` to
/// `blocks * 256` int8 values.
#[target_feature(enable = "avx2")]
unsafe fn row_avx2<const N: usize>(row: *const u8, q: [*const i8; N], blocks: usize) -> [i32; N] {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); N];
    for b in 0..blocks {
        for h in 0..2 {
            // SAFETY: within the row's `blocks * 64` bytes (caller's contract).
            let wv = unsafe { _mm256_loadu_si256(row.add(b * BLOCK_BYTES + h * 32).cast()) };
            let c = [
                _mm256_and_si256(wv, mask),
                _mm256_and_si256(_mm256_srli_epi16::<2>(wv), mask),
                _mm256_and_si256(_mm256_srli_epi16::<4>(wv), mask),
                _mm256_and_si256(_mm256_srli_epi16::<6>(wv), mask),
            ];
            for t in 0..N {
                // SAFETY: within the token's `blocks * 256` values (caller's contract).
                let qp = unsafe { q[t].add(b * BLOCK + h * 32) };
                // Codes ≤ 2 and |q| ≤ 128: each i16 lane sums 8 products, at most 2048 in size.
                let mut p = _mm256_setzero_si256();
                for (k, ck) in c.iter().enumerate() {
                    // SAFETY: as above, columns 64·k + h·32 .. +32 of block b.
                    let qv = unsafe { _mm256_loadu_si256(qp.add(64 * k).cast()) };
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(*ck, qv));
                }
                acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p, ones));
            }
        }
    }
    acc.map(|a| {
        let s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    })
}

/// Σ code·q over one row for N tokens with AVX-512 VNNI.
///
/// # Safety
/// The CPU supports AVX-512 F/BW and VNNI; pointers as for `row_avx2`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn row_vnni<const N: usize>(row: *const u8, q: [*const i8; N], blocks: usize) -> [i32; N] {
    let mask = _mm512_set1_epi8(3);
    let mut acc = [_mm512_setzero_si512(); N];
    for b in 0..blocks {
        // SAFETY: within the row's `blocks * 64` bytes (caller's contract).
        let wv = unsafe { _mm512_loadu_si512(row.add(b * BLOCK_BYTES).cast()) };
        let c = [
            _mm512_and_si512(wv, mask),
            _mm512_and_si512(_mm512_srli_epi16::<2>(wv), mask),
            _mm512_and_si512(_mm512_srli_epi16::<4>(wv), mask),
            _mm512_and_si512(_mm512_srli_epi16::<6>(wv), mask),
        ];
        for t in 0..N {
            for (k, ck) in c.iter().enumerate() {
                // SAFETY: columns 64·k .. +64 of block b, within the token's values.
                let qv = unsafe { _mm512_loadu_si512(q[t].add(b * BLOCK + 64 * k).cast()) };
                acc[t] = _mm512_dpbusd_epi32(acc[t], *ck, qv);
            }
        }
    }
    acc.map(|a| _mm512_reduce_add_epi32(a))
}

/// AVX2 kernel; same contract as `packed::gemm_portable`.
pub fn gemm_avx2(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
    assert!(
        std::arch::is_x86_feature_detected!("avx2"),
        "AVX2 kernel on a CPU without AVX2"
    );
    assert_eq!(x.cols_padded, w.cols_padded);
    let blocks = w.cols_padded / BLOCK;
    // SAFETY: AVX2 is present (checked above); rows and tokens have `blocks` whole blocks.
    for_rows(
        w,
        x,
        r0,
        acc,
        |r, q| unsafe { row_avx2::<4>(r, q, blocks) },
        |r, q| unsafe { row_avx2::<1>(r, q, blocks) },
    );
}

/// AVX-512 VNNI kernel; same contract as `packed::gemm_portable`.
pub fn gemm_avx512_vnni(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
    assert!(
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw"),
        "AVX-512 VNNI kernel on a CPU without it"
    );
    assert_eq!(x.cols_padded, w.cols_padded);
    let blocks = w.cols_padded / BLOCK;
    if x.n_tok < 4 {
        // Decode: memory-bound, one row at a time.
        // SAFETY: AVX-512 F/BW/VNNI are present (checked above); whole blocks as for AVX2.
        for_rows(
            w,
            x,
            r0,
            acc,
            |r, q| unsafe { row_vnni::<4>(r, q, blocks) },
            |r, q| unsafe { row_vnni::<1>(r, q, blocks) },
        );
        return;
    }
    // Prefill: two rows share each activation load.
    let (rb, n_tok) = (w.row_bytes(), x.n_tok);
    let n_rows = acc.len() / n_tok;
    let row_ptr = |i: usize| w.data[(r0 + i) * rb..(r0 + i + 1) * rb].as_ptr();
    for t0 in (0..n_tok).step_by(TOKEN_BLOCK) {
        let t1 = (t0 + TOKEN_BLOCK).min(n_tok);
        let mut i = 0;
        while i < n_rows {
            let pair = i + 1 < n_rows;
            let mut t = t0;
            while pair && t + 4 <= t1 {
                let q = [0, 1, 2, 3].map(|k| x.token(t + k).as_ptr());
                // SAFETY: as above; both rows and all four tokens hold `blocks` whole blocks.
                let s = unsafe { row_vnni_pair::<4>([row_ptr(i), row_ptr(i + 1)], q, blocks) };
                for (dr, sr) in s.iter().enumerate() {
                    for k in 0..4 {
                        acc[(i + dr) * n_tok + t + k] = sr[k] - x.sums[t + k];
                    }
                }
                t += 4;
            }
            for r in i..(i + 1 + usize::from(pair)) {
                for tt in t..t1 {
                    // SAFETY: as above.
                    let s = unsafe { row_vnni::<1>(row_ptr(r), [x.token(tt).as_ptr()], blocks) };
                    acc[r * n_tok + tt] = s[0] - x.sums[tt];
                }
            }
            i += 2;
        }
    }
}

/// Σ code·q over two rows for N tokens with AVX-512 VNNI: each activation load feeds both rows.
///
/// # Safety
/// As for `row_vnni`, for both rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn row_vnni_pair<const N: usize>(
    rows: [*const u8; 2],
    q: [*const i8; N],
    blocks: usize,
) -> [[i32; N]; 2] {
    let mask = _mm512_set1_epi8(3);
    let mut acc = [[_mm512_setzero_si512(); N]; 2];
    for b in 0..blocks {
        let c = rows.map(|r| {
            // SAFETY: within the row's `blocks * 64` bytes (caller's contract).
            let wv = unsafe { _mm512_loadu_si512(r.add(b * BLOCK_BYTES).cast()) };
            [
                _mm512_and_si512(wv, mask),
                _mm512_and_si512(_mm512_srli_epi16::<2>(wv), mask),
                _mm512_and_si512(_mm512_srli_epi16::<4>(wv), mask),
                _mm512_and_si512(_mm512_srli_epi16::<6>(wv), mask),
            ]
        });
        for t in 0..N {
            for (k, (c0, c1)) in c[0].iter().zip(&c[1]).enumerate() {
                // SAFETY: columns 64·k .. +64 of block b, within the token's values.
                let qv = unsafe { _mm512_loadu_si512(q[t].add(b * BLOCK + 64 * k).cast()) };
                acc[0][t] = _mm512_dpbusd_epi32(acc[0][t], *c0, qv);
                acc[1][t] = _mm512_dpbusd_epi32(acc[1][t], *c1, qv);
            }
        }
    }
    acc.map(|a| a.map(|v| _mm512_reduce_add_epi32(v)))
}
