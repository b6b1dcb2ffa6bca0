//! Prefill and decode speed of the GPU forward pass (`--features cuda`), against the GPU's
//! memory-bandwidth roofline. Run on the GPU machine (see docs/CUDA.md):
//!
//!     cuda_bench MODEL_DIR [PROMPT_TOKENS [GEN_TOKENS]]
//!
//! Prints one JSON line: {"gpu", "prefill_tok_s", "decode_tok_s", "weight_bytes",
//! "decode_bytes_per_token", "decode_gb_s", "upload_s"}.

use std::time::Instant;

use bit_ttt::{Model, ModelParams, cuda};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .ok_or("usage: cuda_bench MODEL_DIR [PROMPT_TOKENS [GEN_TOKENS]]")?;
    let prompt: usize = args.get(2).map_or(Ok(512), |s| s.parse())?;
    let gen_tokens: usize = args.get(3).map_or(Ok(128), |s| s.parse())?;
    let model = Model::load(dir, &ModelParams::default())?;
    let t = Instant::now();
    let gm = cuda::GpuModel::new(&model)?;
    let upload_s = t.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size as u32;
    let tokens: Vec<u32> = (0..prompt as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();

    // Warm-up (module load, first allocations), then the measured runs.
    let mut cache = gm.new_cache(prompt + gen_tokens + 8)?;
    gm.forward(&mut cache, &tokens[..8.min(prompt)], false)?;
    let mut cache = gm.new_cache(prompt + gen_tokens)?;
    let t = Instant::now();
    let logits = gm.forward(&mut cache, &tokens, false)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next = argmax(&logits);
    let t = Instant::now();
    for _ in 0..gen_tokens {
        let logits = gm.forward(&mut cache, &[next], false)?;
        next = argmax(&logits);
    }
    let decode_s = t.elapsed().as_secs_f64();
    let weight_bytes = gm.device_bytes();
    let kv_bytes = cache.len() * model.config().kv_dim() * model.config().num_layers * 8;
    let per_token = weight_bytes + kv_bytes / 2; // mean KV read over the decoded tokens, roughly
    let decode_tok_s = gen_tokens as f64 / decode_s;
    println!(
        "{{\"gpu\": \"{}\", \"prompt_tokens\": {prompt}, \"gen_tokens\": {gen_tokens}, \"prefill_tok_s\": {:.1}, \"decode_tok_s\": {:.1}, \"weight_bytes\": {weight_bytes}, \"decode_bytes_per_token\": {per_token}, \"decode_gb_s\": {:.1}, \"upload_s\": {upload_s:.2}}}",
        cuda::describe(),
        prompt as f64 / prefill_s,
        decode_tok_s,
        decode_tok_s * per_token as f64 / 1e9,
    );
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}
