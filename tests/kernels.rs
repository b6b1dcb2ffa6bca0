//! Every ternary kernel this CPU runs equals the scalar oracle bit for bit on the int32
//! accumulators, with the weights in each layout (2-bit and base-3): random shapes (sizes that
//! are not multiples of any block), random and extreme activations, one token (decode) and
//! several (prefill). The transposed product of the backward pass is checked the same way, bit
//! for bit on its f32 outputs.

use std::sync::LazyLock;

use bit_ttt::__internal::kernels::Isa;
use bit_ttt::__internal::kernels::packed::{DIGITS, PackedTernary, Packing, QuantizedRows};
use bit_ttt::__internal::kernels::pool::Pool;
use bit_ttt::__internal::kernels::scalar;
use bit_ttt::__internal::quant::pack_ternary;
use bit_ttt::__internal::storage::Bytes;
use proptest::prelude::*;

/// Pools of 2 and 3 threads: decode on several threads splits the rows into one contiguous share
/// per thread and streams them one row at a time, on one thread it takes four rows at once.
static POOLS: LazyLock<Vec<Pool>> =
    LazyLock::new(|| [2, 3].map(|n| Pool::new(n).expect("thread pool")).into());

/// The oracle's accumulators, token-major, and each kernel's on 1, 2 and 3 threads, checked
/// equal.
fn check_all_kernels(
    t: &[i8],
    rows: usize,
    cols: usize,
    q: &[i8],
    n_tok: usize,
) -> Result<(), TestCaseError> {
    let hf = pack_ternary(t, rows, cols);
    let mut want = vec![0i32; rows * n_tok];
    scalar::ternary_gemm(&hf, rows, cols, q, n_tok, &mut want);
    let x = QuantizedRows::from_int8(q, n_tok);
    for (k, packing) in kernels_and_packings() {
        let packed = PackedTernary::from_hf_as(&hf, rows, cols, packing);
        for threads in 1..=3 {
            let mut got = vec![0i32; rows * n_tok];
            match threads {
                1 => k.kernels().ternary_gemm(&packed, &x, &mut got),
                n => POOLS[n - 2].install(|| k.kernels().ternary_gemm(&packed, &x, &mut got)),
            }
            for r in 0..rows {
                for tok in 0..n_tok {
                    prop_assert_eq!(
                        got[r * n_tok + tok],
                        want[tok * rows + r],
                        "kernel {} ({}) on {} threads, row {} token {}",
                        k.name(),
                        packing.name(),
                        threads,
                        r,
                        tok
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every kernel this CPU runs with both layouts (a kernel given the layout it does not read
/// fast runs the portable loop over it).
fn kernels_and_packings() -> Vec<(Isa, Packing)> {
    Isa::available()
        .into_iter()
        .flat_map(|k| [(k, Packing::Bits2), (k, Packing::Base3)])
        .collect()
}

fn ternary(len: usize) -> impl Strategy<Value = Vec<i8>> {
    proptest::collection::vec(-1i8..=1, len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_and_values((rows, cols, n_tok) in (1usize..70, 1usize..700, prop_oneof![1usize..7, 30usize..80]),
                                seed in any::<u64>()) {
        // Values from a seed: proptest shrinks the shape, the data follows. Token counts over 32
        // cross the kernels' token blocks with partial tiles at their ends.
        let mut s = seed | 1;
        let mut next = move || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let t: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
        let q: Vec<i8> = (0..n_tok * cols).map(|_| next() as u8 as i8).collect();
        check_all_kernels(&t, rows, cols, &q, n_tok)?;
    }

    #[test]
    fn extreme_activations(rows in 1usize..20, cols in 1usize..1100, fill in prop::sample::select(vec![127i8, -128, -127, 0]),
                           t in ternary(1)) {
        let weights = vec![t[0]; rows * cols];
        let mixed: Vec<i8> = (0..rows * cols).map(|i| (i % 3) as i8 - 1).collect();
        // Decode (one token) and prompt kernels; then mixed-sign weights under the same extremes.
        for n_tok in [1, 5] {
            let q = vec![fill; n_tok * cols];
            check_all_kernels(&weights, rows, cols, &q, n_tok)?;
            check_all_kernels(&mixed, rows, cols, &q, n_tok)?;
        }
    }
}

/// The transposed product (backward pass) of every kernel equals the oracle bit for bit.
fn check_transposed(
    t: &[i8],
    rows: usize,
    cols: usize,
    dy: &[f32],
    n_tok: usize,
    dx0: &[f32],
) -> Result<(), TestCaseError> {
    let hf = pack_ternary(t, rows, cols);
    let mut want = dx0.to_vec();
    scalar::ternary_gemm_t(&hf, rows, cols, dy, n_tok, &mut want);
    for (k, packing) in kernels_and_packings() {
        let packed = PackedTernary::from_hf_as(&hf, rows, cols, packing);
        let mut got = dx0.to_vec();
        k.kernels().ternary_gemm_t(&packed, dy, n_tok, &mut got);
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        prop_assert!(
            same,
            "kernel {} ({}) differs from the oracle ({}x{}, {} tokens)",
            k.name(),
            packing.name(),
            rows,
            cols,
            n_tok
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn transposed_random_shapes((rows, cols, n_tok) in (1usize..90, 1usize..700, 1usize..40),
                                seed in any::<u64>()) {
        let mut s = seed | 1;
        let mut next = move || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let t: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
        let mut uniform = move || (next() >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0;
        let dy: Vec<f32> = (0..n_tok * rows).map(|_| uniform() * 3.0).collect();
        let dx0: Vec<f32> = (0..n_tok * cols).map(|_| uniform()).collect();
        check_transposed(&t, rows, cols, &dy, n_tok, &dx0)?;
    }
}

#[test]
fn transposed_extremes() {
    // Huge, tiny and signed-zero gradients; all-minus-one and all-zero weights.
    for (rows, cols, n_tok) in [(7, 300, 17), (64, 513, 3), (1, 1, 1)] {
        for fill in [-1i8, 0, 1] {
            let t = vec![fill; rows * cols];
            let dy: Vec<f32> = (0..n_tok * rows)
                .map(|i| [1e30, -1e-30, -0.0, 0.0, 3.5][i % 5])
                .collect();
            check_transposed(&t, rows, cols, &dy, n_tok, &vec![0.0; n_tok * cols]).unwrap();
        }
    }
}

#[test]
fn model_sized_rows() {
    // 2B4T widths: 2560 and 6912 columns (whole blocks), a decode and a prefill batch.
    for cols in [2560usize, 6912] {
        let rows = 37;
        let t: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 7919) % 3) as i8 - 1)
            .collect();
        for n_tok in [1usize, 9] {
            let q: Vec<i8> = (0..n_tok * cols)
                .map(|i| ((i * 31 + 7) % 256) as u8 as i8)
                .collect();
            check_all_kernels(&t, rows, cols, &q, n_tok).unwrap();
        }
    }
}

/// A base-3 file may hold any byte, the 13 values no weights pack to included (a damaged or
/// foreign file): every kernel reads each byte as `DIGITS` defines it, so they all agree.
#[test]
fn every_base3_byte_reads_as_its_digits() {
    // Rows of three blocks (960 columns, the last block part padding), every byte value in
    // each position class, tokens of mixed sign.
    let (rows, cols) = (12usize, 900usize);
    let row_bytes = 3 * 64;
    let data: Vec<u8> = (0..rows * row_bytes)
        .map(|i| (i * 37 + i / 256) as u8)
        .collect();
    let packed = PackedTernary {
        rows,
        cols,
        cols_padded: 960,
        packing: Packing::Base3,
        data: Bytes::owned(data.clone()),
    };
    for n_tok in [1usize, 6] {
        let q: Vec<i8> = (0..n_tok * cols)
            .map(|i| ((i * 113 + 5) % 256) as u8 as i8)
            .collect();
        let x = QuantizedRows::from_int8(&q, n_tok);
        // The sums straight from the definition, padding columns (≥ cols) reading zeros.
        let mut want = vec![0i32; rows * n_tok];
        for r in 0..rows {
            for t in 0..n_tok {
                let mut sum = 0i32;
                for (i, &b) in data[r * row_bytes..(r + 1) * row_bytes].iter().enumerate() {
                    let (block, j) = (i / 64, i % 64);
                    for (k, &d) in DIGITS[b as usize].iter().enumerate() {
                        let c = block * 320 + 64 * k + j;
                        if c < cols {
                            sum += i32::from(d) * i32::from(q[t * cols + c]);
                        }
                    }
                }
                want[r * n_tok + t] = sum;
            }
        }
        for k in Isa::available() {
            for threads in 1..=2 {
                let mut got = vec![0i32; rows * n_tok];
                match threads {
                    1 => k.kernels().ternary_gemm(&packed, &x, &mut got),
                    _ => POOLS[0].install(|| k.kernels().ternary_gemm(&packed, &x, &mut got)),
                }
                assert_eq!(
                    got,
                    want,
                    "kernel {} on {threads} threads, {n_tok} tokens",
                    k.name()
                );
            }
        }
    }
}

#[test]
fn kernels_are_detected_and_named() {
    let avail = Isa::available();
    assert_eq!(avail[0], Isa::Portable);
    assert!(avail.contains(&Isa::best()));
    for k in Isa::ALL {
        assert_eq!(Isa::parse(k.name()).unwrap(), k);
    }
    assert!(Isa::parse("sse9").unwrap_err().message().contains("sse9"));
    let names: Vec<&str> = avail.iter().map(|k| k.name()).collect();
    println!("kernels on this CPU: {names:?}");
    // Under emulation the test script states which kernels the emulated CPU must offer, so a
    // kernel cannot silently drop out of the run.
    if let Ok(expected) = std::env::var("BIT_TTT_EXPECT_KERNELS") {
        assert_eq!(names.join(","), expected);
    }
}
