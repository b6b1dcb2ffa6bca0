//! The one place that says which code runs. A `Kernels` table names the function of every
//! operation for one instruction set (`Isa`), as ggml's per-type trait table does; it is built
//! once per process per ISA, after the CPU's features are checked, and a model holds the one
//! it was loaded with. Nothing below this file checks CPU features again, and the reference
//! files (`quant`, `scalar`) call nothing: they are the oracle every entry here is tested
//! against, bit for bit. `bit-ttt info` prints the table.
//!
//! The SIMD entries are safe wrappers around `#[target_feature]` functions. Each wrapper is put
//! into a table only by the builder below, after the features it needs were detected, which is
//! what makes its `unsafe` call sound; they are private to this file.

use super::attention;
use super::int4;
use super::packed::{self, Packing};
use super::{Isa, Kernels, Op, dense, int8, scalar, transposed};
use crate::quant;

/// The portable table: the reference loops, any CPU.
fn portable() -> Kernels {
    Kernels {
        isa: Isa::Portable,
        packing: Packing::Bits2,
        ternary_bits2: op("packed::gemm_portable", packed::gemm_portable),
        ternary_base3: op("packed::gemm_portable", packed::gemm_portable),
        ternary_amx: false,
        transposed_tile: op("transposed::tile", transposed::tile),
        quantize: op("quant::quantize_activations", quant::quantize_activations),
        rms_norm: op("scalar::rms_norm", scalar::rms_norm),
        softmax: op("scalar::softmax", scalar::softmax),
        scores_f32: op(
            "attention::scores_portable",
            attention::scores_portable::<f32>,
        ),
        scores_f16: op(
            "attention::scores_portable",
            attention::scores_portable::<half::f16>,
        ),
        values_f32: op(
            "attention::values_portable",
            attention::values_portable::<f32>,
        ),
        values_f16: op(
            "attention::values_portable",
            attention::values_portable::<half::f16>,
        ),
        dense_dot: op("dense::dot_portable", dense::dot_portable),
        int8_dot: op("int8::dot_portable", int8::dot_portable),
        int4_dot: op("int4::dot_portable", int4::dot_portable),
        int4_rows: op("int4::rows_portable", int4::rows_portable),
    }
}

const fn op<F>(name: &'static str, run: F) -> Op<F> {
    Op { name, run }
}

/// The table for `isa`, which this CPU runs.
pub(super) fn build(isa: Isa) -> Kernels {
    #[allow(unused_mut)]
    let mut k = Kernels { isa, ..portable() };
    #[cfg(target_arch = "x86_64")]
    x86::fill(&mut k);
    #[cfg(target_arch = "aarch64")]
    match isa {
        Isa::Neon => k.ternary_bits2 = op("neon::gemm_neon", neon::gemm_neon),
        Isa::NeonDot => k.ternary_bits2 = op("neon::gemm_dotprod", neon::gemm_dotprod),
        // NEON is part of the aarch64 baseline: the portable loops vectorise to it.
        _ => {}
    }
    k
}

#[cfg(target_arch = "aarch64")]
mod neon {
    //! The aarch64 entries: sound for the reason the x86 ones are (`build` puts them in a table
    //! only for an ISA whose features `Isa::is_supported` detected).

    use super::super::neon as simd;
    use super::super::packed::{PackedTernary, QuantizedRows};

    pub(super) fn gemm_neon(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
        // SAFETY: in a table only where NEON was detected.
        unsafe { simd::gemm_neon(w, x, r0, acc) }
    }
    pub(super) fn gemm_dotprod(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
        // SAFETY: in a table only where NEON and dotprod were detected.
        unsafe { simd::gemm_dotprod(w, x, r0, acc) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86-64 entries. Every `unsafe` call below is sound because `fill` puts a wrapper in
    //! a table only after detecting the features its function is compiled for (named in each
    //! function's `# Safety`); the slices' lengths are those the safe callers assert.

    use std::arch::is_x86_feature_detected as has;

    use super::super::int4::{Int4Input, Int4Matrix};
    use super::super::packed::{PackedTernary, Packing, QuantizedRows};
    use super::super::x86 as simd;
    use super::super::{amx, attention, dense, int4, int8, transposed};
    use super::{Isa, Kernels, op};
    use crate::storage::DType;
    use half::f16;

    pub(super) fn fill(k: &mut Kernels) {
        let (avx2, fma, f16c) = (has!("avx2"), has!("fma"), has!("f16c"));
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
        // The loops outside the kernels run compiled for AVX-512 wherever the CPU has it,
        // whatever the ISA: the library's x86-64 baseline compiles them for SSE2's four lanes
        // (3.5 % of a 512-token prompt on a 2-core Zen 4), and the bits are the same.
        if avx512 {
            k.quantize = op("x86::quantize_activations", quantize_avx512);
            k.rms_norm = op("x86::rms_norm", rms_norm_avx512);
        }
        match k.isa {
            Isa::Avx2 if avx2 => {
                k.ternary_bits2 = op("x86::gemm_avx2", gemm_avx2);
                k.transposed_tile = op("transposed::tile_avx2", tile_avx2);
                k.softmax = op("attention::softmax_avx2", softmax_avx2);
                k.scores_f32 = op("attention::scores_avx2", scores_avx2::<f32>);
                k.values_f32 = op("attention::weighted_sum_avx2", values_avx2::<f32>);
                if f16c {
                    k.scores_f16 = op("attention::scores_avx2", scores_avx2::<f16>);
                    k.values_f16 = op("attention::weighted_sum_avx2", values_avx2::<f16>);
                    k.int4_dot = op("int4::dot_avx2", int4_dot_avx2);
                    k.int4_rows = op("int4::dot_avx2 by row", int4_rows_avx2);
                }
                if fma && f16c {
                    k.dense_dot = op("dense::dot_avx2", dense_dot_avx2);
                }
                k.int8_dot = op("int8::dot_avx2", int8_dot_avx2);
            }
            Isa::Avx512Vnni if has!("avx512vnni") && has!("avx512bw") => {
                let vbmi = has!("avx512vbmi");
                k.packing = if vbmi && !simd::half_width() {
                    Packing::Base3
                } else {
                    Packing::Bits2
                };
                k.ternary_bits2 = op("x86::gemm_avx512_vnni", gemm_avx512_vnni);
                if vbmi {
                    k.ternary_base3 = op("x86::gemm_avx512_base3", gemm_avx512_base3);
                }
                k.ternary_amx = amx::enabled();
                k.transposed_tile = op("transposed::tile_avx512", tile_avx512);
                k.softmax = op("attention::softmax_avx512", softmax_avx512);
                k.scores_f32 = op("attention::scores_avx512", scores_avx512::<f32>);
                k.scores_f16 = op("attention::scores_avx512", scores_avx512::<f16>);
                k.values_f32 = op("attention::weighted_sum_avx512", values_avx512::<f32>);
                k.values_f16 = op("attention::weighted_sum_avx512", values_avx512::<f16>);
                k.dense_dot = op("dense::dot_avx512", dense_dot_avx512);
                k.int8_dot = op("int8::dot_avx512bw", int8_dot_avx512);
                k.int4_dot = op("int4::dot_vnni", int4_dot_vnni);
                k.int4_rows = op("int4::rows_vnni", int4_rows_vnni);
            }
            _ => {}
        }
    }

    fn gemm_avx2(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
        // SAFETY: in a table only where AVX2 was detected (module comment).
        unsafe { simd::gemm_avx2(w, x, r0, acc) }
    }
    fn gemm_avx512_vnni(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
        // SAFETY: in a table only where AVX-512 F/BW/VNNI were detected.
        unsafe { simd::gemm_avx512_vnni(w, x, r0, acc) }
    }
    fn gemm_avx512_base3(w: &PackedTernary, x: &QuantizedRows, r0: usize, acc: &mut [i32]) {
        // SAFETY: in a table only where AVX-512 F/BW/VNNI/VBMI were detected.
        unsafe { simd::gemm_avx512_base3(w, x, r0, acc) }
    }
    fn quantize_avx512(x: &[f32], q: &mut [i8]) -> f32 {
        // SAFETY: in a table only where AVX-512 F/BW/VL were detected (module comment).
        unsafe { simd::quantize_activations(x, q) }
    }
    fn rms_norm_avx512(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { simd::rms_norm(x, w, eps, out) }
    }
    fn tile_avx2(w: &PackedTernary, dy: &[f32], t0: usize, b: usize, acc: &mut [f32]) {
        // SAFETY: in a table only where AVX2 was detected; FMA is only a hint to its loop.
        unsafe { transposed::tile_avx2(w, dy, t0, b, acc) }
    }
    fn tile_avx512(w: &PackedTernary, dy: &[f32], t0: usize, b: usize, acc: &mut [f32]) {
        // SAFETY: in a table only where AVX-512 F/BW were detected.
        unsafe { transposed::tile_avx512(w, dy, t0, b, acc) }
    }
    fn softmax_avx2(x: &mut [f32]) {
        // SAFETY: in a table only where AVX2 was detected.
        unsafe { attention::x86::softmax_avx2(x) }
    }
    fn softmax_avx512(x: &mut [f32]) {
        // SAFETY: in a table only where AVX-512 F was detected.
        unsafe { attention::x86::softmax_avx512(x) }
    }
    fn scores_avx2<T: attention::Element>(q: &[f32], d: usize, k: &[T], s: f32, out: &mut [f32]) {
        // SAFETY: in a table only where AVX2 (and F16C for f16 keys) were detected; the keys
        // cover `out` (asserted by `attention::scores`).
        unsafe { attention::x86::scores_avx2(q, d, k, s, out) }
    }
    fn scores_avx512<T: attention::Element>(q: &[f32], d: usize, k: &[T], s: f32, out: &mut [f32]) {
        // SAFETY: in a table only where AVX-512 F was detected (it implies AVX2 and F16C); the
        // keys cover `out` (asserted by `attention::scores`).
        unsafe { attention::x86::scores_avx512(q, d, k, s, out) }
    }
    fn values_avx2<T: attention::Element>(p: &[f32], v: &[T], dw: (usize, usize), out: &mut [f32]) {
        if !dw.1.is_multiple_of(8) {
            return attention::values_portable(p, v, dw, out);
        }
        // SAFETY: in a table only where AVX2 (and F16C for f16 values) were detected; `w` is a
        // multiple of 8 (checked) and the rows lie within `v` (asserted by the caller).
        unsafe { attention::x86::weighted_sum_avx2(p, v, dw, out) }
    }
    fn values_avx512<T: attention::Element>(
        p: &[f32],
        v: &[T],
        dw: (usize, usize),
        out: &mut [f32],
    ) {
        if !dw.1.is_multiple_of(8) {
            return attention::values_portable(p, v, dw, out);
        }
        // SAFETY: in a table only where AVX-512 F was detected; as above.
        unsafe { attention::x86::weighted_sum_avx512(p, v, dw, out) }
    }
    fn dense_dot_avx2(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: in a table only where AVX2, FMA and F16C were detected.
        unsafe { dense::x86::dot_avx2(dtype, row, x) }
    }
    fn dense_dot_avx512(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: in a table only where AVX-512 F/BW were detected.
        unsafe { dense::x86::dot_avx512(dtype, row, x) }
    }
    fn int8_dot_avx2(a: &[i8], b: &[i8]) -> i32 {
        // SAFETY: in a table only where AVX2 was detected; the rows are equal multiples of 64
        // (`int8::gemm`'s padding).
        unsafe { int8::x86::dot_avx2(a, b) }
    }
    fn int8_dot_avx512(a: &[i8], b: &[i8]) -> i32 {
        // SAFETY: in a table only where AVX-512 BW was detected; as above.
        unsafe { int8::x86::dot_avx512bw(a, b) }
    }
    fn int4_dot_avx2(m: &Int4Matrix, r: usize, x: &Int4Input) -> f32 {
        let (row, scales) = m.row_parts(r);
        // SAFETY: in a table only where AVX2 and F16C were detected; the row, its scales and
        // the input hold `groups` whole groups (`row_parts`, `Int4Input::new`).
        unsafe { int4::x86::dot_avx2(row, scales, m.groups, x) }
    }
    fn int4_rows_avx2(m: &Int4Matrix, x: &Int4Input, r0: usize, inv: f32, out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            *o = int4_dot_avx2(m, r0 + k, x) * inv;
        }
    }
    fn int4_dot_vnni(m: &Int4Matrix, r: usize, x: &Int4Input) -> f32 {
        let (row, scales) = m.row_parts(r);
        // SAFETY: in a table only where AVX-512 F/BW/VNNI were detected; as above.
        unsafe { int4::x86::dot_vnni(row, scales, m.groups, x) }
    }
    fn int4_rows_vnni(m: &Int4Matrix, x: &Int4Input, r0: usize, inv: f32, out: &mut [f32]) {
        let (nibbles, scales) = m.rows_parts(r0..r0 + out.len());
        // SAFETY: in a table only where AVX-512 F/BW/VNNI were detected; `nibbles` and
        // `scales` hold exactly `out.len()` rows, the input whole lanes of groups.
        unsafe { int4::x86::rows_vnni(nibbles, scales, m.groups, x, inv, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Isa, scalar};
    use crate::quant;

    #[test]
    fn every_table_names_a_function_for_every_op() {
        for isa in Isa::available() {
            let k = isa.kernels();
            assert_eq!(k.isa, isa);
            for (op, f) in k.describe() {
                assert!(!f.is_empty(), "{}: {op}", isa.name());
            }
        }
        // A forced ISA keeps its own entries: the portable table is the reference everywhere.
        let p = Isa::Portable.kernels();
        assert_eq!(p.ternary_bits2.name, "packed::gemm_portable");
        assert_eq!(p.int8_dot.name, "int8::dot_portable");
    }

    /// Every table's quantiser and RMSNorm (AVX-512 builds where this CPU has it) give the
    /// reference's bits.
    #[test]
    fn vectorised_builds_give_the_same_bits() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 200_001) as f32 / 1000.0 - 100.0
        };
        for k in Isa::available().into_iter().map(Isa::kernels) {
            for n in [1, 7, 15, 16, 17, 100, 2560, 2561] {
                let mut x: Vec<f32> = (0..n).map(|_| next()).collect();
                if n > 20 {
                    x[3] = f32::NAN;
                    x[9] = f32::INFINITY;
                    x[11] = -0.0;
                }
                let (mut a, mut b) = (vec![0i8; n], vec![0i8; n]);
                let (sa, sb) = (
                    (k.quantize.run)(&x, &mut a),
                    quant::quantize_activations(&x, &mut b),
                );
                assert_eq!(
                    (sa.to_bits(), &a),
                    (sb.to_bits(), &b),
                    "{} quantise, {n} values",
                    k.isa.name()
                );
                let x: Vec<f32> = x
                    .iter()
                    .map(|v| if v.is_finite() { *v } else { 1.0 })
                    .collect();
                let w: Vec<f32> = (0..n).map(|_| next()).collect();
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                (k.rms_norm.run)(&x, &w, 1e-5, &mut a);
                scalar::rms_norm(&x, &w, 1e-5, &mut b);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{} rms_norm, {n} values", k.isa.name());
            }
        }
    }
}
