//! A 4-bit copy of a dense matrix (the output head): groups of 64 columns, each with its own f16
//! scale and levels in -8..=7, read against int8 activations. 4.25 bits per weight (plus the
//! scales' padding to whole lanes): under a quarter of bf16's bytes per decode step, for an
//! accuracy cost measured by tests/head_quant.rs. f16 scales rather than f32 save 12 MB per
//! token on 2B4T's head (2 % of a decode step's bytes); their rounding (2^-11 relative) is far
//! below the 4-bit levels' error.
//!
//! Each group's integer sum is exact. The float combination has one fixed order that every
//! kernel follows: group g adds `f32(d_g) · s_g` (multiply, then add) into lane `g % 16` of
//! sixteen f32 lanes, which are then summed by `sum_lanes`. So SIMD and portable results are
//! bit-identical.

use half::f16;

use super::Kernels;
use super::dense::DenseView;
use crate::quant;
use crate::storage::Bytes;

/// Columns per group (one scale each).
pub const GROUP: usize = 64;
/// Float lanes of the fixed summation order (groups per AVX-512 chunk).
const LANES: usize = 16;

/// A `[rows, cols]` matrix as 4-bit groups. In group g of a row, byte j holds column 64g + j in
/// its low nibble and column 64g + 32 + j in its high nibble, as level + 8 (so 0..=15; padding 8).
#[derive(Debug, Clone)]
pub struct Int4Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Groups per row (columns rounded up to whole groups).
    pub groups: usize,
    pub nibbles: Bytes,
    /// `rows × groups_padded` scales, zero past the last group.
    pub scales: Scales,
}

/// f16 values computed at load, or read in place from a mapped file (the 2B4T head's 12 MB of
/// scales are then not held twice: once in the page cache, once on the heap).
#[derive(Debug, Clone)]
pub enum Scales {
    Owned(Vec<f16>),
    /// Little-endian f16s, 2-byte aligned (checked by `from_le_bytes`).
    Mapped(Bytes),
}

impl Scales {
    /// The values of `bytes` (little-endian f16s), in place where the bytes are aligned and
    /// this CPU is little-endian; `None` when the length is not a whole number of f16s.
    pub fn from_le_bytes(bytes: Bytes) -> Option<Self> {
        if !bytes.len().is_multiple_of(2) {
            return None;
        }
        if cfg!(target_endian = "little") && bytes.as_ptr().align_offset(2) == 0 {
            return Some(Scales::Mapped(bytes));
        }
        Some(Scales::Owned(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ))
    }

    /// f32 scales (files written before the scales became f16), rounded to f16.
    pub fn from_f32(values: &[f32]) -> Self {
        Scales::Owned(values.iter().map(|&v| f16::from_f32(v)).collect())
    }
}

impl std::ops::Deref for Scales {
    type Target = [f16];
    fn deref(&self) -> &[f16] {
        match self {
            Scales::Owned(v) => v,
            Scales::Mapped(b) => {
                // SAFETY: `from_le_bytes` admitted these bytes only 2-byte aligned, a whole
                // number of f16s and on a little-endian CPU; `f16` is a transparent u16, for
                // which every bit pattern is a value; the bytes live as long as `b`.
                unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f16>(), b.len() / 2) }
            }
        }
    }
}

/// Groups rounded up to whole lanes, so that scales and group sums load without a tail.
fn padded(groups: usize) -> usize {
    groups.div_ceil(LANES) * LANES
}

impl Int4Matrix {
    /// Quantises each group of each row (`quantize_group`).
    pub fn from_dense(m: DenseView) -> Self {
        let groups = m.cols.div_ceil(GROUP);
        let (row_bytes, gp) = (groups * GROUP / 2, padded(groups));
        let mut nibbles = vec![0x88u8; m.rows * row_bytes];
        let mut scales = vec![f16::ZERO; m.rows * gp];
        const ROWS_PER_TASK: usize = 64;
        let tasks: Vec<_> = nibbles
            .chunks_mut(ROWS_PER_TASK * row_bytes)
            .zip(scales.chunks_mut(ROWS_PER_TASK * gp))
            .enumerate()
            .collect();
        super::pool::for_each(tasks, |(i, (outs, scs))| {
            let mut vals = vec![0f32; groups * GROUP];
            for (k, (out, sc)) in outs
                .chunks_exact_mut(row_bytes)
                .zip(scs.chunks_exact_mut(gp))
                .enumerate()
            {
                m.row_into(i * ROWS_PER_TASK + k, &mut vals[..m.cols]);
                for (v, (o, d)) in vals
                    .chunks_exact(GROUP)
                    .zip(out.chunks_exact_mut(GROUP / 2).zip(sc.iter_mut()))
                {
                    let (levels, scale) = quantize_group(v);
                    *d = f16::from_f32(scale);
                    let (lo, hi) = levels.split_at(GROUP / 2);
                    for ((o, &l), &h) in o.iter_mut().zip(lo).zip(hi) {
                        *o = (l + 8) as u8 | ((h + 8) as u8) << 4;
                    }
                }
            }
        });
        Self {
            rows: m.rows,
            cols: m.cols,
            groups,
            nibbles: Bytes::owned(nibbles),
            scales: Scales::Owned(scales),
        }
    }

    /// A matrix stored by `parts` (e.g. in a pre-packed file, the nibbles mapped in place);
    /// `None` when the sizes do not fit a `[rows, cols]` matrix.
    pub fn from_parts(rows: usize, cols: usize, nibbles: Bytes, scales: Scales) -> Option<Self> {
        let groups = cols.div_ceil(GROUP);
        let fits =
            nibbles.len() == rows * groups * GROUP / 2 && scales.len() == rows * padded(groups);
        fits.then_some(Self {
            rows,
            cols,
            groups,
            nibbles,
            scales,
        })
    }

    /// Shapes of the two stored parts: nibbles `[rows, bytes per row]`, scales `[rows, padded]`.
    pub fn part_shapes(rows: usize, cols: usize) -> ([usize; 2], [usize; 2]) {
        let groups = cols.div_ceil(GROUP);
        ([rows, groups * GROUP / 2], [rows, padded(groups)])
    }

    pub fn bytes(&self) -> usize {
        self.nibbles.len() + 2 * self.scales.len()
    }

    fn row_bytes(&self) -> usize {
        self.groups * GROUP / 2
    }
}

/// One group's levels in -8..=7 and scale. The value of largest magnitude sets the grid (mapped
/// to about -8, using all sixteen levels, or to ±7); for each grid tried, the scale that
/// minimises the squared error of its levels; the best pair wins.
fn quantize_group(v: &[f32]) -> ([i8; GROUP], f32) {
    let m = v
        .iter()
        .fold(0f32, |a, &x| if x.abs() > a.abs() { x } else { a });
    let mut levels = [0i8; GROUP];
    if m == 0.0 {
        return (levels, 0.0);
    }
    let level = |x: f32, inv: f32| quant::round_half_even_small(x * inv).clamp(-8.0, 7.0);
    // The symmetric grid (±7 at the largest magnitude) is one candidate, so the result is never
    // worse than plain absmax rounding. With the least-squares scale d = Σxl / Σl², the squared
    // error is Σx² − (Σxl)² / Σl²: the best grid maximises (Σxl)² / Σl², found in one pass each.
    let grids = [7.0 / m.abs(), -7.75 / m, -8.0 / m, -8.25 / m, -8.5 / m];
    let (mut best, mut best_fit) = (grids[0], f32::NEG_INFINITY);
    for inv in grids {
        // Eight partial sums (a fixed order) so that the loop vectorises.
        let (mut xl, mut ll) = ([0f32; 8], [0f32; 8]);
        for c in v.chunks_exact(8) {
            for i in 0..8 {
                let l = level(c[i], inv);
                xl[i] += c[i] * l;
                ll[i] += l * l;
            }
        }
        let (xl, ll) = (xl.iter().sum::<f32>(), ll.iter().sum::<f32>());
        let fit = if ll > 0.0 { xl * xl / ll } else { 0.0 };
        if fit > best_fit {
            (best, best_fit) = (inv, fit);
        }
    }
    let (mut xl, mut ll) = (0f32, 0f32);
    for (out, &x) in levels.iter_mut().zip(v) {
        let l = level(x, best);
        *out = l as i8;
        xl += x * l;
        ll += l * l;
    }
    (levels, if ll > 0.0 { xl / ll } else { 0.0 })
}

/// One token's int8 activations padded to whole groups, with each group's sum (for the +8 offset
/// of the stored values), padded to whole lanes with zeros.
pub struct Int4Input {
    pub q: Vec<i8>,
    pub group_sums: Vec<i32>,
    /// `q` by pairs of groups, for the AVX-512 kernel: groups 2p and 2p + 1 as [2p's first 32,
    /// 2p + 1's first 32, 2p's last 32, 2p + 1's last 32], so that the low nibbles of the two
    /// groups' 64 bytes meet their activations in one load, and the high nibbles in the next.
    /// Zeros up to whole lanes of groups.
    pub pairs: Vec<i8>,
}

impl Int4Input {
    pub fn new(q: &[i8], groups: usize) -> Self {
        let mut padded_q = vec![0i8; groups * GROUP];
        padded_q[..q.len()].copy_from_slice(q);
        let mut group_sums = vec![0i32; padded(groups)];
        for (s, c) in group_sums.iter_mut().zip(padded_q.chunks_exact(GROUP)) {
            *s = c.iter().map(|&v| i32::from(v)).sum();
        }
        let mut pairs = vec![0i8; padded(groups) * GROUP];
        let half = GROUP / 2;
        for (g, c) in padded_q.chunks_exact(GROUP).enumerate() {
            let at = (g / 2) * 2 * GROUP + (g % 2) * half;
            pairs[at..at + half].copy_from_slice(&c[..half]);
            pairs[at + GROUP..at + GROUP + half].copy_from_slice(&c[half..]);
        }
        Self {
            q: padded_q,
            group_sums,
            pairs,
        }
    }
}

/// The fixed final order over the sixteen lanes.
fn sum_lanes(l: &[f32; LANES]) -> f32 {
    let mut h = [0f32; 8];
    for i in 0..8 {
        h[i] = l[i] + l[i + 8];
    }
    ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]))
}

/// The oracle: row `r` · the token, in the documented order.
pub fn dot_portable(m: &Int4Matrix, r: usize, x: &Int4Input) -> f32 {
    let row = &m.nibbles[r * m.row_bytes()..][..m.row_bytes()];
    let scales = &m.scales[r * padded(m.groups)..];
    let mut lanes = [0f32; LANES];
    for g in 0..m.groups {
        let (bytes, q) = (
            &row[g * GROUP / 2..][..GROUP / 2],
            &x.q[g * GROUP..][..GROUP],
        );
        let mut s = 0i32;
        for j in 0..GROUP / 2 {
            s += i32::from(bytes[j] & 15) * i32::from(q[j]);
            s += i32::from(bytes[j] >> 4) * i32::from(q[j + GROUP / 2]);
        }
        s -= 8 * x.group_sums[g];
        lanes[g % LANES] += scales[g].to_f32() * s as f32;
    }
    sum_lanes(&lanes)
}

/// The SIMD entries' view of the rows (`dispatch`).
#[cfg(target_arch = "x86_64")]
impl Int4Matrix {
    /// Row `r`'s nibbles and its (padded) scales.
    pub(super) fn row_parts(&self, r: usize) -> (&[u8], &[f16]) {
        self.rows_parts(r..r + 1)
    }

    /// The nibbles and (padded) scales of `rows`.
    pub(super) fn rows_parts(&self, rows: std::ops::Range<usize>) -> (&[u8], &[f16]) {
        let (rb, gp) = (self.row_bytes(), padded(self.groups));
        (
            &self.nibbles[rows.start * rb..rows.end * rb],
            &self.scales[rows.start * gp..rows.end * gp],
        )
    }
}

/// `out[k] = (W[r0 + k] · x) · inv` row by row through the oracle: the table's portable entry.
pub(super) fn rows_portable(m: &Int4Matrix, x: &Int4Input, r0: usize, inv: f32, out: &mut [f32]) {
    for (k, o) in out.iter_mut().enumerate() {
        *o = dot_portable(m, r0 + k, x) * inv;
    }
}

/// `out[t][r] = W[r] · x[t]` through 4-bit weights and int8 activations quantised per token.
pub fn gemm(kernels: &Kernels, m: &Int4Matrix, x: &[f32], n_tok: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n_tok * m.cols, "int4 gemm: input size");
    assert_eq!(out.len(), n_tok * m.rows, "int4 gemm: output size");
    let mut q = vec![0i8; m.cols];
    for (xt, ot) in x.chunks_exact(m.cols).zip(out.chunks_exact_mut(m.rows)) {
        let inv = 1.0 / (kernels.quantize.run)(xt, &mut q);
        let input = Int4Input::new(&q, m.groups);
        let per_task = super::pool::per_task(m.rows, 256, 4096);
        super::pool::chunks_mut(ot, per_task, |i, o| {
            (kernels.int4_rows.run)(m, &input, i * per_task, inv, o)
        });
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{GROUP, Int4Input, LANES, padded, sum_lanes};
    use crate::kernels::x86::{PREFETCH, prefetch};

    /// Eight vectors holding two groups each (lanes 0-7 and 8-15) → one vector of the sixteen
    /// groups' totals, group i in lane i: the first two steps of a 16-way transposing sum, the
    /// 128-bit blocks of each group added, then the lanes put back in group order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn reduce_pairs(t: &[__m512i; 8]) -> __m512i {
        let u: [__m512i; 4] = std::array::from_fn(|i| {
            let (a, b) = (t[2 * i], t[2 * i + 1]);
            _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
        });
        let v: [__m512i; 2] = std::array::from_fn(|i| {
            let (a, b) = (u[2 * i], u[2 * i + 1]);
            _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
        });
        // Blocks: groups 0 2 4 6 | 1 3 5 7 | 8 10 12 14 | 9 11 13 15.
        let s = _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(v[0], v[1]),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(v[0], v[1]),
        );
        let order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
        _mm512_permutexvar_epi32(order, s)
    }

    /// One row · the token, in the fixed order of `dot_portable`. Two groups share each 64-byte
    /// load: their low nibbles meet `x.pairs`' first 64 activations, their high nibbles the
    /// next 64 (two `vpdpbusd`), so each 16-group chunk takes eight loads and products where
    /// one group per 256-bit load took sixteen, and half the sums across lanes.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI are present; `row` holds `groups` groups of 32 bytes, `scales` whole
    /// multiples of 16 entries covering them, `x` is an input of `groups` groups.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn row_vnni(row: *const u8, scales: *const f16, groups: usize, x: &Int4Input) -> f32 {
        let low = _mm512_set1_epi8(15);
        let mut lanes = _mm512_setzero_ps();
        for c in (0..groups).step_by(LANES) {
            let mut t = [_mm512_setzero_si512(); 8];
            for (p, v) in t.iter_mut().enumerate() {
                let g = c + 2 * p;
                if g >= groups {
                    break;
                }
                let at = row.wrapping_add(g * GROUP / 2);
                prefetch(at.wrapping_add(PREFETCH));
                // SAFETY: group g (and g + 1 when it exists: the mask leaves it out otherwise)
                // lies within the row; `x.pairs` holds whole lanes of groups (caller's contract).
                let (b, lo_q, hi_q) = unsafe {
                    (
                        if g + 1 < groups {
                            _mm512_loadu_si512(at.cast())
                        } else {
                            _mm512_maskz_loadu_epi8(u64::from(u32::MAX), at.cast())
                        },
                        _mm512_loadu_si512(x.pairs.as_ptr().add(g * GROUP).cast()),
                        _mm512_loadu_si512(x.pairs.as_ptr().add(g * GROUP + GROUP).cast()),
                    )
                };
                let lo = _mm512_and_si512(b, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(b), low);
                *v = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(*v, lo, lo_q), hi, hi_q);
            }
            // SAFETY: c + 16 <= the padded length of scales and sums (caller's contract).
            let (d, gs) = unsafe {
                (
                    _mm512_cvtph_ps(_mm256_loadu_si256(scales.add(c).cast())),
                    _mm512_loadu_si512(x.group_sums.as_ptr().add(c).cast()),
                )
            };
            let s = _mm512_sub_epi32(reduce_pairs(&t), _mm512_slli_epi32::<3>(gs));
            lanes = _mm512_add_ps(lanes, _mm512_mul_ps(d, _mm512_cvtepi32_ps(s)));
        }
        let mut l = [0f32; LANES];
        // SAFETY: `l` holds sixteen floats.
        unsafe { _mm512_storeu_ps(l.as_mut_ptr(), lanes) };
        sum_lanes(&l)
    }

    /// `out[k] = (row k · x) · inv` over consecutive rows, one call for a task's rows.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI are present; `nibbles` holds `out.len()` rows of `groups` groups,
    /// `scales` as many rows of `padded(groups)` scales, `x` is an input of `groups` groups.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn rows_vnni(
        nibbles: &[u8],
        scales: &[f16],
        groups: usize,
        x: &Int4Input,
        inv: f32,
        out: &mut [f32],
    ) {
        let (rb, gp) = (groups * GROUP / 2, padded(groups));
        for (k, o) in out.iter_mut().enumerate() {
            // SAFETY: row k's bytes and scales are within the slices (caller's contract).
            let dot = unsafe {
                row_vnni(
                    nibbles.as_ptr().add(k * rb),
                    scales.as_ptr().add(k * gp),
                    groups,
                    x,
                )
            };
            *o = dot * inv;
        }
    }

    /// `rows_vnni` for one row (the tests' entry).
    ///
    /// # Safety
    /// As `rows_vnni` with one row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_vnni(row: &[u8], scales: &[f16], groups: usize, x: &Int4Input) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { row_vnni(row.as_ptr(), scales.as_ptr(), groups, x) }
    }

    /// Eight vectors of i32 partial sums → one vector whose lane g is the total of vector g.
    #[target_feature(enable = "avx2")]
    fn reduce8(t: [__m256i; 8]) -> __m256i {
        let u: [__m256i; 4] = std::array::from_fn(|i| _mm256_hadd_epi32(t[2 * i], t[2 * i + 1]));
        let v0 = _mm256_hadd_epi32(u[0], u[1]);
        let v1 = _mm256_hadd_epi32(u[2], u[3]);
        // v0 = [g0 g1 g2 g3 | g0 g1 g2 g3] halves of groups 0-3, v1 likewise for 4-7.
        let lo = _mm256_permute2x128_si256::<0x20>(v0, v1);
        let hi = _mm256_permute2x128_si256::<0x31>(v0, v1);
        _mm256_add_epi32(lo, hi)
    }

    /// The AVX2 version of `dot_vnni`: two halves of eight lanes.
    ///
    /// # Safety
    /// AVX2 and F16C are present; buffers as for `dot_vnni`.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dot_avx2(row: &[u8], scales: &[f16], groups: usize, x: &Int4Input) -> f32 {
        let (low, ones) = (_mm256_set1_epi8(15), _mm256_set1_epi16(1));
        let mut lanes = [_mm256_setzero_ps(); 2];
        for c in (0..groups).step_by(8) {
            let t: [__m256i; 8] = std::array::from_fn(|i| {
                let g = c + i;
                if g >= groups {
                    return _mm256_setzero_si256();
                }
                // SAFETY: group g is within the row and the activations (caller's contract).
                let (b, q0, q1) = unsafe {
                    (
                        _mm256_loadu_si256(row.as_ptr().add(g * GROUP / 2).cast()),
                        _mm256_loadu_si256(x.q.as_ptr().add(g * GROUP).cast()),
                        _mm256_loadu_si256(x.q.as_ptr().add(g * GROUP + 32).cast()),
                    )
                };
                let lo = _mm256_and_si256(b, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(b), low);
                // Pair sums ≤ 2·15·128 each, two of them: within i16.
                let p =
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, q0), _mm256_maddubs_epi16(hi, q1));
                _mm256_madd_epi16(p, ones)
            });
            // SAFETY: c + 8 <= the padded length of scales and sums (caller's contract).
            let (d, gs) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(c).cast())),
                    _mm256_loadu_si256(x.group_sums.as_ptr().add(c).cast()),
                )
            };
            let s = _mm256_sub_epi32(reduce8(t), _mm256_slli_epi32::<3>(gs));
            let half = (c / 8) % 2;
            lanes[half] = _mm256_add_ps(lanes[half], _mm256_mul_ps(d, _mm256_cvtepi32_ps(s)));
        }
        let mut l = [0f32; LANES];
        // SAFETY: `l` holds sixteen floats.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lanes[0]);
            _mm256_storeu_ps(l.as_mut_ptr().add(8), lanes[1]);
        }
        sum_lanes(&l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::storage::DType;

    /// Scales are read in place exactly when their bytes are aligned, hold the same values
    /// either way, and a length that is not whole f16s is refused.
    #[test]
    fn scales_from_bytes_in_place_or_copied() {
        use crate::storage::Backing;
        use std::sync::Arc;
        let values = [
            1.5f32, -0.25, 3.0e-5, 0.0, 7.0, 1e-3, -2.0, 0.5, 0.125, 6e-8,
        ]
        .map(f16::from_f32);
        for start in 0..2 {
            let mut raw = vec![0u8; start];
            raw.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            let file = Arc::new(Backing::Owned(Arc::new(raw)));
            let at = |len| Bytes::Shared {
                file: file.clone(),
                range: start..start + len,
            };
            let aligned = at(20).as_ptr().align_offset(2) == 0;
            let scales = Scales::from_le_bytes(at(20)).unwrap();
            assert_eq!(
                matches!(scales, Scales::Mapped(_)),
                aligned,
                "offset {start}"
            );
            assert_eq!(&scales[..], &values[..], "offset {start}");
            assert!(Scales::from_le_bytes(at(19)).is_none());
        }
    }

    fn matrix(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..rows * cols)
            .flat_map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                // Some rows with an outlier, some all zero.
                let v = match i / cols % 5 {
                    0 => 0.0,
                    1 if i % cols == 3 => 40.0,
                    _ => s as f32 / u32::MAX as f32 - 0.5,
                };
                v.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn every_kernel_matches_the_portable_order_bit_for_bit() {
        let shapes = [(7, 64), (5, 65), (9, 1000), (3, 2560), (4, 1100), (2, 2048)];
        // Odd group counts past one and two 16-group chunks: the last pair holds one group.
        for (rows, cols) in shapes.into_iter().chain([(3, 1090), (2, 2112), (5, 1984)]) {
            let data = matrix(rows, cols, cols as u32);
            let m = Int4Matrix::from_dense(DenseView {
                dtype: DType::F32,
                data: &data,
                rows,
                cols,
            });
            for fill in [None, Some(127i8), Some(-128), Some(-127)] {
                let q: Vec<i8> = (0..cols)
                    .map(|i| fill.unwrap_or(((i * 37 + 11) % 256) as u8 as i8))
                    .collect();
                let x = Int4Input::new(&q, m.groups);
                for r in 0..rows {
                    let want = dot_portable(&m, r, &x);
                    for k in Isa::available().into_iter().map(Isa::kernels) {
                        assert_eq!(
                            (k.int4_dot.run)(&m, r, &x).to_bits(),
                            want.to_bits(),
                            "{} {rows}x{cols} row {r} {fill:?}",
                            k.isa.name()
                        );
                    }
                }
                // Several rows per call, starting past row 0.
                let inv = 0.37f32;
                for k in Isa::available().into_iter().map(Isa::kernels) {
                    let mut got = vec![0f32; rows - 1];
                    (k.int4_rows.run)(&m, &x, 1, inv, &mut got);
                    for (i, g) in got.iter().enumerate() {
                        let want = dot_portable(&m, i + 1, &x) * inv;
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{} rows {rows}x{cols}",
                            k.isa.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn groups_reconstruct_better_than_the_plain_absmax_grid() {
        let data = matrix(5, 130, 1);
        let view = DenseView {
            dtype: DType::F32,
            data: &data,
            rows: 5,
            cols: 130,
        };
        let m = Int4Matrix::from_dense(view);
        let mut row = vec![0f32; 192];
        for r in 0..5 {
            view.row_into(r, &mut row[..130]);
            for g in 0..m.groups {
                let (mut err, mut plain) = (0f32, 0f32);
                let v = &row[g * GROUP..(g + 1) * GROUP];
                let max = v.iter().fold(0f32, |a, x| a.max(x.abs()));
                for (j, &x) in v.iter().enumerate() {
                    let byte = m.nibbles[r * m.row_bytes() + g * 32 + j % 32];
                    let code = if j < 32 { byte & 15 } else { byte >> 4 };
                    let d = m.scales[r * padded(m.groups) + g].to_f32();
                    err += (x - (i32::from(code) - 8) as f32 * d).powi(2);
                    let q = if max > 0.0 {
                        (x * 7.0 / max).round() * max / 7.0
                    } else {
                        0.0
                    };
                    plain += (x - q).powi(2);
                }
                assert!(
                    err <= plain * 1.0001 + 1e-12,
                    "row {r} group {g}: {err} vs {plain}"
                );
            }
        }
    }
}
