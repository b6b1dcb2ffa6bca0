//! Prefill and decode speed of the GPU forward pass (`--features cuda`), against the GPU's
//! memory-bandwidth roofline, with a per-kernel profile of one decode step, and the cost of
//! partial offload through sessions. Run on the GPU machine (see docs/CUDA.md):
//!
//!     cuda_bench MODEL_DIR [PROMPT_TOKENS [GEN_TOKENS [no-sessions]]]
//!
//! Prints JSON lines: one for the GPU pass ("mode": "gpu_pass"), one per kernel name of a
//! profiled decode step ("mode": "profile"), one per session setup ("mode": "session").

use std::collections::BTreeMap;
use std::time::Instant;

use bit_ttt::__internal::cuda;
use bit_ttt::{Device, GenerateParams, Model, ModelParams, SamplingParams, Session, SessionParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .ok_or("usage: cuda_bench MODEL_DIR [PROMPT_TOKENS [GEN_TOKENS]]")?;
    let prompt: usize = args.get(2).map_or(Ok(512), |s| s.parse())?;
    let gen_tokens: usize = args.get(3).map_or(Ok(128), |s| s.parse())?;
    let cpu_params = ModelParams {
        device: Device::Cpu,
        ..Default::default()
    };
    let model = Model::load(dir, &cpu_params)?;
    let t = Instant::now();
    let gm = cuda::GpuModel::new(&model)?;
    let upload_s = t.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size as u32;
    let tokens: Vec<u32> = (0..prompt as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();

    // Warm-up (module load, first allocations, the graph), then the measured runs.
    let mut cache = gm.new_cache(prompt + gen_tokens + 8)?;
    gm.forward(&mut cache, &tokens[..8.min(prompt)], false)?;
    gm.forward_top(&mut cache, &tokens[..1], 1)?;
    let mut cache = gm.new_cache(prompt + gen_tokens + 1)?;
    let t = Instant::now();
    let logits = gm.forward(&mut cache, &tokens, false)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next = bit_ttt::__internal::sampling::argmax(&logits) as u32;
    // Greedy decoding with the token picked on the device (what sessions do).
    let mut picked = Vec::with_capacity(gen_tokens);
    let t = Instant::now();
    for _ in 0..gen_tokens {
        next = gm.forward_top(&mut cache, &[next], 1)?[0].0;
        picked.push(next);
    }
    let decode_s = t.elapsed().as_secs_f64();
    let weight_bytes = gm.device_bytes();
    let kv_row = model.config().kv_dim() * model.config().num_layers * 8;
    // Mean KV bytes read per decoded token (f32 keys and values of the positions seen).
    let per_token = weight_bytes + kv_row * (prompt + gen_tokens / 2);
    let decode_tok_s = gen_tokens as f64 / decode_s;
    // The same decode, downloading the whole row of logits each step.
    let mut cache2 = gm.new_cache(prompt + gen_tokens + 1)?;
    gm.forward(&mut cache2, &tokens, false)?;
    let mut n2 = bit_ttt::__internal::sampling::argmax(&logits) as u32;
    let mut picked2 = Vec::with_capacity(gen_tokens);
    let t = Instant::now();
    for _ in 0..gen_tokens {
        let l = gm.forward(&mut cache2, &[n2], false)?;
        n2 = bit_ttt::__internal::sampling::argmax(&l) as u32;
        picked2.push(n2);
    }
    let decode_rows_tok_s = gen_tokens as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"mode\": \"gpu_pass\", \"gpu\": \"{}\", \"prompt_tokens\": {prompt}, \"gen_tokens\": {gen_tokens}, \"prefill_tok_s\": {:.1}, \"decode_tok_s\": {:.1}, \"same_tokens_both_ways\": {}, \"decode_logit_rows_tok_s\": {decode_rows_tok_s:.1}, \"weight_bytes\": {weight_bytes}, \"decode_bytes_per_token\": {per_token}, \"decode_gb_s\": {:.1}, \"upload_s\": {upload_s:.2}}}",
        cuda::describe(),
        prompt as f64 / prefill_s,
        decode_tok_s,
        picked == picked2,
        decode_tok_s * per_token as f64 / 1e9,
    );

    // One decode step, uncaptured, with an event after each launch.
    let profile = gm.profile(&mut cache, &[next])?;
    let mut by_kernel: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for (name, us) in &profile {
        let e = by_kernel.entry(name).or_default();
        e.0 += 1;
        e.1 += us;
    }
    let total: f64 = profile.iter().map(|p| p.1).sum();
    for (name, (count, us)) in by_kernel {
        println!(
            "{{\"mode\": \"profile\", \"kernel\": \"{name}\", \"launches\": {count}, \"us\": {us:.1}, \"share\": {:.3}}}",
            us / total
        );
    }
    println!(
        "{{\"mode\": \"profile\", \"kernel\": \"total\", \"launches\": {}, \"us\": {total:.1}}}",
        profile.len()
    );
    drop((cache, cache2, gm));
    if args.get(4).is_some_and(|a| a == "no-sessions") {
        return Ok(());
    }

    // Sessions: the whole model, half of its layers and none on the GPU.
    let layers = model.config().num_layers;
    let mut runs: Vec<Vec<u32>> = Vec::new();
    for gpu_layers in [Some(layers), Some(layers / 2), Some(0)] {
        let m = Model::load(
            dir,
            &ModelParams {
                device: Device::Auto,
                gpu_layers,
                ..Default::default()
            },
        )?;
        let mut s = Session::new(
            &m,
            &SessionParams {
                n_ctx: prompt + gen_tokens + 8,
                ..Default::default()
            },
        )?;
        let cpu_gen = if gpu_layers == Some(0) {
            gen_tokens.min(16)
        } else {
            gen_tokens
        };
        let p = GenerateParams {
            sampling: SamplingParams::greedy(),
            max_tokens: cpu_gen,
            ignore_eos: true,
            ..Default::default()
        };
        let r = s.generate_tokens(&tokens, &p, |_| true)?;
        runs.push(r.tokens.clone());
        println!(
            "{{\"mode\": \"session\", \"device\": \"{}\", \"gpu_layers\": {}, \"prefill_tok_s\": {:.1}, \"decode_tok_s\": {:.1}, \"threads\": {}}}",
            m.device(),
            m.gpu_layers(),
            prompt as f64 / r.prefill_seconds,
            r.tokens.len() as f64 / r.decode_seconds,
            m.n_threads()
        );
    }
    // The CPU's greedy tokens (the last run) against the GPU's, whole and in part.
    let cpu = runs.last().cloned().unwrap_or_default();
    let agree: Vec<usize> = runs
        .iter()
        .map(|r| r.iter().zip(&cpu).take_while(|(a, b)| a == b).count())
        .collect();
    println!(
        "{{\"mode\": \"check\", \"cpu_tokens\": {}, \"greedy_tokens_equal_to_cpu\": {agree:?}}}",
        cpu.len()
    );
    Ok(())
}
