//! The CUDA backend (cargo feature `cuda`) against the CPU oracle, bit for bit on the integer
//! outputs, on sizes that are not multiples of any block and on extreme activations.
//!
//! Without a GPU (CI) the kernel tests have nothing to run on: they check instead that CUDA is
//! off with a reason and that the CPU path works. `BIT_TTT_REQUIRE_CUDA=1` (the GPU run, see
//! docs/CUDA.md) turns a missing GPU into a failure.
#![cfg(feature = "cuda")]

mod common;

use bit_ttt::kernels::scalar;
use bit_ttt::quant::{pack_ternary, quantize_activations};
use bit_ttt::{Model, ModelParams, Session, SessionParams, cuda};

fn gpu() -> Option<&'static cuda::Gpu> {
    match cuda::status() {
        Ok(g) => {
            println!("GPU: {}", cuda::describe());
            Some(g)
        }
        Err(why) => {
            assert!(
                std::env::var_os("BIT_TTT_REQUIRE_CUDA").is_none(),
                "BIT_TTT_REQUIRE_CUDA is set but CUDA is off: {why}"
            );
            println!("CUDA is off here ({why}); the kernel comparisons need a GPU");
            None
        }
    }
}

/// xorshift64*: the same numbers on every machine.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

#[test]
fn cuda_off_or_on_is_reported_and_the_cpu_path_runs() {
    let info = bit_ttt::kernels::system_info();
    let line = info.lines().find(|l| l.starts_with("cuda: ")).unwrap();
    match cuda::status() {
        Ok(g) => assert!(line.contains(&g.name), "{line}"),
        Err(why) => assert_eq!(line, format!("cuda: off ({why})")),
    }
    let model = Model::load(
        common::fixture("bitnet_packed_auto"),
        &ModelParams::default(),
    )
    .unwrap();
    let mut s = Session::new(&model, &SessionParams::default()).unwrap();
    assert!(
        s.score("The quick brown fox")
            .unwrap()
            .perplexity()
            .is_finite()
    );
}

#[test]
fn quantize_rows_equals_the_cpu_quantiser() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(0x5EED_0001);
    for cols in [1usize, 3, 7, 100, 255, 256, 257, 2560, 2561, 6913] {
        let n_tok = 1 + rng.below(4) as usize;
        let mut x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f32() * 7.0).collect();
        // Extremes: a zero row, a row with one huge value, exact half-way products.
        x[..cols].fill(0.0);
        if n_tok > 1 {
            x[cols] = 1e30;
        }
        let (q, s) = g.quantize_rows(&x, cols).unwrap();
        for t in 0..n_tok {
            let mut want = vec![0i8; cols];
            let ws = quantize_activations(&x[t * cols..(t + 1) * cols], &mut want);
            assert_eq!(s[t].to_bits(), ws.to_bits(), "cols {cols} token {t}: scale");
            assert_eq!(
                &q[t * cols..(t + 1) * cols],
                &want[..],
                "cols {cols} token {t}"
            );
        }
    }
}

#[test]
fn ternary_gemv_equals_the_scalar_oracle() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(0x5EED_0002);
    let shapes = [
        (1, 1),
        (1, 5),
        (3, 4),
        (5, 3),
        (7, 129),
        (17, 127),
        (64, 128),
        (100, 1000),
        (257, 31),
        (2560, 2560),
        (2561, 6913),
        (6912, 2560),
    ];
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let n_tok = 1 + rng.below(3) as usize;
        let t: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
        let packed = pack_ternary(&t, rows, cols);
        let mut q: Vec<i8> = (0..n_tok * cols).map(|_| rng.next() as i8).collect();
        match i % 4 {
            1 => q.fill(127),
            2 => q.fill(-128),
            3 => q[..cols].fill(0),
            _ => {}
        }
        let w = g.upload_ternary(&packed, rows, cols).unwrap();
        let got = g.ternary_gemv(&w, &q).unwrap();
        let mut want = vec![0i32; n_tok * rows];
        scalar::ternary_gemm(&packed, rows, cols, &q, n_tok, &mut want);
        assert_eq!(got, want, "[{rows}, {cols}] × {n_tok} tokens");
    }
}

#[test]
fn bad_shapes_are_named_errors() {
    let Some(g) = gpu() else { return };
    let err = g.upload_ternary(&[0u8; 5], 4, 4).err().unwrap();
    assert!(err.to_string().contains("packed weights"), "{err}");
    let w = g.upload_ternary(&[0u8; 4], 4, 4).unwrap();
    let err = g.ternary_gemv(&w, &[0i8; 5]).err().unwrap();
    assert!(err.to_string().contains("activations"), "{err}");
}

fn argmax(row: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i, v, best.1);
        } else if v > best.2 {
            best.2 = v;
        }
    }
    (best.0, best.1 - best.2)
}

#[test]
fn gpu_model_is_refused_with_the_reason_when_cuda_is_off() {
    let model = Model::load(
        common::fixture("bitnet_packed_auto"),
        &ModelParams::default(),
    )
    .unwrap();
    match cuda::status() {
        Ok(_) => assert!(cuda::GpuModel::new(&model).is_ok()),
        Err(why) => {
            let err = cuda::GpuModel::new(&model).err().unwrap();
            assert_eq!(err.kind(), bit_ttt::ErrorKind::Unsupported);
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}

/// The whole forward pass on the GPU against the CPU, on every fixture and the sample model. The
/// hidden states are the CPU's bit for bit (kernels/bitnet.cu keeps the CPU's order of every sum
/// that feeds a layer), so only the head's summation order separates the logits, and greedy
/// decoding must agree token for token.
#[test]
fn gpu_forward_matches_the_cpu_on_every_model() {
    if gpu().is_none() {
        return;
    }
    let prompt = "The committee met on Tuesday to discuss the new budget, and several members said";
    for (name, dir, _) in common::parity_cases() {
        let model = Model::load(&dir, &ModelParams::default()).unwrap();
        let gm = match cuda::GpuModel::new(&model) {
            Ok(g) => g,
            Err(e) if e.kind() == bit_ttt::ErrorKind::Unsupported => {
                println!("{name}: not on the GPU yet ({e})");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        let tokens = model.tokenize(prompt, true).unwrap();
        let vocab = model.config().vocab_size;
        let mut cpu = Session::new(
            &model,
            &SessionParams {
                n_ctx: 256,
                ..Default::default()
            },
        )
        .unwrap();
        let want = cpu.eval(&tokens).unwrap();
        let mut cache = gm.new_cache(256).unwrap();
        let got = gm.forward(&mut cache, &tokens, true).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{name}: {} prompt tokens, max |logit GPU - CPU| = {max:.2e}",
            tokens.len()
        );
        assert!(max < 1e-3, "{name}: logits differ by {max}");

        // Greedy decoding, one token at a time on both.
        let mut last = want[(tokens.len() - 1) * vocab..].to_vec();
        let mut gpu_last = got[(tokens.len() - 1) * vocab..].to_vec();
        let mut same = 0;
        for _ in 0..24 {
            let (next, gap) = argmax(&last);
            let (gnext, _) = argmax(&gpu_last);
            if gap < 1e-4 {
                break; // an exact tie: the head's summation order may break it either way
            }
            assert_eq!(gnext, next, "{name}: greedy token {same} differs");
            same += 1;
            last = cpu.eval(&[next as u32]).unwrap();
            gpu_last = gm.forward(&mut cache, &[next as u32], false).unwrap();
        }
        println!("{name}: {same} greedy tokens identical");
        assert!(same >= 16, "{name}: only {same} greedy tokens compared");
    }
}
