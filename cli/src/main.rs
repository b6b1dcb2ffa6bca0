//! `bit-ttt`: run BitNet b1.58 models from the command line.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use bit_ttt::Packing;
use bit_ttt::{
    ChatMessage, GenerateParams, HeadFormat, KvType, Model, ModelParams, SamplingParams, Session,
    SessionParams,
};
use clap::{Args, Parser, Subcommand};

mod adapt;
mod sample;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "bit-ttt",
    version,
    about = "Ternary (BitNet b1.58) LLM inference and test-time training, on CPU and NVIDIA GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt, streamed to stdout.
    Generate(GenerateArgs),
    /// Chat interactively (one line per user turn; an empty line or EOF ends).
    Chat(ChatArgs),
    /// Perplexity of a text file.
    Score(ScoreArgs),
    /// Architecture, parameter counts and memory of a model.
    Info(InfoArgs),
    /// Prefill and decode speed, load time and peak memory, per thread count.
    Bench(BenchArgs),
    /// Write a model as one pre-packed file that loads without repacking (zero-copy mmap).
    Convert(ConvertArgs),
    /// Learn from a text: train the session's LoRA adapters on it (test-time training).
    Adapt(adapt::AdaptArgs),
    /// Measure adapt: split-half bits/token on held-out documents, with controls.
    AdaptBench(adapt::AdaptBenchArgs),
}

#[derive(Args)]
struct ConvertArgs {
    /// Hugging Face model folder.
    #[arg(long, short)]
    model: PathBuf,
    /// The file to write (load it with --model FILE).
    #[arg(long, short)]
    out: PathBuf,
    /// Also store the output head quantised (int8 or int4): loading with that --head then maps
    /// it instead of quantising at every load.
    #[arg(long, default_value = "native")]
    head: String,
    /// Ternary layout: base3 (1.6 bits per weight, read fast by the AVX-512 VBMI kernel), 2bit
    /// (read by every kernel), or auto (this CPU's fastest kernel's). A CPU without that
    /// kernel repacks base-3 at load.
    #[arg(long, default_value = "auto")]
    packing: String,
}

/// The flags every command that loads a model takes (`#[command(flatten)]`).
#[derive(Args)]
pub struct LoadArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json), or a file
    /// written by `bit-ttt convert`. Default: the sample model shipped in models/sample.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Ternary kernel (portable, avx2, avx512vnni, neon, neondot); default: the fastest this CPU runs.
    #[arg(long)]
    kernel: Option<String>,
    /// Compute logits with an int8 copy of the output head (same as --head int8).
    #[arg(long)]
    int8_head: bool,
    /// Output head format: native, int8 or int4 (fewer bytes per token, small accuracy cost).
    #[arg(long)]
    head: Option<String>,
    /// KV cache type: f32 (exact) or f16 (half the memory; faster decode in long contexts).
    #[arg(long, default_value = "f32")]
    kv_cache: String,
    /// Device: auto (the GPU when this build has CUDA and one is present), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Layers to run on the GPU, from the first (default: all, and the output head); the CPU
    /// runs the rest.
    #[arg(long)]
    gpu_layers: Option<usize>,
}

impl LoadArgs {
    /// The model's path: `--model`, or else the shipped sample model.
    fn path(&self) -> bit_ttt::Result<PathBuf> {
        model_path(&self.model)
    }

    fn params(&self, n_threads: usize) -> bit_ttt::Result<ModelParams> {
        Ok(ModelParams {
            n_threads,
            kernel: self
                .kernel
                .as_deref()
                .map(bit_ttt::Isa::parse)
                .transpose()?,
            head: head_format(&self.head, self.int8_head)?,
            device: bit_ttt::Device::parse(&self.device)?,
            gpu_layers: self.gpu_layers,
        })
    }

    fn kv_cache(&self) -> bit_ttt::Result<KvType> {
        KvType::parse(&self.kv_cache)
    }
}

#[derive(Args)]
pub struct ModelArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Context length (0 = the model's maximum).
    #[arg(long, default_value_t = 0)]
    ctx: usize,
}

/// `--head`, or int8 for `--int8-head`, or native.
fn head_format(head: &Option<String>, int8_head: bool) -> bit_ttt::Result<HeadFormat> {
    match head {
        Some(name) => HeadFormat::parse(name),
        None if int8_head => Ok(HeadFormat::Int8),
        None => Ok(HeadFormat::Native),
    }
}

/// The model a command runs: `--model`, or else the shipped sample model.
fn model_path(arg: &Option<PathBuf>) -> bit_ttt::Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.clone()),
        None => sample::sample_model(),
    }
}

impl ModelArgs {
    pub fn load(&self) -> bit_ttt::Result<(Model, Session)> {
        let model = Model::load(self.load.path()?, &self.load.params(self.threads)?)?;
        let session = Session::new(
            &model,
            &SessionParams {
                n_ctx: self.ctx,
                kv_cache: self.load.kv_cache()?,
                ..Default::default()
            },
        )?;
        Ok((model, session))
    }
}

#[derive(Args)]
struct SamplingArgs {
    /// Most tokens to generate (0 = until the context is full).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Sampler seed (same seed, same text).
    #[arg(long, default_value_t = bit_ttt::DEFAULT_SEED)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past the model's end-of-text tokens.
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    fn params(&self) -> GenerateParams {
        GenerateParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: Some(self.seed),
                ..SamplingParams::default()
            },
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            ..GenerateParams::default()
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt: raw text, or the user message with --chat.
    #[arg(long, short)]
    prompt: String,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// End with one JSON line: {"text", "tokens", "prompt_tokens", "stop_reason"}.
    #[arg(long)]
    json: bool,
    /// Start from a session saved by `adapt --save-state` (its adapters and context).
    #[arg(long)]
    load_state: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score (UTF-8).
    #[arg(long)]
    text_file: PathBuf,
    /// Print one JSON line: {"tokens", "nll_sum", "nll_mean", "perplexity"}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Thread counts to measure, e.g. 1,2.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Most prompt tokens computed in one forward pass (the session's n_batch): smaller takes
    /// less scratch memory.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// One JSON line per thread count: {"threads", "kernel", "prefill_tok_s", "decode_tok_s",
    /// "load_s", "peak_rss_bytes"}.
    #[arg(long)]
    json: bool,
    /// Set on the child process that measures one thread count of several.
    #[arg(long, hide = true)]
    no_header: bool,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    json: bool,
}

fn generate(a: &GenerateArgs) -> bit_ttt::Result<()> {
    let (model, mut session) = a.model.load()?;
    if let Some(p) = &a.load_state {
        adapt::load_state(&mut session, p)?;
    }
    let prompt = if a.chat {
        model.apply_chat_template(&[ChatMessage::new("user", &a.prompt)], true)?
    } else {
        a.prompt.clone()
    };
    let mut out = std::io::stdout().lock();
    let result = session.generate(&prompt, &a.sampling.params(), |ev| {
        let _ = out.write_all(ev.text.as_bytes());
        let _ = out.flush();
        true
    })?;
    if a.json {
        let line = json!({
            "text": result.text,
            "tokens": result.tokens,
            "prompt_tokens": result.prompt_tokens,
            "stop_reason": result.stop_reason.as_str(),
        });
        writeln!(out, "\n{line}").ok();
    } else {
        writeln!(out).ok();
        let n = result.tokens.len();
        eprintln!(
            "[{} prompt tokens, {} generated, stop: {}; prefill {:.1} tok/s, decode {:.1} tok/s]",
            result.prompt_tokens,
            n,
            result.stop_reason.as_str(),
            result.prompt_tokens as f64 / result.prefill_seconds.max(1e-9),
            n.saturating_sub(1) as f64 / result.decode_seconds.max(1e-9),
        );
    }
    Ok(())
}

fn chat(a: &ChatArgs) -> bit_ttt::Result<()> {
    let (model, mut session) = a.model.load()?;
    let mut messages: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    loop {
        write!(out, "> ").ok();
        out.flush().ok();
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| bit_ttt::Error::new(bit_ttt::ErrorKind::Io, e.to_string()))?
            == 0
            || line.trim().is_empty()
        {
            return Ok(());
        }
        messages.push(ChatMessage::new("user", line.trim_end()));
        // Re-render the whole conversation; the session is reset so templates that do not
        // render as prefixes of each other stay correct.
        let prompt = model.apply_chat_template(&messages, true)?;
        session.reset();
        let result = session.generate(&prompt, &a.sampling.params(), |ev| {
            let _ = out.write_all(ev.text.as_bytes());
            let _ = out.flush();
            true
        })?;
        writeln!(out).ok();
        messages.push(ChatMessage::new("assistant", result.text.trim()));
    }
}

fn score(a: &ScoreArgs) -> bit_ttt::Result<()> {
    let bytes = std::fs::read(&a.text_file).map_err(|e| bit_ttt::Error::io(&a.text_file, &e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        bit_ttt::Error::new(
            bit_ttt::ErrorKind::InvalidUtf8,
            format!("{}: {e}", a.text_file.display()),
        )
    })?;
    let (_, mut session) = a.model.load()?;
    let s = session.score(&text)?;
    if a.json {
        println!(
            "{}",
            json!({"tokens": s.tokens.len(), "nll_sum": s.nll_sum(), "nll_mean": s.nll_mean(), "perplexity": s.perplexity()})
        );
    } else {
        println!(
            "tokens {}  nll_sum {:.4}  nll_mean {:.4}  perplexity {:.4}",
            s.tokens.len(),
            s.nll_sum(),
            s.nll_mean(),
            s.perplexity()
        );
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

fn info(a: &InfoArgs) -> bit_ttt::Result<()> {
    let (model, _) = a.model.load()?;
    let i = model.info();
    let saved = 1.0 - i.weight_bytes as f64 / i.fp16_bytes as f64;
    if a.json {
        println!(
            "{}",
            json!({
                "family": format!("{:?}", i.family).to_lowercase(),
                "hidden_size": i.hidden_size, "intermediate_size": i.intermediate_size,
                "num_layers": i.num_layers, "num_heads": i.num_heads, "num_kv_heads": i.num_kv_heads,
                "vocab_size": i.vocab_size, "max_position_embeddings": i.max_position_embeddings,
                "n_params": i.n_params, "n_ternary_params": i.n_ternary_params,
                "weight_bytes": i.weight_bytes, "fp16_bytes": i.fp16_bytes,
                "threads": model.n_threads(),
                "kernel": model.kernel().name(),
                "packing": model.kernel().packing().name(),
                "kernel_table": model.kernel_table().into_iter().map(|(op, f)| (op.to_string(), json!(f))).collect::<serde_json::Map<_, _>>(),
                "device": model.device(),
            })
        );
        return Ok(());
    }
    println!("model        {}", model.location());
    println!("device       {}", model.device());
    println!("family       {:?}", i.family);
    println!(
        "shape        hidden {}, ffn {}, layers {}, heads {} (kv {}), vocab {}, max positions {}",
        i.hidden_size,
        i.intermediate_size,
        i.num_layers,
        i.num_heads,
        i.num_kv_heads,
        i.vocab_size,
        i.max_position_embeddings
    );
    println!(
        "parameters   {} ({} ternary)",
        i.n_params, i.n_ternary_params
    );
    println!("weights      {} as loaded", human(i.weight_bytes));
    println!(
        "fp16         {} for the same parameters ({:.1}% saved)",
        human(i.fp16_bytes),
        saved * 100.0
    );
    println!("threads      {}", model.n_threads());
    println!(
        "kernel       {} (ternary weights {})",
        model.kernel().name(),
        model.kernel().packing().name()
    );
    println!("kernel table (operation: function)");
    for (op, f) in model.kernel_table() {
        println!("  {op:30} {f}");
    }
    Ok(())
}

/// `--packing`: a layout's name, or `auto` for this CPU's fastest kernel's.
fn packing(name: &str) -> bit_ttt::Result<Packing> {
    match name {
        "auto" => Ok(bit_ttt::Isa::best().packing()),
        _ => Packing::parse(name).ok_or_else(|| {
            bit_ttt::Error::invalid_argument(format!(
                "unknown packing `{name}` (known: auto, 2bit, base3)"
            ))
        }),
    }
}

/// Peak resident set size of this process so far (Linux: VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Starts a new peak-RSS measurement (Linux: "5" to clear_refs resets VmHWM to the current RSS).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs this same `bench` command once per thread count, each in a fresh process: a peak RSS
/// measured after another model was loaded and dropped in the same process counts the heap
/// that model left resident (7 MB more on 2B4T).
fn bench_each_in_a_process(threads: &[usize]) -> bit_ttt::Result<()> {
    let io = |e: std::io::Error| bit_ttt::Error::internal(format!("bench child process: {e}"));
    let exe = std::env::current_exe().map_err(io)?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut rest = std::env::args_os().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--threads" {
            rest.next();
        } else if !arg.to_string_lossy().starts_with("--threads=") {
            args.push(arg);
        }
    }
    for t in threads {
        let status = std::process::Command::new(&exe)
            .args(&args)
            .args(["--threads", &t.to_string(), "--no-header"])
            .status()
            .map_err(io)?;
        if !status.success() {
            return Err(bit_ttt::Error::internal(format!(
                "bench with {t} threads failed ({status})"
            )));
        }
    }
    Ok(())
}

fn bench(a: &BenchArgs) -> bit_ttt::Result<()> {
    if a.prompt_tokens == 0 || a.gen_tokens < 2 {
        return Err(bit_ttt::Error::invalid_argument(
            "--prompt-tokens must be >= 1 and --gen-tokens >= 2",
        ));
    }
    if !a.json && !a.no_header {
        println!(
            "{:>7}  {:<11} {:>13} {:>12} {:>8} {:>11} {:>10} {:>8}",
            "threads",
            "kernel",
            "prefill tok/s",
            "decode tok/s",
            "load s",
            "peak RSS",
            "read GB/s",
            "roofline"
        );
    }
    if a.threads.len() > 1 {
        return bench_each_in_a_process(&a.threads);
    }
    let path = a.load.path()?;
    let kv_cache = a.load.kv_cache()?;
    // Bandwidth first: its buffer must not count in the models' peak RSS.
    let bandwidths: Vec<f64> = a
        .threads
        .iter()
        .map(|&t| bit_ttt::read_bandwidth(t))
        .collect::<bit_ttt::Result<_>>()?;
    for (&threads, &bandwidth) in a.threads.iter().zip(&bandwidths) {
        // Each thread count's own peak: the bandwidth buffer and the previous model are gone.
        reset_peak_rss();
        let start = std::time::Instant::now();
        let model = Model::load(&path, &a.load.params(threads)?)?;
        let load_s = start.elapsed().as_secs_f64();
        let n_ctx = a.prompt_tokens + a.gen_tokens + 1;
        let mut session = Session::new(
            &model,
            &SessionParams {
                n_ctx,
                n_batch: a.batch_size,
                kv_cache,
                ..Default::default()
            },
        )?;
        // A fixed pseudo-random prompt of ordinary (non-special) token ids.
        let vocab = model.config().vocab_size.min(100_000) as u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let prompt: Vec<u32> = (0..a.prompt_tokens)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % vocab) as u32
            })
            .collect();
        let params = GenerateParams {
            sampling: SamplingParams::greedy(),
            max_tokens: a.gen_tokens,
            ignore_eos: true,
            ..Default::default()
        };
        let r = session.generate_tokens(&prompt, &params, |_| true)?;
        let prefill = a.prompt_tokens as f64 / r.prefill_seconds;
        let decode = (r.tokens.len() - 1) as f64 / r.decode_seconds;
        let rss = peak_rss_bytes().unwrap_or(0);
        // Mean context over the decode steps.
        let bytes = model.bytes_read_per_token(a.prompt_tokens + a.gen_tokens / 2, kv_cache);
        let roofline = bandwidth / bytes as f64;
        if a.json {
            println!(
                "{}",
                json!({"threads": model.n_threads(), "kernel": model.kernel().name(), "head": model.head_format().name(), "kv_cache": kv_cache.name(), "prefill_tok_s": prefill,
                       "decode_tok_s": decode, "load_s": load_s, "peak_rss_bytes": rss,
                       "read_bandwidth_gb_s": bandwidth / 1e9, "bytes_per_token": bytes,
                       "roofline_decode_tok_s": roofline, "decode_roofline_fraction": decode / roofline})
            );
        } else {
            println!(
                "{:>7}  {:<11} {:>13.1} {:>12.1} {:>8.2} {:>11} {:>10.1} {:>8.1} ({:.0}%)",
                model.n_threads(),
                model.kernel().name(),
                prefill,
                decode,
                load_s,
                human(rss),
                bandwidth / 1e9,
                roofline,
                100.0 * decode / roofline
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Score(a) => score(a),
        Command::Info(a) => info(a),
        Command::Bench(a) => bench(a),
        Command::Adapt(a) => adapt::adapt(a),
        Command::AdaptBench(a) => adapt::adapt_bench(a),
        Command::Convert(a) => {
            let start = std::time::Instant::now();
            HeadFormat::parse(&a.head)
                .and_then(|head| Ok((head, packing(&a.packing)?)))
                .and_then(|(head, p)| bit_ttt::convert_with(&a.model, &a.out, head, p))
                .map(|s| {
                    eprintln!(
                        "wrote {} ({} tensors, {}) in {:.1} s",
                        a.out.display(),
                        s.tensors,
                        human(s.bytes),
                        start.elapsed().as_secs_f64()
                    )
                })
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bit-ttt: error: {e}");
            ExitCode::FAILURE
        }
    }
}
