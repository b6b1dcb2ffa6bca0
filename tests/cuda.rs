//! The CUDA backend (cargo feature `cuda`) against the CPU oracle, bit for bit on the integer
//! outputs, on sizes that are not multiples of any block and on extreme activations.
//!
//! Without a GPU (CI) the kernel tests have nothing to run on: they check instead that CUDA is
//! off with a reason and that the CPU path works. `BIT_TTT_REQUIRE_CUDA=1` (the GPU run, see
//! docs/CUDA.md) turns a missing GPU into a failure.
#![cfg(feature = "cuda")]

mod common;

use bit_ttt::__internal::cuda;
use bit_ttt::__internal::kernels::scalar;
use bit_ttt::__internal::quant::{pack_ternary, quantize_activations};
use bit_ttt::{Model, ModelParams, Session, SessionParams};

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
    let info = bit_ttt::system_info();
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
        // The reference session must run on the CPU (the default device is the GPU here).
        let model = Model::load(&dir, &params(bit_ttt::Device::Cpu, None)).unwrap();
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
        let mut step_max = 0.0f32;
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
            // Decode steps run other launches (the captured graph, projections that quantise
            // their own input): their logits too.
            let d = gpu_last
                .iter()
                .zip(&last)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-3, "{name}: decode step {same}: logits differ by {d}");
            step_max = step_max.max(d);
        }
        println!("{name}: {same} greedy tokens identical, decode logits within {step_max:.2e}");
        assert!(same >= 16, "{name}: only {same} greedy tokens compared");
    }
}

fn params(device: bit_ttt::Device, gpu_layers: Option<usize>) -> ModelParams {
    ModelParams {
        device,
        gpu_layers,
        ..Default::default()
    }
}

fn greedy(max_tokens: usize) -> bit_ttt::GenerateParams {
    bit_ttt::GenerateParams {
        sampling: bit_ttt::SamplingParams::greedy(),
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Without a GPU, an explicit CUDA device is refused with the reason; `auto` runs on the CPU.
#[test]
fn device_choice_is_honoured_or_refused_with_the_reason() {
    let dir = common::fixture("bitnet_packed_auto");
    let auto = Model::load(&dir, &ModelParams::default()).unwrap();
    let cpu = Model::load(&dir, &params(bit_ttt::Device::Cpu, None)).unwrap();
    assert_eq!(cpu.device(), "cpu");
    assert_eq!(cpu.gpu_layers(), 0);
    let err = Model::load(&dir, &params(bit_ttt::Device::Cuda(1), None))
        .err()
        .unwrap();
    assert!(err.to_string().contains("cuda:1"), "{err}");
    match cuda::status() {
        Ok(_) => {
            let layers = auto.config().num_layers;
            assert_eq!(auto.gpu_layers(), layers, "{}", auto.device());
            assert!(auto.device().starts_with("cuda:0"), "{}", auto.device());
            let none = Model::load(&dir, &params(bit_ttt::Device::Cuda(0), Some(0))).unwrap();
            assert_eq!(none.device(), "cpu");
        }
        Err(why) => {
            assert_eq!(auto.device(), "cpu");
            let err = Model::load(&dir, &params(bit_ttt::Device::Cuda(0), None))
                .err()
                .unwrap();
            assert_eq!(err.kind(), bit_ttt::ErrorKind::Unsupported);
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}

/// Candidates from the device are the best logits of the row the GPU computes, in the
/// sampler's order (ties by lower id).
#[test]
fn device_candidates_are_the_best_logits_in_order() {
    if gpu().is_none() {
        return;
    }
    for (name, dir, _) in common::parity_cases() {
        let model = Model::load(&dir, &ModelParams::default()).unwrap();
        let Ok(gm) = cuda::GpuModel::new(&model) else {
            continue;
        };
        let tokens = model
            .tokenize("Candidates for sampling, on the device", true)
            .unwrap();
        let mut a = gm.new_cache(64).unwrap();
        let mut b = gm.new_cache(64).unwrap();
        let row = gm.forward(&mut a, &tokens, false).unwrap();
        let k = gm.max_candidates().min(row.len());
        let top = gm.forward_top(&mut b, &tokens, k).unwrap();
        let mut want: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        want.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        want.truncate(k);
        assert_eq!(top, want, "{name}");
        // Decode steps (the captured graph) too.
        for _ in 0..4 {
            let next = top[0].0;
            let row = gm.forward(&mut a, &[next], false).unwrap();
            let t = gm.forward_top(&mut b, &[next], 1).unwrap();
            let best = bit_ttt::__internal::sampling::argmax(&row);
            assert_eq!(t, vec![(best as u32, row[best])], "{name}");
        }
        println!("{name}: {k} device candidates equal the sorted row");
    }
}

/// Sessions of a model loaded on the GPU (whole, and with half of its layers) generate what
/// the CPU generates; with part offloaded the logits are the CPU's to the bit (the GPU's
/// hidden states are, and the CPU computes the head).
#[test]
fn sessions_on_the_gpu_generate_what_the_cpu_generates() {
    if gpu().is_none() {
        return;
    }
    let prompt = "The committee met on Tuesday to discuss the new budget, and several members said";
    for (name, dir, _) in common::parity_cases() {
        let cpu = Model::load(&dir, &params(bit_ttt::Device::Cpu, None)).unwrap();
        let layers = cpu.config().num_layers;
        let sp = SessionParams {
            n_ctx: 256,
            ..Default::default()
        };
        let mut cs = Session::new(&cpu, &sp).unwrap();
        let want = cs.generate(prompt, &greedy(20), |_| true).unwrap();
        let tokens = cpu.tokenize(prompt, true).unwrap();
        let want_logits = Session::new(&cpu, &sp).unwrap().eval(&tokens).unwrap();
        for gpu_layers in [None, Some(layers / 2)] {
            let model = match Model::load(&dir, &params(bit_ttt::Device::Cuda(0), gpu_layers)) {
                Ok(m) => m,
                Err(e) if e.kind() == bit_ttt::ErrorKind::Unsupported => {
                    println!("{name}: not on the GPU ({e})");
                    break;
                }
                Err(e) => panic!("{name}: {e}"),
            };
            let mut s = Session::new(&model, &sp).unwrap();
            let got = s.generate(prompt, &greedy(20), |_| true).unwrap();
            println!("{name} on {}: {:?}", model.device(), got.text);
            assert_eq!(got.tokens, want.tokens, "{name}, {gpu_layers:?} layers");
            let logits = Session::new(&model, &sp).unwrap().eval(&tokens).unwrap();
            if gpu_layers.is_some() {
                assert!(
                    logits == want_logits,
                    "{name}: partial offload logits differ"
                );
            } else {
                let max = logits
                    .iter()
                    .zip(&want_logits)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(max < 1e-3, "{name}: {max}");
            }
            // Sampling with the device's candidates (top-k 40) draws what the CPU draws.
            let sampled = bit_ttt::GenerateParams {
                sampling: bit_ttt::SamplingParams {
                    seed: Some(7),
                    ..Default::default()
                },
                max_tokens: 16,
                ignore_eos: true,
                ..Default::default()
            };
            let a = Session::new(&model, &sp)
                .unwrap()
                .generate(prompt, &sampled, |_| true)
                .unwrap();
            let b = Session::new(&cpu, &sp)
                .unwrap()
                .generate(prompt, &sampled, |_| true)
                .unwrap();
            assert_eq!(a.tokens, b.tokens, "{name}: sampled tokens");
            // Scores.
            let (x, y) = (
                Session::new(&model, &sp).unwrap().score(prompt).unwrap(),
                Session::new(&cpu, &sp).unwrap().score(prompt).unwrap(),
            );
            for (p, q) in x.nll.iter().zip(&y.nll) {
                assert!((p - q).abs() < 1e-3, "{name}: nll {p} vs {q}");
            }
        }
    }
}

/// A GPU session's context survives adapt (which moves it to the CPU), a saved state, and
/// dropping the adapters (which brings it back): every step generates what a CPU session does.
#[test]
fn gpu_session_state_and_adapt_follow_the_cpu() {
    if gpu().is_none() {
        return;
    }
    let dir = common::sample_model();
    let cpu = Model::load(&dir, &params(bit_ttt::Device::Cpu, None)).unwrap();
    for gpu_layers in [None, Some(cpu.config().num_layers / 2)] {
        let gpu_model = Model::load(&dir, &params(bit_ttt::Device::Cuda(0), gpu_layers)).unwrap();
        let sp = SessionParams {
            n_ctx: 512,
            ..Default::default()
        };
        let run = |m: &Model| -> Vec<Vec<u32>> {
            let mut s = Session::new(m, &sp).unwrap();
            let mut out = Vec::new();
            out.push(
                s.generate("Once upon a time", &greedy(12), |_| true)
                    .unwrap()
                    .tokens,
            );
            let blob = s.save_state();
            out.push(s.generate(" Then", &greedy(12), |_| true).unwrap().tokens);
            s.load_state(&blob).unwrap();
            out.push(s.generate(" Then", &greedy(12), |_| true).unwrap().tokens);
            let ap = bit_ttt::AdaptParams {
                keep_kv: true,
                ..Default::default()
            };
            s.adapt("The dragon of the north hoards silver bells.", &ap, |_| {
                true
            })
            .unwrap();
            out.push(
                s.generate(" The dragon", &greedy(12), |_| true)
                    .unwrap()
                    .tokens,
            );
            s.reset_parts(bit_ttt::ResetParts::ADAPTERS);
            out.push(s.generate(" And", &greedy(12), |_| true).unwrap().tokens);
            out
        };
        assert_eq!(
            run(&gpu_model),
            run(&cpu),
            "{gpu_layers:?} layers on the GPU"
        );
        println!(
            "{}: state, adapt and reset follow the CPU",
            gpu_model.device()
        );
    }
}
