//! The two loops of attention over the KV cache: query·key scores and the probability-weighted
//! sum of values, for one or more query heads that share a KV head (GQA). The SIMD versions do
//! exactly the oracle's operations in the oracle's order (`scalar::dot`: eight lanes, multiply
//! then add, the same final tree; `scalar::axpy` position by position), so results are bit for
//! bit those of the scalar path, on every kernel and on the GPU, which mirrors the same order.
//! Heads of one group are computed together so that each key and value row is loaded once for
//! all of them.

use super::{Kernels, Scores, Values, scalar};

/// How the KV cache stores a value: f32, or f16 widened exactly to f32 before use (so an f16
/// cache computes what an f32 cache holding the rounded values would).
pub trait Element: Copy + Send + Sync + 'static {
    const F16: bool;
    fn to_f32(self) -> f32;
    /// The nearest value of this type.
    fn from_f32(x: f32) -> Self;
    /// The table's attention loops over this type.
    fn scores(k: &Kernels) -> Scores<Self>;
    fn values(k: &Kernels) -> Values<Self>;
}

impl Element for f32 {
    const F16: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn scores(k: &Kernels) -> Scores<f32> {
        k.scores_f32.run
    }
    fn values(k: &Kernels) -> Values<f32> {
        k.values_f32.run
    }
}

impl Element for half::f16 {
    const F16: bool = true;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
    fn scores(k: &Kernels) -> Scores<half::f16> {
        k.scores_f16.run
    }
    fn values(k: &Kernels) -> Values<half::f16> {
        k.values_f16.run
    }
}

fn widen<T: Element>(x: &[T], out: &mut Vec<f32>) {
    out.clear();
    out.extend(x.iter().map(|v| v.to_f32()));
}

/// For each head g (`q` holds `q.len() / d` heads of `d` values) and position j:
/// `out[g * n + j] = (q_g · K_j) · scale`, with n = `out.len()` / heads and key j at
/// `k[j * d..][..d]`.
pub fn scores<T: Element>(
    kernels: &Kernels,
    q: &[f32],
    d: usize,
    k: &[T],
    scale: f32,
    out: &mut [f32],
) {
    assert!(
        d > 0 && q.len().is_multiple_of(d),
        "attention scores: query heads"
    );
    let heads = q.len() / d;
    assert!(out.len().is_multiple_of(heads), "attention scores: output");
    let n = out.len() / heads;
    assert!(n * d <= k.len(), "attention scores: keys");
    T::scores(kernels)(q, d, k, scale, out)
}

/// The reference loop of `scores`, the table's portable entry.
pub(super) fn scores_portable<T: Element>(
    q: &[f32],
    d: usize,
    k: &[T],
    scale: f32,
    out: &mut [f32],
) {
    let heads = q.len() / d;
    let n = out.len() / heads;
    let mut key = Vec::with_capacity(d);
    for j in 0..n {
        widen(&k[j * d..][..d], &mut key);
        for (g, qh) in q.chunks_exact(d).enumerate() {
            out[g * n + j] = scalar::dot(qh, &key) * scale;
        }
    }
}

/// For each head g (`out` holds `out.len() / d` heads): `out_g += Σ_j p[g * n + j] · V_j`
/// accumulated in order of j, with n = `p.len()` / heads and value j at `v[j * d..][..d]`.
pub fn weighted_sum<T: Element>(kernels: &Kernels, p: &[f32], v: &[T], d: usize, out: &mut [f32]) {
    weighted_sum_columns(kernels, p, v, d, d, out)
}

/// `weighted_sum` over `w` of each value row's columns: `v` starts at the first of them (value
/// j's are `v[j * d..][..w]`) and `out` holds `out.len() / w` heads of `w` columns. Each column
/// is computed exactly as in `weighted_sum`, so splitting the columns between tasks does not
/// change the result.
pub fn weighted_sum_columns<T: Element>(
    kernels: &Kernels,
    p: &[f32],
    v: &[T],
    d: usize,
    w: usize,
    out: &mut [f32],
) {
    assert!(
        w > 0 && w <= d && out.len().is_multiple_of(w),
        "attention values: heads"
    );
    let heads = out.len() / w;
    assert!(
        p.len().is_multiple_of(heads),
        "attention values: probabilities"
    );
    let n = p.len() / heads;
    assert!(n == 0 || (n - 1) * d + w <= v.len(), "attention values");
    T::values(kernels)(p, v, (d, w), out)
}

/// The reference loop of `weighted_sum_columns`, the table's portable entry.
pub(super) fn values_portable<T: Element>(
    p: &[f32],
    v: &[T],
    (d, w): (usize, usize),
    out: &mut [f32],
) {
    let heads = out.len() / w;
    let n = p.len() / heads;
    let mut row = Vec::with_capacity(w);
    for j in 0..n {
        widen(&v[j * d..][..w], &mut row);
        for (g, oh) in out.chunks_exact_mut(w).enumerate() {
            scalar::axpy(p[g * n + j], &row, oh);
        }
    }
}

/// `scalar::softmax` of `x` (same bits), vectorised with the table's widest registers.
pub fn softmax(kernels: &Kernels, x: &mut [f32]) {
    (kernels.softmax.run)(x)
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::Element;

    /// # Safety
    /// AVX-512 F is present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_avx512(x: &mut [f32]) {
        crate::kernels::scalar::softmax_inline(x)
    }

    /// # Safety
    /// AVX2 is present.
    #[target_feature(enable = "avx2")]
    pub unsafe fn softmax_avx2(x: &mut [f32]) {
        crate::kernels::scalar::softmax_inline(x)
    }

    /// How many positions ahead the loops ask for keys and values: the cache streams from
    /// memory during decode (the weights evict it between layers).
    const AHEAD: usize = 64;

    /// Requests `x[from..from + len]` into L2 (nothing past the end of `x`): see `x86::prefetch`.
    #[inline]
    fn prefetch<T>(x: &[T], from: usize, len: usize) {
        let end = (from + len).min(x.len());
        let mut i = from;
        while i < end {
            // SAFETY: a prefetch of an address inside `x` (i < x.len()) reads nothing.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(x.as_ptr().add(i).cast()) };
            i += 64 / size_of::<T>();
        }
    }

    /// Eight values at `p` as f32.
    ///
    /// # Safety
    /// AVX2 is present, F16C too when `T` is f16; `p` has eight readable values.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8<T: Element>(p: *const T) -> __m256 {
        if T::F16 {
            // SAFETY: eight f16 are 16 readable bytes (caller's contract).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        } else {
            // SAFETY: eight f32 (caller's contract).
            unsafe { _mm256_loadu_ps(p.cast()) }
        }
    }

    /// `scalar::dot`'s lane sums of G queries with N keys at once (every pair's lanes are
    /// independent), in the oracle's order: lane i of (g, j) accumulates q_g[8c + i]·k_j[8c + i]
    /// over chunks c.
    ///
    /// # Safety
    /// AVX2 (and F16C for f16) are present; each query and key has `8 * chunks` readable values.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn dot_lanes<T: Element, const G: usize, const N: usize>(
        qs: [*const f32; G],
        keys: [*const T; N],
        chunks: usize,
    ) -> [[__m256; N]; G] {
        let mut acc = [[_mm256_setzero_ps(); N]; G];
        for c in 0..chunks {
            let mut kv = [_mm256_setzero_ps(); N];
            for (v, key) in kv.iter_mut().zip(keys) {
                // SAFETY: 8c + 8 <= 8 * chunks for every key (caller's contract).
                *v = unsafe { load8(key.add(8 * c)) };
            }
            for (ag, q) in acc.iter_mut().zip(qs) {
                // SAFETY: as above, for the queries.
                let qv = unsafe { _mm256_loadu_ps(q.add(8 * c)) };
                for (a, k) in ag.iter_mut().zip(kv) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, k));
                }
            }
        }
        acc
    }

    /// The oracle's final tree `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))` of four
    /// accumulators at once: lo + hi halves, then two rounds of pairwise horizontal adds.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    fn tree4(a: [__m256; 4]) -> __m128 {
        let mut s = [_mm_setzero_ps(); 4];
        for (s, x) in s.iter_mut().zip(a) {
            *s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        }
        _mm_hadd_ps(_mm_hadd_ps(s[0], s[1]), _mm_hadd_ps(s[2], s[3]))
    }

    /// The same tree of one accumulator.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    fn tree1(a: __m256) -> f32 {
        let mut l = [0f32; 8];
        // SAFETY: `l` holds eight floats.
        unsafe { _mm256_storeu_ps(l.as_mut_ptr(), a) };
        ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
    }

    /// The tail of `scalar::dot` past the last whole chunk of 8 (0 when there is none).
    fn tail<T: Element>(q: &[f32], k: &[T], whole: usize) -> f32 {
        q[whole..]
            .iter()
            .zip(&k[whole..])
            .map(|(x, y)| x * y.to_f32())
            .sum()
    }

    /// Scores of four consecutive keys for one head from their lane sums: the oracle's tree,
    /// plus the part past the last whole chunk of 8 (`keys` holds the four keys, `d` apart),
    /// times `scale`, stored in `o`.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    fn finish4<T: Element>(
        lanes: [__m256; 4],
        (qh, keys, d): (&[f32], &[T], usize),
        scale: f32,
        o: &mut [f32],
    ) {
        let whole = d / 8 * 8;
        let t = if whole == d {
            _mm_setzero_ps()
        } else {
            let t = [0, 1, 2, 3].map(|i| tail(qh, &keys[i * d..][..d], whole));
            _mm_setr_ps(t[0], t[1], t[2], t[3])
        };
        let r = _mm_mul_ps(_mm_add_ps(tree4(lanes), t), _mm_set1_ps(scale));
        let o = &mut o[..4];
        // SAFETY: `o` holds four floats.
        unsafe { _mm_storeu_ps(o.as_mut_ptr(), r) };
    }

    /// Scores of G heads from head `g0` against keys `from..` one at a time (what the steps of
    /// several keys leave).
    ///
    /// # Safety
    /// As `scores_avx2`.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scores_each<T: Element, const G: usize>(
        (q, d): (&[f32], usize),
        (g0, from): (usize, usize),
        k: &[T],
        scale: f32,
        out: &mut [f32],
    ) {
        let n = out.len() / (q.len() / d);
        let qh: [&[f32]; G] = std::array::from_fn(|g| &q[(g0 + g) * d..][..d]);
        let qp = qh.map(<[f32]>::as_ptr);
        for j in from..n {
            let key = &k[j * d..][..d];
            // SAFETY: every query and key slice holds d >= 8 * (d / 8) values.
            let acc = unsafe { dot_lanes(qp, [key.as_ptr()], d / 8) };
            for (g, [a]) in acc.into_iter().enumerate() {
                out[(g0 + g) * n + j] = (tree1(a) + tail(qh[g], key, d / 8 * 8)) * scale;
            }
        }
    }

    /// Scores of G heads from head `g0` against every key.
    ///
    /// # Safety
    /// As `scores_avx2`.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scores_heads<T: Element, const G: usize>(
        (q, d): (&[f32], usize),
        g0: usize,
        k: &[T],
        scale: f32,
        out: &mut [f32],
    ) {
        let n = out.len() / (q.len() / d);
        let qh: [&[f32]; G] = std::array::from_fn(|g| &q[(g0 + g) * d..][..d]);
        let qp = qh.map(<[f32]>::as_ptr);
        let mut j = 0;
        while j + 4 <= n {
            let keys = &k[j * d..][..4 * d];
            prefetch(k, (j + AHEAD) * d, 4 * d);
            let kp = [
                keys.as_ptr(),
                keys[d..].as_ptr(),
                keys[2 * d..].as_ptr(),
                keys[3 * d..].as_ptr(),
            ];
            // SAFETY: every query and key slice holds d >= 8 * (d / 8) values.
            let acc = unsafe { dot_lanes(qp, kp, d / 8) };
            for (g, lanes) in acc.into_iter().enumerate() {
                finish4(lanes, (qh[g], keys, d), scale, &mut out[(g0 + g) * n + j..]);
            }
            j += 4;
        }
        // SAFETY: the caller's contract.
        unsafe { scores_each::<T, G>((q, d), (g0, j), k, scale, out) };
    }

    /// # Safety
    /// AVX2 (and F16C for f16) are present; `k` holds `out.len() / heads` keys of `d` values.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn scores_avx2<T: Element>(
        q: &[f32],
        d: usize,
        k: &[T],
        scale: f32,
        out: &mut [f32],
    ) {
        let heads = q.len() / d;
        let mut g = 0;
        // Two heads × four keys: eight accumulators, each key loaded once for both heads.
        while g + 2 <= heads {
            // SAFETY: the caller's contract.
            unsafe { scores_heads::<T, 2>((q, d), g, k, scale, out) };
            g += 2;
        }
        if g < heads {
            // SAFETY: as above.
            unsafe { scores_heads::<T, 1>((q, d), g, k, scale, out) };
        }
    }

    /// `out_g[c0..c0 + 8 * C] += p_g[j] · V_j[c0..]` for G heads from `g0`, in order of j, the
    /// G × C vectors kept in registers (C and G are constants, so the loops unroll and the
    /// accumulators never touch memory). Value rows are `d` apart, output rows `w`.
    ///
    /// # Safety
    /// As `weighted_sum_avx2`; `c0 + 8 * C <= w`.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn axpy_block<T: Element, const G: usize, const C: usize>(
        p: &[f32],
        v: &[T],
        (d, w, g0, c0): (usize, usize, usize, usize),
        out: &mut [f32],
    ) {
        let n = p.len() / (out.len() / w);
        let mut acc = [[_mm256_setzero_ps(); C]; G];
        for (g, ag) in acc.iter_mut().enumerate() {
            let o = &out[(g0 + g) * w + c0..][..8 * C];
            for (i, a) in ag.iter_mut().enumerate() {
                // SAFETY: 8i + 8 <= o.len().
                *a = unsafe { _mm256_loadu_ps(o.as_ptr().add(8 * i)) };
            }
        }
        let probs: [&[f32]; G] = std::array::from_fn(|g| &p[(g0 + g) * n..][..n]);
        for j in 0..n {
            let row = &v[j * d + c0..][..8 * C];
            prefetch(v, (j + AHEAD) * d + c0, 8 * C);
            let mut x = [_mm256_setzero_ps(); C];
            for (i, x) in x.iter_mut().enumerate() {
                // SAFETY: 8i + 8 <= row.len().
                *x = unsafe { load8(row.as_ptr().add(8 * i)) };
            }
            for (ag, pg) in acc.iter_mut().zip(probs) {
                let pv = _mm256_set1_ps(pg[j]);
                for (a, &x) in ag.iter_mut().zip(&x) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, x));
                }
            }
        }
        for (g, ag) in acc.iter().enumerate() {
            let o = &mut out[(g0 + g) * w + c0..][..8 * C];
            for (i, a) in ag.iter().enumerate() {
                // SAFETY: as for the loads.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * i), *a) };
            }
        }
    }

    /// # Safety
    /// AVX2 (and F16C for f16) are present; `w` is a multiple of 8; `v` holds
    /// `p.len() / heads` rows `d` apart, of which the first `w` values are read.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn weighted_sum_avx2<T: Element>(
        p: &[f32],
        v: &[T],
        (d, w): (usize, usize),
        out: &mut [f32],
    ) {
        let heads = out.len() / w;
        let mut g = 0;
        // Two heads × 32 columns, or one head × 64: eight accumulators either way; columns
        // left over (w not a multiple of 32 or 64) one vector at a time.
        while g + 2 <= heads {
            let mut c0 = 0;
            while c0 + 32 <= w {
                // SAFETY: c0 + 32 <= w; rows as the caller guarantees.
                unsafe { axpy_block::<T, 2, 4>(p, v, (d, w, g, c0), out) };
                c0 += 32;
            }
            for c0 in (c0..w).step_by(8) {
                // SAFETY: c0 + 8 <= w (w is a multiple of 8).
                unsafe { axpy_block::<T, 2, 1>(p, v, (d, w, g, c0), out) };
            }
            g += 2;
        }
        if g < heads {
            let mut c0 = 0;
            while c0 + 64 <= w {
                // SAFETY: as above.
                unsafe { axpy_block::<T, 1, 8>(p, v, (d, w, g, c0), out) };
                c0 += 64;
            }
            for c0 in (c0..w).step_by(8) {
                // SAFETY: as above.
                unsafe { axpy_block::<T, 1, 1>(p, v, (d, w, g, c0), out) };
            }
        }
    }

    /// Keys `a` and `b`, eight values each, as one register: `a` in the low half. Two keys per
    /// register keep every lane's sum the oracle's (lane i of key j still adds q[8c + i]·k[8c + i]
    /// over c in order), which 16 consecutive values of one key would not.
    ///
    /// # Safety
    /// AVX-512 F is present; `a` and `b` have eight readable values.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    #[inline]
    unsafe fn load_pair<T: Element>(a: *const T, b: *const T) -> __m512 {
        if T::F16 {
            // SAFETY: eight f16 (16 bytes) at each (caller's contract).
            let (lo, hi) = unsafe { (_mm_loadu_si128(a.cast()), _mm_loadu_si128(b.cast())) };
            _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi))
        } else {
            // SAFETY: eight f32 at each (caller's contract).
            let (lo, hi) = unsafe { (_mm256_loadu_ps(a.cast()), _mm256_loadu_ps(b.cast())) };
            let lo = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(hi)))
        }
    }

    /// The low and high eight lanes.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    #[inline]
    fn halves(a: __m512) -> [__m256; 2] {
        let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a));
        [_mm512_castps512_ps256(a), _mm256_castpd_ps(hi)]
    }

    /// `dot_lanes` of G queries with 2P keys, two keys per register (`keys[i]` holds keys 2i and
    /// 2i + 1): the lanes of key j are returned at `[g][j]`.
    ///
    /// # Safety
    /// AVX-512 F is present; each query and key has `8 * chunks` readable values.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    unsafe fn dot_pairs<T: Element, const G: usize, const P: usize>(
        qs: [*const f32; G],
        keys: [[*const T; 2]; P],
        chunks: usize,
    ) -> [[[__m256; 2]; P]; G] {
        let mut acc = [[_mm512_setzero_ps(); P]; G];
        for c in 0..chunks {
            // Plain loops, not `array::map` (see `x86::rows_vnni`).
            let mut kv = [_mm512_setzero_ps(); P];
            for (v, [a, b]) in kv.iter_mut().zip(keys) {
                // SAFETY: 8c + 8 <= 8 * chunks for every key (caller's contract).
                *v = unsafe { load_pair(a.add(8 * c), b.add(8 * c)) };
            }
            for (ag, q) in acc.iter_mut().zip(qs) {
                // SAFETY: as above, for the queries.
                let q8 = unsafe { _mm256_loadu_ps(q.add(8 * c)) };
                let qv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(q8)));
                for (a, k) in ag.iter_mut().zip(kv) {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(qv, k));
                }
            }
        }
        let mut out = [[[_mm256_setzero_ps(); 2]; P]; G];
        for (og, ag) in out.iter_mut().zip(acc) {
            for (o, a) in og.iter_mut().zip(ag) {
                *o = halves(a);
            }
        }
        out
    }

    /// `scores_heads` with 2P keys (P even) per step, two per 16-lane register.
    ///
    /// # Safety
    /// As `scores_avx512`.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    unsafe fn scores_heads512<T: Element, const G: usize, const P: usize>(
        (q, d): (&[f32], usize),
        g0: usize,
        k: &[T],
        scale: f32,
        out: &mut [f32],
    ) {
        let n = out.len() / (q.len() / d);
        let qh: [&[f32]; G] = std::array::from_fn(|g| &q[(g0 + g) * d..][..d]);
        let qp = qh.map(<[f32]>::as_ptr);
        let mut j = 0;
        while j + 2 * P <= n {
            let keys = &k[j * d..][..2 * P * d];
            let mut pairs = [[std::ptr::null::<T>(); 2]; P];
            for (i, pair) in pairs.iter_mut().enumerate() {
                *pair = [keys[2 * i * d..].as_ptr(), keys[(2 * i + 1) * d..].as_ptr()];
            }
            prefetch(k, (j + AHEAD) * d, 2 * P * d);
            // SAFETY: every query and key slice holds d >= 8 * (d / 8) values.
            let acc = unsafe { dot_pairs(qp, pairs, d / 8) };
            for (g, ag) in acc.into_iter().enumerate() {
                for (f, four) in ag.chunks_exact(2).enumerate() {
                    let lanes = [four[0][0], four[0][1], four[1][0], four[1][1]];
                    let keys4 = &keys[4 * f * d..];
                    let o = &mut out[(g0 + g) * n + j + 4 * f..];
                    finish4(lanes, (qh[g], keys4, d), scale, o);
                }
            }
            j += 2 * P;
        }
        // SAFETY: the caller's contract.
        unsafe { scores_each::<T, G>((q, d), (g0, j), k, scale, out) };
    }

    /// `scores_avx2` with 16-lane registers, eight accumulators: four heads × four keys, two
    /// heads × eight, or one head × eight; each key loaded once for the heads of a step.
    ///
    /// # Safety
    /// AVX-512 F is present; `k` holds `out.len() / heads` keys of `d` values.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    pub unsafe fn scores_avx512<T: Element>(
        q: &[f32],
        d: usize,
        k: &[T],
        scale: f32,
        out: &mut [f32],
    ) {
        let heads = q.len() / d;
        let mut g = 0;
        while g + 4 <= heads {
            // SAFETY: the caller's contract.
            unsafe { scores_heads512::<T, 4, 4>((q, d), g, k, scale, out) };
            g += 4;
        }
        if g + 2 <= heads {
            // SAFETY: as above.
            unsafe { scores_heads512::<T, 2, 4>((q, d), g, k, scale, out) };
            g += 2;
        }
        if g < heads {
            // SAFETY: as above.
            unsafe { scores_heads512::<T, 1, 4>((q, d), g, k, scale, out) };
        }
    }

    /// Sixteen values at `p` as f32.
    ///
    /// # Safety
    /// AVX-512 F is present; `p` has sixteen readable values.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    #[inline]
    unsafe fn load16<T: Element>(p: *const T) -> __m512 {
        if T::F16 {
            // SAFETY: sixteen f16 are 32 readable bytes (caller's contract).
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        } else {
            // SAFETY: sixteen f32 (caller's contract).
            unsafe { _mm512_loadu_ps(p.cast()) }
        }
    }

    /// `axpy_block` in 16-lane registers: `out_g[c0..c0 + 16 * C] += p_g[j] · V_j[c0..]`.
    ///
    /// # Safety
    /// As `weighted_sum_avx512`; `c0 + 16 * C <= w`.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    unsafe fn axpy_block512<T: Element, const G: usize, const C: usize>(
        p: &[f32],
        v: &[T],
        (d, w, g0, c0): (usize, usize, usize, usize),
        out: &mut [f32],
    ) {
        let n = p.len() / (out.len() / w);
        let mut acc = [[_mm512_setzero_ps(); C]; G];
        for (g, ag) in acc.iter_mut().enumerate() {
            let o = &out[(g0 + g) * w + c0..][..16 * C];
            for (i, a) in ag.iter_mut().enumerate() {
                // SAFETY: 16i + 16 <= o.len().
                *a = unsafe { _mm512_loadu_ps(o.as_ptr().add(16 * i)) };
            }
        }
        let probs: [&[f32]; G] = std::array::from_fn(|g| &p[(g0 + g) * n..][..n]);
        for j in 0..n {
            let row = &v[j * d + c0..][..16 * C];
            prefetch(v, (j + AHEAD) * d + c0, 16 * C);
            let mut x = [_mm512_setzero_ps(); C];
            for (i, x) in x.iter_mut().enumerate() {
                // SAFETY: 16i + 16 <= row.len().
                *x = unsafe { load16(row.as_ptr().add(16 * i)) };
            }
            for (ag, pg) in acc.iter_mut().zip(probs) {
                let pv = _mm512_set1_ps(pg[j]);
                for (a, &x) in ag.iter_mut().zip(&x) {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(pv, x));
                }
            }
        }
        for (g, ag) in acc.iter().enumerate() {
            let o = &mut out[(g0 + g) * w + c0..][..16 * C];
            for (i, a) in ag.iter().enumerate() {
                // SAFETY: as for the loads.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * i), *a) };
            }
        }
    }

    /// `weighted_sum_avx2` with 16-lane registers (the eight columns a multiple of 16 leaves
    /// go through `axpy_block`).
    ///
    /// # Safety
    /// AVX-512 F is present; otherwise as `weighted_sum_avx2`.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    pub unsafe fn weighted_sum_avx512<T: Element>(
        p: &[f32],
        v: &[T],
        (d, w): (usize, usize),
        out: &mut [f32],
    ) {
        let heads = out.len() / w;
        let mut g = 0;
        // Four heads × 32 columns, two × 64, or one × 128: eight accumulators each, every
        // value row loaded once for the heads of a step.
        while g + 4 <= heads {
            let mut c0 = 0;
            while c0 + 64 <= w {
                // SAFETY: c0 + 64 <= w; rows as the caller guarantees.
                unsafe { axpy_block512::<T, 4, 4>(p, v, (d, w, g, c0), out) };
                c0 += 64;
            }
            while c0 + 16 <= w {
                // SAFETY: c0 + 16 <= w.
                unsafe { axpy_block512::<T, 4, 1>(p, v, (d, w, g, c0), out) };
                c0 += 16;
            }
            if c0 < w {
                // SAFETY: c0 + 8 == w (w is a multiple of 8).
                unsafe { axpy_block::<T, 4, 1>(p, v, (d, w, g, c0), out) };
            }
            g += 4;
        }
        if g + 2 <= heads {
            let mut c0 = 0;
            while c0 + 64 <= w {
                // SAFETY: c0 + 64 <= w; rows as the caller guarantees.
                unsafe { axpy_block512::<T, 2, 4>(p, v, (d, w, g, c0), out) };
                c0 += 64;
            }
            while c0 + 16 <= w {
                // SAFETY: c0 + 16 <= w.
                unsafe { axpy_block512::<T, 2, 1>(p, v, (d, w, g, c0), out) };
                c0 += 16;
            }
            if c0 < w {
                // SAFETY: c0 + 8 == w (w is a multiple of 8).
                unsafe { axpy_block::<T, 2, 1>(p, v, (d, w, g, c0), out) };
            }
            g += 2;
        }
        if g < heads {
            let mut c0 = 0;
            while c0 + 128 <= w {
                // SAFETY: as above.
                unsafe { axpy_block512::<T, 1, 8>(p, v, (d, w, g, c0), out) };
                c0 += 128;
            }
            while c0 + 16 <= w {
                // SAFETY: as above.
                unsafe { axpy_block512::<T, 1, 1>(p, v, (d, w, g, c0), out) };
                c0 += 16;
            }
            if c0 < w {
                // SAFETY: as above.
                unsafe { axpy_block::<T, 1, 1>(p, v, (d, w, g, c0), out) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use half::f16;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// Each head on its own through `scalar::dot` / `scalar::axpy` on f32 rows: the definition.
    fn oracle(q: &[f32], d: usize, k: &[f32], v: &[f32], p: &[f32], o: &mut [f32]) -> Vec<f32> {
        let heads = q.len() / d;
        let n = p.len() / heads;
        let mut s = vec![0.0; heads * n];
        for g in 0..heads {
            for j in 0..n {
                s[g * n + j] = scalar::dot(&q[g * d..][..d], &k[j * d..][..d]) * 0.125;
                scalar::axpy(p[g * n + j], &v[j * d..][..d], &mut o[g * d..][..d]);
            }
        }
        s
    }

    fn check<T: Element>(kv: fn(&[f32]) -> Vec<T>, what: &str) {
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for (d, positions) in [(128, 37), (64, 5), (24, 9), (13, 6), (8, 1), (40, 3)] {
            for heads in 1..=5 {
                let q = values(heads * d, 1);
                let (k, v) = (kv(&values(positions * d, 2)), kv(&values(positions * d, 3)));
                let widened = |x: &[T]| x.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
                let p = values(heads * positions, 4);
                let mut want_o = values(heads * d, 5);
                let want_s = oracle(&q, d, &widened(&k), &widened(&v), &p, &mut want_o);
                for kernel in Isa::available().into_iter().map(Isa::kernels) {
                    let mut s = vec![0.0; heads * positions];
                    let mut o = values(heads * d, 5);
                    scores(kernel, &q, d, &k, 0.125, &mut s);
                    let mut probs = s.clone();
                    probs
                        .chunks_exact_mut(positions)
                        .for_each(|r| softmax(kernel, r));
                    weighted_sum(kernel, &p, &v, d, &mut o);
                    let at = format!("{what} {} d={d} heads={heads}", kernel.isa.name());
                    assert_eq!(bits(&s), bits(&want_s), "{at} scores");
                    let mut want_p = want_s.clone();
                    want_p.chunks_exact_mut(positions).for_each(scalar::softmax);
                    assert_eq!(bits(&probs), bits(&want_p), "{at} softmax");
                    assert_eq!(bits(&o), bits(&want_o), "{at} values");
                    // The same columns computed in slices of every width that divides d.
                    for w in (1..d).filter(|w| d.is_multiple_of(*w)) {
                        let mut o = vec![0.0; heads * d];
                        for c0 in (0..d).step_by(w) {
                            let mut part: Vec<f32> = (0..heads)
                                .flat_map(|g| values(heads * d, 5)[g * d + c0..][..w].to_vec())
                                .collect();
                            weighted_sum_columns(kernel, &p, &v[c0..], d, w, &mut part);
                            for (g, pg) in part.chunks_exact(w).enumerate() {
                                o[g * d + c0..][..w].copy_from_slice(pg);
                            }
                        }
                        assert_eq!(bits(&o), bits(&want_o), "{at} values in columns of {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_scalar_loops_bit_for_bit() {
        check::<f32>(|x| x.to_vec(), "f32");
        check::<f16>(|x| x.iter().map(|&v| f16::from_f32(v)).collect(), "f16");
    }
}
