//! The two loops of attention over the KV cache: query·key scores and the probability-weighted
//! sum of values. The SIMD versions do exactly the oracle's operations in the oracle's order
//! (`scalar::dot`: eight lanes, multiply then add, the same final tree; `scalar::axpy` position by
//! position), so results are bit for bit those of the scalar path, on every kernel and on the
//! GPU, which mirrors the same order.

use super::{Kernel, scalar};

/// `out[j] = (q · K_j) · scale` for `j < out.len()`, key j at `k[j * stride + off..][..q.len()]`.
pub fn scores(
    kernel: Kernel,
    q: &[f32],
    k: &[f32],
    stride: usize,
    off: usize,
    scale: f32,
    out: &mut [f32],
) {
    let d = q.len();
    assert!(
        out.is_empty() || (out.len() - 1) * stride + off + d <= k.len(),
        "attention scores: keys"
    );
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Portable && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked); every key lies within `k` (asserted above).
        unsafe { x86::scores_avx2(q, k, stride, off, scale, out) };
        return;
    }
    let _ = kernel;
    for (j, o) in out.iter_mut().enumerate() {
        *o = scalar::dot(q, &k[j * stride + off..][..d]) * scale;
    }
}

/// `out += Σ_j p[j] · V_j` accumulated in order of j, value j at `v[j * stride + off..][..out.len()]`.
pub fn weighted_sum(
    kernel: Kernel,
    p: &[f32],
    v: &[f32],
    stride: usize,
    off: usize,
    out: &mut [f32],
) {
    let d = out.len();
    assert!(
        p.is_empty() || (p.len() - 1) * stride + off + d <= v.len(),
        "attention values"
    );
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Portable
        && d.is_multiple_of(8)
        && std::arch::is_x86_feature_detected!("avx2")
    {
        // SAFETY: AVX2 is present (checked); every value row lies within `v` (asserted above).
        unsafe { x86::weighted_sum_avx2(p, v, stride, off, out) };
        return;
    }
    let _ = kernel;
    for (j, &pj) in p.iter().enumerate() {
        scalar::axpy(pj, &v[j * stride + off..][..d], out);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `scalar::dot` of `q` with four keys at once (the lanes of each are independent), in the
    /// oracle's order: lane i of key j accumulates q[8c + i]·k[8c + i] over chunks c.
    ///
    /// # Safety
    /// AVX2 is present; each key pointer has `q.len()` readable floats.
    #[target_feature(enable = "avx2")]
    unsafe fn dot_lanes<const N: usize>(q: &[f32], keys: [*const f32; N]) -> [[f32; 8]; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for c in 0..q.len() / 8 {
            // SAFETY: 8c + 8 <= q.len() for q and for each key (caller's contract).
            let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add(8 * c)) };
            for (a, key) in acc.iter_mut().zip(keys) {
                // SAFETY: as above.
                let kv = unsafe { _mm256_loadu_ps(key.add(8 * c)) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, kv));
            }
        }
        acc.map(|a| {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds eight floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
            lanes
        })
    }

    /// The rest of `scalar::dot`: the tail past the last whole chunk and the final tree.
    fn finish(lanes: [f32; 8], q_tail: &[f32], k_tail: &[f32]) -> f32 {
        let tail: f32 = q_tail.iter().zip(k_tail).map(|(x, y)| x * y).sum();
        let a = lanes;
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail
    }

    /// # Safety
    /// AVX2 is present; key j lies at `k[j * stride + off..][..q.len()]` for every j < out.len().
    #[target_feature(enable = "avx2")]
    pub unsafe fn scores_avx2(
        q: &[f32],
        k: &[f32],
        stride: usize,
        off: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let (d, whole) = (q.len(), q.len() / 8 * 8);
        let key = |j: usize| &k[j * stride + off..][..d];
        let mut j = 0;
        while j + 4 <= out.len() {
            // SAFETY: keys j..j+4 are within `k` (caller's contract).
            let lanes = unsafe { dot_lanes(q, [j, j + 1, j + 2, j + 3].map(|i| key(i).as_ptr())) };
            for (i, l) in lanes.into_iter().enumerate() {
                out[j + i] = finish(l, &q[whole..], &key(j + i)[whole..]) * scale;
            }
            j += 4;
        }
        for (i, o) in out.iter_mut().enumerate().skip(j) {
            // SAFETY: as above.
            let [l] = unsafe { dot_lanes(q, [key(i).as_ptr()]) };
            *o = finish(l, &q[whole..], &key(i)[whole..]) * scale;
        }
    }

    /// `out += p[j] · V_j` for each j in order, 64 columns at a time kept in registers.
    ///
    /// # Safety
    /// AVX2 is present; `out.len()` is a multiple of 8; value j lies at
    /// `v[j * stride + off..][..out.len()]` for every j < p.len().
    #[target_feature(enable = "avx2")]
    pub unsafe fn weighted_sum_avx2(
        p: &[f32],
        v: &[f32],
        stride: usize,
        off: usize,
        out: &mut [f32],
    ) {
        for c0 in (0..out.len()).step_by(64) {
            let n = (out.len() - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for (i, a) in acc.iter_mut().enumerate().take(n) {
                // SAFETY: c0 + 8i + 8 <= out.len().
                *a = unsafe { _mm256_loadu_ps(out.as_ptr().add(c0 + 8 * i)) };
            }
            for (j, &pj) in p.iter().enumerate() {
                let pv = _mm256_set1_ps(pj);
                let row = &v[j * stride + off + c0..][..8 * n];
                for (i, a) in acc.iter_mut().enumerate().take(n) {
                    // SAFETY: 8i + 8 <= row.len().
                    let x = unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * i)) };
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, x));
                }
            }
            for (i, a) in acc.iter().enumerate().take(n) {
                // SAFETY: as for the loads.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * i), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn every_kernel_matches_the_scalar_loops_bit_for_bit() {
        for (d, positions, stride, off) in [
            (128, 37, 640, 256),
            (64, 5, 64, 0),
            (24, 9, 40, 16),
            (13, 6, 30, 7),
            (8, 1, 8, 0),
        ] {
            let q = values(d, 1);
            let k = values(positions * stride, 2);
            let v = values(positions * stride, 3);
            let p = values(positions, 4);
            let mut want_s = vec![0.0; positions];
            let mut want_o = values(d, 5);
            scores(Kernel::Portable, &q, &k, stride, off, 0.125, &mut want_s);
            weighted_sum(Kernel::Portable, &p, &v, stride, off, &mut want_o);
            for kernel in Kernel::available() {
                let mut s = vec![0.0; positions];
                let mut o = values(d, 5);
                scores(kernel, &q, &k, stride, off, 0.125, &mut s);
                weighted_sum(kernel, &p, &v, stride, off, &mut o);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&s), bits(&want_s), "{} scores d={d}", kernel.name());
                assert_eq!(bits(&o), bits(&want_o), "{} values d={d}", kernel.name());
            }
        }
    }
}
