//! x86-64 ternary kernels over the layout of `packed`: AVX2 (`vpmaddubsw` + `vpmaddwd`) and
//! AVX-512 VNNI (`vpdpbusd`). Both compute exactly what `packed::gemm_portable` computes.
//! Up to four tokens share each weight load (prefill); decode is the one-token case.

use std::arch::x86_64::*;

use super::packed::{
    BLOCK, BLOCK_BYTES, BLOCK3, DIGITS, PackedTernary, Packing, QuantizedRows, TOKEN_BLOCK,
    for_rows,
};

/// True where AVX-512 runs in 256-bit halves (AMD Zen 4, CPU family 0x19; Zen 3 of the same
/// family has no AVX-512): there the AVX-512 kernel reads 2-bit weights. Measured on a 2-core
/// Zen 4 (docs/BENCHMARKS.md, 2026-12-04): base-3 prefills ~20 % slower than 2-bit (each
/// `vpermi2b` takes two passes) and decodes no faster (its digit lookups, not memory, bound
/// it there). On full-width AVX-512 (Zen 5) base-3 was the faster. `BIT_TTT_AVX512_HALF=0|1`
/// overrides the detection (tests run the kernels both ways on one machine).
pub fn half_width() -> bool {
    static HALF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HALF.get_or_init(|| match std::env::var("BIT_TTT_AVX512_HALF").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => {
            let (v, f) = (__cpuid(0), __cpuid(1));
            let amd = (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
            let base = (f.eax >> 8) & 0xf;
            let family = if base == 0xf {
                base + ((f.eax >> 20) & 0xff)
            } else {
                base
            };
            amd && family == 0x19
        }
    })
}

/// `quant::quantize_activations` compiled for AVX-512 (see `super::vectorised`).
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn quantize_activations(x: &[f32], q: &mut [i8]) -> f32 {
    crate::quant::quantize_activations_inline(x, q)
}

/// `scalar::rms_norm` compiled for AVX-512 (see `super::vectorised`).
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    super::scalar::rms_norm_inline(x, w, eps, out)
}

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
        if N == 1 {
            prefetch(row.wrapping_add(b * BLOCK_BYTES + PREFETCH));
        }
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
    let mut out = [0i32; N];
    for (o, a) in out.iter_mut().zip(acc) {
        let s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        *o = _mm_cvtsi128_si32(s);
    }
    out
}

/// How far ahead of the decode kernel the next weights are requested: the hardware prefetcher
/// alone leaves decode ~10 % short (8 KiB measured best of 1-16 KiB on Zen 4).
pub(crate) const PREFETCH: usize = 8192;

/// Requests the line at `p` into L2, not L1: a hint that never faults, wherever it points.
/// Into L1 (`T0`), one thread of a Zen 4 streamed 133 MB of weights through the VNNI decode loop
/// at 10-11 GB/s; into L2 the same loop streamed 22-27 GB/s, and the slower AVX2 loop gained
/// nothing either way (2026-12-05, a throwaway bench of the two loops, 1 and 2 threads).
#[inline]
#[target_feature(enable = "sse")]
pub(crate) fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T1>(p.cast());
}

/// Σ code·q over R rows for N tokens with AVX-512 VNNI. The four 64-column slices of a block
/// are taken one at a time, so that each activation load feeds all R rows and each weight load
/// all N tokens while R·N accumulators stay in registers (R·N + R + N + 2 ≤ 32).
///
/// # Safety
/// The CPU supports AVX-512 F/BW and VNNI; each `rows[r]` points to `blocks * 64` bytes and
/// each `q[t]` to `blocks * 256` int8 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows_vnni<const R: usize, const N: usize>(
    rows: [*const u8; R],
    q: [*const i8; N],
    blocks: usize,
) -> [[i32; N]; R] {
    let mask = _mm512_set1_epi8(3);
    let mut acc = [[_mm512_setzero_si512(); N]; R];
    for b in 0..blocks {
        // Plain loops, not `array::map`: a closure that LLVM leaves out of line here runs the
        // whole prefill 40 % slower (seen twice after unrelated changes moved code around).
        let mut wv = [_mm512_setzero_si512(); R];
        for (w, r) in wv.iter_mut().zip(rows) {
            // SAFETY: within each row's `blocks * 64` bytes (caller's contract).
            *w = unsafe { _mm512_loadu_si512(r.add(b * BLOCK_BYTES).cast()) };
        }
        for k in 0..4 {
            let mut qv = [_mm512_setzero_si512(); N];
            for (v, p) in qv.iter_mut().zip(q) {
                // SAFETY: columns 64·k .. +64 of block b, within each token's values.
                *v = unsafe { _mm512_loadu_si512(p.add(b * BLOCK + 64 * k).cast()) };
            }
            for r in 0..R {
                let c = match k {
                    0 => _mm512_and_si512(wv[r], mask),
                    1 => _mm512_and_si512(_mm512_srli_epi16::<2>(wv[r]), mask),
                    2 => _mm512_and_si512(_mm512_srli_epi16::<4>(wv[r]), mask),
                    _ => _mm512_and_si512(_mm512_srli_epi16::<6>(wv[r]), mask),
                };
                for t in 0..N {
                    acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], c, qv[t]);
                }
            }
        }
    }
    let mut out = [[0i32; N]; R];
    for (or, ar) in out.iter_mut().zip(acc) {
        for (o, a) in or.iter_mut().zip(ar) {
            *o = _mm512_reduce_add_epi32(a);
        }
    }
    out
}

/// Σ code·q of one row for one token (decode) with AVX-512 VNNI, as one vector whose lanes
/// add up to it. Field k of each byte is masked in place (`w & 3 << 2k`, the code times 4^k),
/// not shifted down first: `vpdpbusd` takes it as an unsigned byte up to 192, each field k sums
/// into its own accumulator, and the accumulators are divided by 4^k (exactly: every term is a
/// multiple of it) at the end. Three shifts fewer per 64 bytes, of eleven vector instructions:
/// Zen 4 runs 512-bit instructions as two 256-bit halves. Four accumulators also keep
/// successive `vpdpbusd` from waiting on each other. The sums cannot overflow: a lane adds at
/// most 4 · 192 · 128 per 256 columns (2^31 is 21 million columns).
///
/// # Safety
/// `row` points to `blocks * 64` bytes and `q` to `blocks * 256` int8 values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn row_vnni_decode(row: *const u8, q: *const i8, blocks: usize) -> __m512i {
    let masks = [
        _mm512_set1_epi8(0x03),
        _mm512_set1_epi8(0x0c),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi8(0xc0u8 as i8),
    ];
    let mut acc = [_mm512_setzero_si512(); 4];
    for b in 0..blocks {
        prefetch(row.wrapping_add(b * BLOCK_BYTES + PREFETCH));
        // SAFETY: within the row's `blocks * 64` bytes (caller's contract).
        let w = unsafe { _mm512_loadu_si512(row.add(b * BLOCK_BYTES).cast()) };
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: columns 64·k .. +64 of block b, within the token's values.
            let qv = unsafe { _mm512_loadu_si512(q.add(b * BLOCK + 64 * k).cast()) };
            *a = _mm512_dpbusd_epi32(*a, _mm512_and_si512(w, masks[k]), qv);
        }
    }
    _mm512_add_epi32(
        _mm512_add_epi32(acc[0], _mm512_srai_epi32::<2>(acc[1])),
        _mm512_add_epi32(
            _mm512_srai_epi32::<4>(acc[2]),
            _mm512_srai_epi32::<6>(acc[3]),
        ),
    )
}

/// Sixteen vectors of i32 partial sums → one vector whose lane i is the total of vector i.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn reduce16(t: &[__m512i; 16]) -> __m512i {
    let u: [__m512i; 8] = std::array::from_fn(|i| {
        let (a, b) = (t[2 * i], t[2 * i + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
    });
    let v: [__m512i; 4] = std::array::from_fn(|i| {
        let (a, b) = (u[2 * i], u[2 * i + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
    });
    let pair = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
        )
    };
    pair(pair(v[0], v[1]), pair(v[2], v[3]))
}

/// Decode (one token) over consecutive rows with AVX-512 VNNI: `out[i] = Σ code·q − sum` for
/// row i from `first`. Rows stream one after another from memory with a software prefetch
/// into L2 ahead of them, and sixteen rows' vectors are summed across lanes together
/// (`reduce16`): one row per call, the call and each row's own sum across lanes took a tenth
/// of the decode product's time on a Zen 4.
///
/// # Safety
/// `first` points to `out.len()` rows of `blocks * 64` bytes each, `q` to `blocks * 256` int8
/// values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn decode_vnni(first: *const u8, blocks: usize, q: *const i8, sum: i32, out: &mut [i32]) {
    let row_bytes = blocks * BLOCK_BYTES;
    let sums = _mm512_set1_epi32(sum);
    for (g, o) in out.chunks_mut(16).enumerate() {
        let mut t = [_mm512_setzero_si512(); 16];
        for (i, v) in t.iter_mut().take(o.len()).enumerate() {
            // SAFETY: row 16·g + i < out.len() is within the rows (caller's contract).
            *v = unsafe { row_vnni_decode(first.add((16 * g + i) * row_bytes), q, blocks) };
        }
        let s = _mm512_sub_epi32(reduce16(&t), sums);
        let lanes = (1u32 << o.len()).wrapping_sub(1) as u16;
        // SAFETY: the mask writes the first o.len() ≤ 16 lanes, all inside `o`.
        unsafe { _mm512_mask_storeu_epi32(o.as_mut_ptr(), lanes, s) };
    }
}

/// AVX2 kernel; same contract as `packed::gemm_portable`.
///
/// # Safety
/// The CPU has AVX2 (the dispatch table holds this function only there).
pub(super) unsafe fn gemm_avx2(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
    debug_assert!(
        std::arch::is_x86_feature_detected!("avx2"),
        "AVX2 kernel on a CPU without AVX2"
    );
    assert!(x.cols_padded >= w.cols_padded && w.packing == Packing::Bits2);
    let blocks = w.cols_padded / BLOCK;
    // SAFETY: AVX2 is present (the caller's contract); rows and tokens have `blocks` whole blocks.
    for_rows(
        w,
        x,
        r0,
        acc,
        |r, q| unsafe { row_avx2::<4>(r, q, blocks) },
        // SAFETY: as for the four-token rows above, one token.
        |r, q| unsafe { row_avx2::<1>(r, q, blocks) },
    );
}

/// AVX-512 VNNI kernel; same contract as `packed::gemm_portable`. A prompt in tiles of four
/// rows by four tokens: the tokens of a `TOKEN_BLOCK` stay in cache while the rows of this call
/// stream past them. Decode (one token, bound by memory) takes rows one at a time
/// (`decode_vnni`): one sequential stream instead of four interleaved ones 640 bytes apart.
/// On two threads (each thread's rows one contiguous share, `pool::share`) that ran decode
/// 41-43 → 48-51 tokens/s on a Zen 5; on one thread the four-row tiles were 8 % faster there
/// but 25 % slower on a Zen 4, so decode streams rows one at a time on every thread count.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VNNI (the dispatch table holds this function only there).
pub(super) unsafe fn gemm_avx512_vnni(
    w: &PackedTernary,
    x: &QuantizedRows,
    r0: usize,
    acc: &mut [i32],
) {
    debug_assert!(
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw"),
        "AVX-512 VNNI kernel on a CPU without it"
    );
    assert!(x.cols_padded >= w.cols_padded && w.packing == Packing::Bits2);
    let (blocks, rb, n_tok) = (w.cols_padded / BLOCK, w.row_bytes(), x.n_tok);
    let n_rows = acc.len() / n_tok;
    let row_ptr = |i: usize| w.data[(r0 + i) * rb..(r0 + i + 1) * rb].as_ptr();
    if n_tok == 1 {
        // SAFETY: AVX-512 F/BW/VNNI are present (the caller's contract); rows r0.. hold `blocks`
        // whole blocks each, one per output, and the token `blocks` whole blocks.
        return unsafe { decode_vnni(row_ptr(0), blocks, x.token(0).as_ptr(), x.sums[0], acc) };
    }
    let mut store = |i: usize, t: usize, s: &[i32]| {
        for (k, v) in s.iter().enumerate() {
            acc[i * n_tok + t + k] = v - x.sums[t + k];
        }
    };
    for t0 in (0..n_tok).step_by(TOKEN_BLOCK) {
        let t1 = (t0 + TOKEN_BLOCK).min(n_tok);
        let mut i = 0;
        while n_tok > 1 && i + 4 <= n_rows {
            let rows = [i, i + 1, i + 2, i + 3].map(row_ptr);
            let mut t = t0;
            while t + 4 <= t1 {
                let q = [t, t + 1, t + 2, t + 3].map(|k| x.token(k).as_ptr());
                // SAFETY: AVX-512 F/BW/VNNI are present (the caller's contract); rows and tokens hold
                // `blocks` whole blocks.
                let s = unsafe { rows_vnni::<4, 4>(rows, q, blocks) };
                for (r, sr) in s.iter().enumerate() {
                    store(i + r, t, sr);
                }
                t += 4;
            }
            for tt in t..t1 {
                // SAFETY: as above.
                let s = unsafe { rows_vnni::<4, 1>(rows, [x.token(tt).as_ptr()], blocks) };
                for (r, sr) in s.iter().enumerate() {
                    store(i + r, tt, sr);
                }
            }
            i += 4;
        }
        for r in i..n_rows {
            for tt in t0..t1 {
                // SAFETY: as above.
                let s = unsafe { rows_vnni::<1, 1>([row_ptr(r)], [x.token(tt).as_ptr()], blocks) };
                store(r, tt, &s[0]);
            }
        }
    }
}

/// The codes (digit + 1) of digit k of each byte 0..128, as `packed::DIGITS` has them: the
/// tables `vpermi2b` looks base-3 digits up in, built at compile time.
static CODES3: [[u8; 128]; 5] = {
    let mut t = [[0u8; 128]; 5];
    let mut i = 0;
    while i < 128 {
        let d = DIGITS[i];
        let mut k = 0;
        while k < 5 {
            t[k][i] = (d[k] + 1) as u8;
            k += 1;
        }
        i += 1;
    }
    t
};

/// `CODES3` in registers: entries 0..64 of each digit in `lo`, 64..128 in `hi`. Loaded once
/// per call of the kernel, not per row (a row of 2560 columns is only eight blocks).
pub(crate) struct Tables3 {
    pub(crate) lo: [__m512i; 5],
    pub(crate) hi: [__m512i; 5],
}

impl Tables3 {
    #[target_feature(enable = "avx512f")]
    pub(crate) fn load() -> Self {
        let (mut lo, mut hi) = ([_mm512_setzero_si512(); 5], [_mm512_setzero_si512(); 5]);
        for k in 0..5 {
            // SAFETY: each table row holds 128 bytes.
            unsafe {
                lo[k] = _mm512_loadu_si512(CODES3[k].as_ptr().cast());
                hi[k] = _mm512_loadu_si512(CODES3[k].as_ptr().add(64).cast());
            }
        }
        Tables3 { lo, hi }
    }
}

/// The codes of digit k of 64 base-3 bytes: the table entry of |byte| (`vpermi2b` reads its
/// seven low bits), mirrored (2 − code) where the byte is negative.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(crate) fn codes3(abs: __m512i, neg: __mmask64, lo: __m512i, hi: __m512i) -> __m512i {
    let c = _mm512_permutex2var_epi8(lo, abs, hi);
    _mm512_mask_sub_epi8(c, neg, _mm512_set1_epi8(2), c)
}

/// Σ code·q over R rows for N tokens, base-3 layout (prefill); as `rows_vnni`.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VBMI and VNNI; each `rows[r]` points to `blocks * 64` bytes
/// and each `q[t]` to `blocks * 320` int8 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
unsafe fn rows_base3<const R: usize, const N: usize>(
    tables: &Tables3,
    rows: [*const u8; R],
    q: [*const i8; N],
    blocks: usize,
) -> [[i32; N]; R] {
    let (lo, hi) = (&tables.lo, &tables.hi);
    let mut acc = [[_mm512_setzero_si512(); N]; R];
    for b in 0..blocks {
        let mut abs = [_mm512_setzero_si512(); R];
        let mut neg = [0u64; R];
        for r in 0..R {
            // SAFETY: within each row's `blocks * 64` bytes (caller's contract).
            let w = unsafe { _mm512_loadu_si512(rows[r].add(b * BLOCK_BYTES).cast()) };
            neg[r] = _mm512_movepi8_mask(w);
            abs[r] = _mm512_abs_epi8(w);
        }
        for k in 0..5 {
            let mut qv = [_mm512_setzero_si512(); N];
            for (v, p) in qv.iter_mut().zip(q) {
                // SAFETY: columns 64·k .. +64 of block b, within each token's values.
                *v = unsafe { _mm512_loadu_si512(p.add(b * BLOCK3 + 64 * k).cast()) };
            }
            for r in 0..R {
                let c = codes3(abs[r], neg[r], lo[k], hi[k]);
                for t in 0..N {
                    acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], c, qv[t]);
                }
            }
        }
    }
    let mut out = [[0i32; N]; R];
    for (or, ar) in out.iter_mut().zip(acc) {
        for (o, a) in or.iter_mut().zip(ar) {
            *o = _mm512_reduce_add_epi32(a);
        }
    }
    out
}

/// Σ code·q over R rows for one token (decode), base-3 layout; as `rows_vnni_decode`, the
/// digit k of a block going to accumulator k mod A.
///
/// # Safety
/// As `rows_base3` with N = 1.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
unsafe fn rows_base3_decode<const R: usize, const A: usize>(
    tables: &Tables3,
    rows: [*const u8; R],
    q: *const i8,
    blocks: usize,
) -> [i32; R] {
    let (lo, hi) = (&tables.lo, &tables.hi);
    let mut acc = [[_mm512_setzero_si512(); A]; R];
    for b in 0..blocks {
        for r in rows {
            prefetch(r.wrapping_add(b * BLOCK_BYTES + PREFETCH));
        }
        let mut abs = [_mm512_setzero_si512(); R];
        let mut neg = [0u64; R];
        for r in 0..R {
            // SAFETY: within each row's `blocks * 64` bytes (caller's contract).
            let w = unsafe { _mm512_loadu_si512(rows[r].add(b * BLOCK_BYTES).cast()) };
            neg[r] = _mm512_movepi8_mask(w);
            abs[r] = _mm512_abs_epi8(w);
        }
        for k in 0..5 {
            // SAFETY: columns 64·k .. +64 of block b, within the token's values.
            let qv = unsafe { _mm512_loadu_si512(q.add(b * BLOCK3 + 64 * k).cast()) };
            for r in 0..R {
                let c = codes3(abs[r], neg[r], lo[k], hi[k]);
                acc[r][k % A] = _mm512_dpbusd_epi32(acc[r][k % A], c, qv);
            }
        }
    }
    let mut out = [0i32; R];
    for (o, a) in out.iter_mut().zip(acc) {
        let mut sum = _mm512_setzero_si512();
        for x in a {
            sum = _mm512_add_epi32(sum, x);
        }
        *o = _mm512_reduce_add_epi32(sum);
    }
    out
}

/// AVX-512 VBMI kernel over the base-3 layout; same contract and tiling as
/// `gemm_avx512_vnni`, except that decode takes rows two at a time (one at a time ran 512-byte
/// rows at a third of the speed in a 30-layer bench; two adjacent rows are still one
/// sequential stream).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VNNI/VBMI (the dispatch table holds this function only there).
pub(super) unsafe fn gemm_avx512_base3(
    w: &PackedTernary,
    x: &QuantizedRows,
    r0: usize,
    acc: &mut [i32],
) {
    debug_assert!(
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi"),
        "AVX-512 VBMI kernel on a CPU without it"
    );
    assert!(x.cols_padded >= w.cols_padded && w.packing == Packing::Base3);
    // SAFETY: AVX-512 F is present (the caller's contract).
    let tables = unsafe { Tables3::load() };
    let (blocks, rb, n_tok) = (w.cols_padded / BLOCK3, w.row_bytes(), x.n_tok);
    let n_rows = acc.len() / n_tok;
    let row_ptr = |i: usize| w.data[(r0 + i) * rb..(r0 + i + 1) * rb].as_ptr();
    let mut store = |i: usize, t: usize, s: &[i32]| {
        for (k, v) in s.iter().enumerate() {
            acc[i * n_tok + t + k] = v - x.sums[t + k];
        }
    };
    for t0 in (0..n_tok).step_by(TOKEN_BLOCK) {
        let t1 = (t0 + TOKEN_BLOCK).min(n_tok);
        let mut i = 0;
        while n_tok > 1 && i + 4 <= n_rows {
            let rows = [i, i + 1, i + 2, i + 3].map(row_ptr);
            let mut t = t0;
            while t + 4 <= t1 {
                let q = [t, t + 1, t + 2, t + 3].map(|k| x.token(k).as_ptr());
                // SAFETY: AVX-512 F/BW/VBMI/VNNI are present (the caller's contract); rows and tokens
                // hold `blocks` whole blocks.
                let s = unsafe { rows_base3::<4, 4>(&tables, rows, q, blocks) };
                for (r, sr) in s.iter().enumerate() {
                    store(i + r, t, sr);
                }
                t += 4;
            }
            for tt in t..t1 {
                // SAFETY: as above.
                let s =
                    unsafe { rows_base3::<4, 1>(&tables, rows, [x.token(tt).as_ptr()], blocks) };
                for (r, sr) in s.iter().enumerate() {
                    store(i + r, tt, sr);
                }
            }
            i += 4;
        }
        while n_tok == 1 && i + 2 <= n_rows {
            let rows = [i, i + 1].map(row_ptr);
            // SAFETY: as above.
            let s =
                unsafe { rows_base3_decode::<2, 3>(&tables, rows, x.token(0).as_ptr(), blocks) };
            for (k, v) in s.iter().enumerate() {
                store(i + k, 0, &[*v]);
            }
            i += 2;
        }
        for r in i..n_rows {
            for tt in t0..t1 {
                // SAFETY: as above.
                let s = unsafe {
                    rows_base3_decode::<1, 4>(&tables, [row_ptr(r)], x.token(tt).as_ptr(), blocks)
                };
                store(r, tt, &s);
            }
        }
    }
}
