//! `bit-ttt adapt` (train a session's adapters on a text, optionally saving the session) and
//! `bit-ttt adapt-bench` (the split-half measurement of docs/ADAPT.md).

use std::path::PathBuf;
use std::time::Instant;

use bit_ttt::AdaptParams;
use bit_ttt::{Error, ErrorKind, ResetParts, Session, TokenId};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::ModelArgs;

#[derive(Args, Clone)]
pub struct AdaptOptions {
    /// LoRA rank.
    #[arg(long, default_value_t = AdaptParams::default().rank)]
    rank: usize,
    /// LoRA alpha (updates scaled by alpha / rank).
    #[arg(long, default_value_t = AdaptParams::default().alpha)]
    alpha: f32,
    /// Adapt the top N layers (0 = the last quarter; a large number = all).
    #[arg(long, default_value_t = AdaptParams::default().layers)]
    layers: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = AdaptParams::default().learning_rate)]
    lr: f32,
    /// Passes over the text.
    #[arg(long, default_value_t = AdaptParams::default().epochs)]
    epochs: usize,
    /// Tokens per training window (one step each).
    #[arg(long, default_value_t = AdaptParams::default().chunk_tokens)]
    chunk: usize,
    /// Largest global gradient norm (0 = off).
    #[arg(long, default_value_t = AdaptParams::default().clip)]
    clip: f32,
    #[arg(long, default_value_t = AdaptParams::default().weight_decay)]
    weight_decay: f32,
    /// Pull towards the initial adapter per step (0 = off).
    #[arg(long, default_value_t = AdaptParams::default().decay_to_init)]
    decay_to_init: f32,
    /// Seed of the adapters' initial values.
    #[arg(long, default_value_t = AdaptParams::default().seed)]
    adapt_seed: u64,
}

impl AdaptOptions {
    pub fn params(&self) -> AdaptParams {
        AdaptParams {
            rank: self.rank,
            alpha: self.alpha,
            layers: self.layers,
            learning_rate: self.lr,
            epochs: self.epochs,
            chunk_tokens: self.chunk,
            clip: self.clip,
            weight_decay: self.weight_decay,
            decay_to_init: self.decay_to_init,
            seed: self.adapt_seed,
            ..AdaptParams::default()
        }
    }
}

#[derive(Args)]
pub struct AdaptArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to learn from (UTF-8).
    #[arg(long)]
    text_file: PathBuf,
    /// Write the session (adapters, optimiser state) here; `generate --load-state` reads it.
    #[arg(long)]
    save_state: Option<PathBuf>,
    /// Start from a saved session (continue training its adapters).
    #[arg(long)]
    load_state: Option<PathBuf>,
    #[command(flatten)]
    options: AdaptOptions,
    /// Online: read the text into the context, scoring each window before one step on it
    /// (score-then-update, one pass); `generate --load-state` then continues after the text.
    /// Reports the bits/token of that reading against the base model's.
    #[arg(long)]
    online: bool,
    /// Print one JSON line at the end instead of the progress bar and summary.
    #[arg(long)]
    json: bool,
}

pub fn read_text(path: &PathBuf) -> bit_ttt::Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, &e))?;
    String::from_utf8(bytes)
        .map_err(|e| Error::new(ErrorKind::InvalidUtf8, format!("{}: {e}", path.display())))
}

pub fn load_state(session: &mut Session, path: &PathBuf) -> bit_ttt::Result<()> {
    let blob = std::fs::read(path).map_err(|e| Error::io(path, &e))?;
    session
        .load_state(&blob)
        .map_err(|e| e.context(path.display()))
}

/// Mean bits per token of `tokens` (from position 1), in sliding windows of the context.
fn bits(session: &mut Session, tokens: &[TokenId], from: usize) -> bit_ttt::Result<f64> {
    let window = session.n_ctx();
    let nll = session.score_windowed(tokens, from, window)?;
    Ok(nll.iter().sum::<f64>() / nll.len().max(1) as f64 / std::f64::consts::LN_2)
}

pub fn adapt(a: &AdaptArgs) -> bit_ttt::Result<()> {
    let text = read_text(&a.text_file)?;
    let (model, mut session) = a.model.load()?;
    if let Some(p) = &a.load_state {
        load_state(&mut session, p)?;
    }
    let params = a.options.params();
    let tokens = model.tokenize(&text, true)?;
    let window = session.n_ctx();
    let base = session.score_windowed(&tokens, 1, window)?; // base[p - 1] scores token p
    let mut before = base.iter().sum::<f64>() / base.len().max(1) as f64 / std::f64::consts::LN_2;
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  loss {msg}  [{elapsed}]")
                .expect("valid template"),
        )
    };
    let mut losses = Vec::new();
    let on_step = |p: &bit_ttt::AdaptProgress| {
        bar.set_length(p.total_steps as u64);
        bar.set_position(p.step as u64);
        bar.set_message(format!("{:.3}", p.loss));
        losses.push(f64::from(p.loss));
        true
    };
    let (r, after) = if a.online {
        if !session.tokens().is_empty() {
            return Err(Error::invalid_argument(
                "adapt --online reads the text as the start of the context: the loaded state \
                 already has a context",
            ));
        }
        let r = session.adapt_online_tokens(&tokens, &params, on_step)?;
        // Windows over all tokens but the last (left for generate), as adapt_online reads them.
        let windows = bit_ttt::adapt_windows(tokens.len() - 1, params.chunk_tokens);
        let (sum, n) = windows
            .iter()
            .zip(&losses)
            .fold((0.0, 0usize), |(s, n), (w, l)| {
                (s + l * (w.len() - 1) as f64, n + w.len() - 1)
            });
        // The base model's bits on the same predictions (a window's first token is not one).
        let base_sum: f64 = windows
            .iter()
            .map(|w| base[w.start..w.end - 1].iter().sum::<f64>())
            .sum();
        before = base_sum / n.max(1) as f64 / std::f64::consts::LN_2;
        bar.finish();
        (r, sum / n.max(1) as f64 / std::f64::consts::LN_2)
    } else {
        let r = session.adapt_tokens(&tokens, &params, on_step)?;
        bar.finish();
        (r, bits(&mut session, &tokens, 1)?)
    };
    if let Some(p) = &a.save_state {
        std::fs::write(p, session.save_state()).map_err(|e| Error::io(p, &e))?;
    }
    if a.json {
        println!(
            "{}",
            json!({"tokens": r.tokens, "steps": r.steps, "first_loss": r.first_loss,
                   "last_loss": r.last_loss, "seconds": r.seconds,
                   "bits_before": before, "bits_after": after, "online": a.online})
        );
    } else {
        eprintln!(
            "{} tokens, {} steps in {:.1} s; loss {:.3} → {:.3}; the text: {:.3} → {:.3} bits/token{}",
            r.tokens,
            r.steps,
            r.seconds,
            r.first_loss,
            r.last_loss,
            before,
            after,
            a.save_state
                .as_ref()
                .map(|p| format!("; session saved to {}", p.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct AdaptBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of plain-text documents (*.txt), never seen in training.
    #[arg(long)]
    docs: PathBuf,
    /// At most this many documents (sorted by name; 0 = all).
    #[arg(long, default_value_t = 0)]
    max_docs: usize,
    #[command(flatten)]
    options: AdaptOptions,
    /// Last line: one JSON object with the means and a `documents` array.
    #[arg(long)]
    json: bool,
}

struct Doc {
    name: String,
    tokens: Vec<TokenId>,
    /// Index of the first token of the second half.
    half: usize,
}

impl Doc {
    /// BOS + the second half: scored without the first half in any window.
    fn second_half(&self) -> Vec<TokenId> {
        [&self.tokens[..1], &self.tokens[self.half..]].concat()
    }
}

pub fn adapt_bench(a: &AdaptBenchArgs) -> bit_ttt::Result<()> {
    let (model, mut session) = a.model.load()?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&a.docs)
        .map_err(|e| Error::io(&a.docs, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    if a.max_docs > 0 {
        paths.truncate(a.max_docs);
    }
    if paths.len() < 2 {
        return Err(Error::invalid_argument(format!(
            "{}: adapt-bench needs at least 2 *.txt documents (the cross-document control), found {}",
            a.docs.display(),
            paths.len()
        )));
    }
    let docs: Vec<Doc> = paths
        .iter()
        .map(|p| {
            let tokens = model.tokenize(&read_text(p)?, true)?;
            if tokens.len() < 8 {
                return Err(Error::invalid_argument(format!(
                    "{}: too short to split ({} tokens)",
                    p.display(),
                    tokens.len()
                )));
            }
            let half = tokens.len() / 2;
            Ok(Doc {
                name: p.file_name().unwrap_or_default().to_string_lossy().into(),
                tokens,
                half,
            })
        })
        .collect::<bit_ttt::Result<_>>()?;
    let params = a.options.params();
    let window = session.n_ctx();

    // Base figures, and the prefill time per token (first halves, as the adapt sees them).
    let mut base = Vec::new();
    let mut in_context = Vec::new();
    let mut prefill_s = 0.0;
    let mut prefill_tokens = 0usize;
    for d in &docs {
        base.push(bits(&mut session, &d.second_half(), 1)?);
        in_context.push(bits(&mut session, &d.tokens, d.half)?);
        let first = &d.tokens[..d.half];
        for w in first.chunks(params.chunk_tokens.min(window)) {
            session.reset_parts(ResetParts::CONTEXT);
            let t = Instant::now();
            session.eval(w)?;
            prefill_s += t.elapsed().as_secs_f64();
            prefill_tokens += w.len();
        }
    }
    session.reset_parts(ResetParts::CONTEXT);

    // lr = 0 must reproduce the base figure exactly.
    let zero = AdaptParams {
        learning_rate: 0.0,
        ..params.clone()
    };
    session.adapt_tokens(&docs[0].tokens[..docs[0].half], &zero, |_| true)?;
    let identity = bits(&mut session, &docs[0].second_half(), 1)? == base[0];
    session.reset_parts(ResetParts::ADAPTERS);

    let mut rows = Vec::new();
    let mut adapt_s = 0.0;
    let mut adapt_tokens = 0usize;
    for (i, d) in docs.iter().enumerate() {
        let r = session.adapt_tokens(&d.tokens[..d.half], &params, |_| true)?;
        adapt_s += r.seconds;
        adapt_tokens += d.half * params.epochs;
        let after = bits(&mut session, &d.second_half(), 1)?;
        let j = (i + 1) % docs.len();
        let cross = bits(&mut session, &docs[j].second_half(), 1)? - base[j];
        session.reset_parts(ResetParts::ADAPTERS);
        if !a.json {
            eprintln!(
                "{:<24} {:>6} tok  {:.3} → {:.3} bits/token ({:+.1} %)  in-context {:.3}  cross-doc {:+.3}",
                d.name,
                d.tokens.len(),
                base[i],
                after,
                (after / base[i] - 1.0) * 100.0,
                in_context[i],
                cross
            );
        }
        rows.push(
            json!({"name": d.name, "tokens": d.tokens.len(), "bits_before": base[i],
                         "bits_after": after, "in_context_bits": in_context[i],
                         "cross_doc_delta": cross, "cross_doc": docs[j].name}),
        );
    }
    let mean = |key: &str| {
        rows.iter()
            .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
            .sum::<f64>()
            / rows.len() as f64
    };
    let cost_ratio = (adapt_s / adapt_tokens as f64) / (prefill_s / prefill_tokens as f64);
    let (before, after) = (mean("bits_before"), mean("bits_after"));
    let summary = json!({
        "bits_before": before, "bits_after": after,
        "relative_change": after / before - 1.0,
        "cross_doc_delta": mean("cross_doc_delta"),
        "cross_doc_relative": mean("cross_doc_delta") / before,
        "in_context_bits": mean("in_context_bits"),
        "lr0_identity": identity,
        "cost_ratio": cost_ratio,
        "adapt_s_per_token": adapt_s / adapt_tokens as f64,
        "prefill_s_per_token": prefill_s / prefill_tokens as f64,
        "peak_rss_bytes": crate::peak_rss_bytes(),
        "params": {"rank": params.rank, "alpha": params.alpha, "layers": params.layers,
                   "lr": params.learning_rate, "epochs": params.epochs, "chunk": params.chunk_tokens},
        "documents": rows,
    });
    if a.json {
        println!("{summary}");
    } else {
        eprintln!(
            "mean: {before:.4} → {after:.4} bits/token ({:+.2} %), cross-doc {:+.4}, in-context {:.4}, \
             lr=0 identity {}, cost {cost_ratio:.2}× prefill per token",
            (after / before - 1.0) * 100.0,
            mean("cross_doc_delta"),
            mean("in_context_bits"),
            if identity { "exact" } else { "BROKEN" }
        );
    }
    if !identity {
        return Err(Error::internal("lr = 0 changed the scores"));
    }
    Ok(())
}
