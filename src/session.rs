//! A conversation with a model: its KV cache, the tokens in context, the sampler's RNG, and the
//! generation loop (prefill in chunks, decode, stop tokens and strings, cancellation).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

mod adapt;

use crate::adapt::Trainer;
use crate::error::{Error, ErrorKind, Result};
use crate::model::caches::{Caches, Pass};
use crate::rng::Rng;
use crate::sampling::{self, SamplingParams};
use crate::state::SessionState;
use crate::text::stop::StopMatcher;
use crate::text::stream::Detokenizer;
use crate::transformer::kv_cache::KvType;
use crate::{Model, TokenId};

/// Options for a session.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Context length in tokens; 0 = the model's max_position_embeddings.
    pub n_ctx: usize,
    /// Prompt tokens processed per forward pass (and per cancellation check).
    pub n_batch: usize,
    /// Seed of the sampler's generator (same seed, same samples).
    pub seed: u64,
    /// How keys and values are stored (f16 halves the cache and its traffic; f32 is exact).
    pub kv_cache: KvType,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            n_ctx: 0,
            n_batch: 512,
            seed: sampling::DEFAULT_SEED,
            kv_cache: KvType::F32,
        }
    }
}

/// Options for one `generate` call.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// Most tokens to generate; 0 = until the context is full.
    pub max_tokens: usize,
    /// Generation stops before any of these strings; they are never emitted.
    pub stop: Vec<String>,
    /// Extra token ids that end generation (besides the model's EOS/EOT).
    pub stop_tokens: Vec<TokenId>,
    /// Keep going past the model's EOS/EOT tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
            stop_tokens: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An EOS/EOT or caller-given stop token was generated.
    StopToken,
    /// A stop string appeared in the text.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// A cancel handle was used.
    Cancelled,
    /// The token callback asked to stop.
    Callback,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::StopToken => "stop_token",
            StopReason::StopString => "stop_string",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContextFull => "context_full",
            StopReason::Cancelled => "cancelled",
            StopReason::Callback => "callback",
        }
    }
}

/// Passed to the token callback for each generated token.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    pub token: TokenId,
    /// Text released by this token: whole characters, never part of a stop string (may be empty).
    pub text: &'a str,
}

/// What a `generate` call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateResult {
    pub text: String,
    /// Generated token ids (a final stop token included).
    pub tokens: Vec<TokenId>,
    pub prompt_tokens: usize,
    pub stop_reason: StopReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// Per-token negative log-likelihoods of a text.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreResult {
    /// All tokens of the text (special tokens included as the tokenizer adds them).
    pub tokens: Vec<TokenId>,
    /// `nll[i]` = −ln p(tokens[i+1] | tokens[..=i]), natural log.
    pub nll: Vec<f64>,
}

impl ScoreResult {
    pub fn nll_sum(&self) -> f64 {
        self.nll.iter().sum()
    }
    pub fn nll_mean(&self) -> f64 {
        self.nll_sum() / self.nll.len().max(1) as f64
    }
    pub fn perplexity(&self) -> f64 {
        self.nll_mean().exp()
    }
}

/// Which parts of a session `reset_parts` clears (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetParts(pub u32);

impl std::ops::BitOr for ResetParts {
    type Output = ResetParts;
    fn bitor(self, other: ResetParts) -> ResetParts {
        ResetParts(self.0 | other.0)
    }
}

impl ResetParts {
    /// Tokens in context and the KV cache.
    pub const CONTEXT: ResetParts = ResetParts(1);
    /// Adapters learned by `adapt` and their optimiser state.
    pub const ADAPTERS: ResetParts = ResetParts(2);
    /// The sampler's generator, back to the session's seed.
    pub const RNG: ResetParts = ResetParts(4);
    pub const ALL: ResetParts = ResetParts(7);

    pub fn contains(self, other: ResetParts) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Cancels the running call of a session from any thread.
#[derive(Debug, Clone)]
///
/// A cancel reaches the call running when it is made; if none runs, the session's next call
/// stops at once. Every call clears the request when it returns.
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Withdraws a pending request (hosts that track whether a call runs use this).
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Clears the cancel request when a call returns, however it returns.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Generation state over one model. One call at a time (`&mut self`).
pub struct Session {
    model: Model,
    /// Keys and values of the context, on the CPU and, for a model with layers on the GPU, there
    /// (which passes use while the session holds no adapters: they train and run on the CPU).
    kv: Caches,
    /// Tokens whose keys and values are in the cache.
    tokens: Vec<TokenId>,
    /// Generated tokens not yet run through the model (the last token of a finished call).
    unfed: Vec<TokenId>,
    rng: Rng,
    /// The seed the session was created with (restored by a reset of the RNG).
    seed: u64,
    cancel: Arc<AtomicBool>,
    n_batch: usize,
    /// Adapters trained by `adapt`, with their optimiser state.
    trainer: Option<Trainer>,
    /// The adapters changed since the KV cache was filled: recompute it before next use.
    kv_stale: bool,
}

/// What the sampler picks from: a row of logits, or the best candidates the GPU selected.
enum Scores {
    Logits(Vec<f32>),
    Top(Vec<(TokenId, f32)>),
}

impl Session {
    pub fn new(model: &Model, params: &SessionParams) -> Result<Session> {
        let cfg = model.config();
        let n_ctx = if params.n_ctx == 0 {
            cfg.max_position_embeddings
        } else {
            params.n_ctx
        };
        if params.n_batch == 0 {
            return Err(Error::invalid_argument("n_batch must be at least 1"));
        }
        if n_ctx > (1 << 24) {
            return Err(Error::invalid_argument(format!(
                "n_ctx = {n_ctx} is too large (at most 16777216)"
            )));
        }
        Ok(Session {
            model: model.clone(),
            kv: Caches::new(model, n_ctx, params.kv_cache, true)?,
            tokens: Vec::new(),
            unfed: Vec::new(),
            rng: Rng::new(params.seed),
            seed: params.seed,
            cancel: Arc::new(AtomicBool::new(false)),
            n_batch: params.n_batch,
            trainer: None,
            kv_stale: false,
        })
    }

    /// Whether passes run on the GPU now: the model has layers there and the session holds no
    /// adapters (they are trained and applied on the CPU).
    fn on_gpu(&self) -> bool {
        self.kv.has_gpu() && self.trainer.is_none()
    }

    /// Brings the keys and values of the GPU's layers into the CPU cache (before adapters take
    /// the session to the CPU), so the context carries over without being recomputed.
    pub(crate) fn move_kv_to_cpu(&mut self) -> Result<()> {
        if !self.on_gpu() {
            return Ok(());
        }
        let copy = !self.kv_stale;
        self.kv.move_to_cpu(&self.model, self.tokens.len(), copy)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
    /// Context length in tokens.
    pub fn n_ctx(&self) -> usize {
        self.kv.capacity()
    }
    /// Tokens in the context (prompts and generated text so far).
    pub fn tokens(&self) -> Vec<TokenId> {
        [self.tokens.as_slice(), &self.unfed].concat()
    }
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(self.cancel.clone())
    }
    /// Forgets the context (tokens and KV cache).
    pub fn reset(&mut self) {
        self.reset_parts(ResetParts::CONTEXT);
    }

    /// Resets the chosen parts of the session's state.
    pub fn reset_parts(&mut self, parts: ResetParts) {
        if parts.contains(ResetParts::CONTEXT) {
            self.kv.clear();
            self.tokens.clear();
            self.unfed.clear();
            self.kv_stale = false;
        }
        if parts.contains(ResetParts::ADAPTERS) && self.trainer.take().is_some() {
            // The cache holds keys and values computed with the adapters just dropped.
            self.kv_stale = !self.tokens.is_empty();
        }
        if parts.contains(ResetParts::RNG) {
            self.rng = Rng::new(self.seed);
        }
    }

    /// The session's context, generator, adapters and optimiser state as a blob for
    /// `load_state` (see `state`).
    ///
    /// # Panics
    /// When the keys and values cannot be read back from the GPU (a device fault).
    pub fn save_state(&self) -> Vec<u8> {
        let (k, v) = self
            .kv
            .snapshot(&self.model, self.tokens.len(), self.on_gpu())
            .expect("reading the KV cache back from the GPU");
        SessionState {
            fingerprint: self.model.fingerprint(),
            tokens: self.tokens.clone(),
            unfed: self.unfed.clone(),
            rng: self.rng.state(),
            kv_dim: self.kv.cpu.kv_dim(),
            k,
            v,
            kv_stale: self.kv_stale,
            trainer: self.trainer.as_ref().map(Trainer::to_blob),
        }
        .encode()
    }

    /// Restores a blob from `save_state`: all or nothing. A blob from another model, a corrupt
    /// one, or one larger than this session's context is refused and the session is unchanged.
    pub fn load_state(&mut self, blob: &[u8]) -> Result<()> {
        let cfg = self.model.config();
        let s = SessionState::decode(blob, self.model.fingerprint(), cfg.num_layers, cfg.kv_dim())?;
        if s.tokens.len() + s.unfed.len() > self.n_ctx() {
            return Err(Error::new(
                ErrorKind::IncompatibleState,
                format!(
                    "session state holds {} tokens, more than this session's context ({})",
                    s.tokens.len() + s.unfed.len(),
                    self.n_ctx()
                ),
            ));
        }
        let trainer = s
            .trainer
            .as_ref()
            .map(|t| Trainer::from_blob(&self.model.transformer().weights, t))
            .transpose()?;
        self.kv
            .restore(&s.k, &s.v, s.tokens.len(), trainer.is_none())?;
        self.trainer = trainer;
        self.kv_stale = s.kv_stale;
        self.tokens = s.tokens;
        self.unfed = s.unfed;
        self.rng = Rng::from_state(s.rng);
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Runs `tokens` through the model in chunks of n_batch; returns the logits of the last one.
    fn feed(&mut self, tokens: &[TokenId]) -> Result<Option<Vec<f32>>> {
        let mut last = None;
        if let Err(e) = self.refresh_kv() {
            return if e.kind() == ErrorKind::Cancelled {
                Ok(None)
            } else {
                Err(e)
            };
        }
        for chunk in tokens.chunks(self.n_batch) {
            if self.cancelled() {
                return Ok(None);
            }
            let pass = self.pass(chunk, false)?;
            self.tokens.extend_from_slice(chunk);
            let model = &self.model;
            let h = model.config().hidden_size;
            last = Some(match pass {
                Pass::Logits(l) => l,
                Pass::Hidden(hidden) => {
                    model.compute(|| model.transformer().logits(&hidden[hidden.len() - h..]))
                }
            });
        }
        Ok(last)
    }

    /// A forward pass of `chunk` on the session's caches, with its adapters (see
    /// `Caches::forward`).
    fn pass(&mut self, chunk: &[TokenId], all_logits: bool) -> Result<Pass> {
        let adapters = self.trainer.as_ref().map(|t| &t.adapters);
        self.kv.forward(&self.model, chunk, adapters, all_logits)
    }

    /// Runs one generated token; the sampler's candidates come from the GPU (`k` of them) when
    /// the whole model is there, else the row of logits.
    fn feed_next(&mut self, token: TokenId, k: Option<usize>) -> Result<Option<Scores>> {
        if let Some(k) = k
            && self.on_gpu()
            && !self.kv_stale
            && !self.cancelled()
            && let Some(top) = self.kv.forward_top(&self.model, token, k)?
        {
            self.tokens.push(token);
            return Ok(Some(Scores::Top(top)));
        }
        Ok(self.feed(&[token])?.map(Scores::Logits))
    }

    /// Logits `[tokens.len(), vocab]` of every position after appending `tokens` to the context.
    pub fn eval(&mut self, tokens: &[TokenId]) -> Result<Vec<f32>> {
        self.check_fits(tokens.len())?;
        self.refresh_kv()?;
        let mut all = Vec::with_capacity(tokens.len() * self.model.config().vocab_size);
        for chunk in tokens.chunks(self.n_batch) {
            let pass = self.pass(chunk, true)?;
            self.tokens.extend_from_slice(chunk);
            let model = &self.model;
            match pass {
                Pass::Logits(l) => all.extend(l),
                Pass::Hidden(hidden) => {
                    all.extend(model.compute(|| model.transformer().logits(&hidden)))
                }
            }
        }
        Ok(all)
    }

    fn check_fits(&self, n: usize) -> Result<()> {
        let used = self.tokens.len() + self.unfed.len();
        if used + n > self.n_ctx() {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "prompt of {n} tokens does not fit: {used} of {} context tokens already used",
                    self.n_ctx()
                ),
            ));
        }
        Ok(())
    }

    /// Generates a continuation of `prompt` (raw text; BOS is added when the context is empty).
    /// `on_token` sees each token with the text it releases and returns false to stop.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<GenerateResult> {
        let ids = self.prompt_tokens(prompt)?;
        self.generate_tokens(&ids, params, on_token)
    }

    /// Tokens of a prompt: BOS added when the context is empty, unless the text already starts
    /// with it (a rendered chat template does), so the model never sees BOS twice.
    pub(crate) fn prompt_tokens(&self, prompt: &str) -> Result<Vec<TokenId>> {
        let add_special = self.tokens.is_empty() && self.unfed.is_empty();
        let mut ids = self.model.tokenize(prompt, add_special)?;
        if add_special && ids.len() >= 2 && ids[0] == ids[1] {
            let plain = self.model.tokenize(prompt, false)?;
            if plain.len() + 1 == ids.len() && plain.first() == Some(&ids[0]) {
                ids = plain;
            }
        }
        Ok(ids)
    }

    /// As `generate`, from token ids.
    pub fn generate_tokens(
        &mut self,
        prompt: &[TokenId],
        params: &GenerateParams,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<GenerateResult> {
        let cancel = self.cancel.clone();
        let _clear = ClearOnDrop(&cancel);
        params.sampling.validate()?;
        let vocab = self.model.config().vocab_size;
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid_argument(format!(
                "prompt token {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let mut input: Vec<TokenId> = std::mem::take(&mut self.unfed);
        input.extend_from_slice(prompt);
        if input.is_empty() {
            return Err(Error::invalid_argument(
                "the prompt is empty and there is no context to continue",
            ));
        }
        if let Err(e) = self.check_fits(input.len()) {
            self.unfed = input[..input.len() - prompt.len()].to_vec();
            return Err(e);
        }
        if let Some(seed) = params.sampling.seed {
            self.rng = Rng::new(seed);
        }
        let start = Instant::now();
        let mut result = GenerateResult {
            text: String::new(),
            tokens: Vec::new(),
            prompt_tokens: prompt.len(),
            stop_reason: StopReason::MaxTokens,
            prefill_seconds: 0.0,
            decode_seconds: 0.0,
        };
        let Some(logits) = self.feed(&input)? else {
            result.stop_reason = StopReason::Cancelled;
            result.prefill_seconds = start.elapsed().as_secs_f64();
            return Ok(result);
        };
        result.prefill_seconds = start.elapsed().as_secs_f64();
        let decode_start = Instant::now();
        let mut scores = Scores::Logits(logits);
        let device_k = sampling::candidates_needed(&params.sampling);

        let model = self.model.clone();
        let tokenizer = model.tokenizer();
        let mut detok = Detokenizer::new();
        let mut stops = StopMatcher::new(&params.stop);
        let is_stop_token = |t: TokenId| {
            params.stop_tokens.contains(&t)
                || (!params.ignore_eos && model.stop_tokens().contains(&t))
        };
        loop {
            if self.cancelled() {
                result.stop_reason = StopReason::Cancelled;
                break;
            }
            // Penalties look at the last repeat_last_n tokens only: copy no more than those.
            let n = params.sampling.repeat_last_n;
            let generated = &result.tokens[result.tokens.len().saturating_sub(n)..];
            let context = &self.tokens[self.tokens.len().saturating_sub(n - generated.len())..];
            let history = [context, generated].concat();
            let next = match &mut scores {
                Scores::Logits(l) => sampling::sample(l, &params.sampling, &history, &mut self.rng),
                Scores::Top(c) => {
                    sampling::sample_candidates(std::mem::take(c), &params.sampling, &mut self.rng)
                }
            };
            result.tokens.push(next);
            if is_stop_token(next) {
                self.unfed.push(next);
                result.stop_reason = StopReason::StopToken;
                break;
            }
            let piece = detok.push(tokenizer, next)?;
            let fed = stops.feed(&piece);
            result.text.push_str(&fed.emit);
            let keep_going = on_token(&TokenEvent {
                token: next,
                text: &fed.emit,
            });
            if fed.stopped {
                self.unfed.push(next);
                result.stop_reason = StopReason::StopString;
                break;
            }
            if !keep_going {
                self.unfed.push(next);
                result.stop_reason = StopReason::Callback;
                break;
            }
            if params.max_tokens > 0 && result.tokens.len() >= params.max_tokens {
                self.unfed.push(next);
                result.stop_reason = StopReason::MaxTokens;
                break;
            }
            if self.tokens.len() >= self.n_ctx() {
                self.unfed.push(next);
                result.stop_reason = StopReason::ContextFull;
                break;
            }
            match self.feed_next(next, device_k)? {
                Some(s) => scores = s,
                None => {
                    result.stop_reason = StopReason::Cancelled;
                    break;
                }
            }
        }
        if !matches!(result.stop_reason, StopReason::StopString) {
            let tail = detok.flush(tokenizer)?;
            let mut rest = stops.feed(&tail);
            if !rest.stopped {
                rest.emit.push_str(&stops.flush());
            }
            if !rest.emit.is_empty() {
                on_token(&TokenEvent {
                    token: *result.tokens.last().unwrap_or(&0),
                    text: &rest.emit,
                });
                result.text.push_str(&rest.emit);
            }
        }
        result.decode_seconds = decode_start.elapsed().as_secs_f64();
        Ok(result)
    }

    /// Negative log-likelihood of each token of `text` given its predecessors (BOS added as the
    /// tokenizer adds it; the first token is not scored). Uses its own cache: the session's
    /// context is left as it was.
    pub fn score(&mut self, text: &str) -> Result<ScoreResult> {
        let tokens = self.model.tokenize(text, true)?;
        self.score_tokens(&tokens)
    }

    /// As `score`, from token ids.
    pub fn score_tokens(&mut self, tokens: &[TokenId]) -> Result<ScoreResult> {
        let cancel = self.cancel.clone();
        let _clear = ClearOnDrop(&cancel);
        if tokens.len() < 2 {
            return Err(Error::invalid_argument(format!(
                "scoring needs at least 2 tokens, the text has {}",
                tokens.len()
            )));
        }
        if tokens.len() > self.n_ctx() {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "text of {} tokens is longer than the context ({})",
                    tokens.len(),
                    self.n_ctx()
                ),
            ));
        }
        let cfg = self.model.config();
        let mut kv = Caches::new(
            &self.model,
            tokens.len(),
            self.kv.cpu.kv_type(),
            self.on_gpu(),
        )?;
        let mut nll = Vec::with_capacity(tokens.len() - 1);
        let model = self.model.clone();
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let mut score_rows = |first: usize, logits: &[f32]| {
            for (k, row) in logits.chunks_exact(vocab).enumerate() {
                if let Some(&target) = tokens.get(first + k + 1) {
                    nll.push(neg_log_softmax(row, target as usize));
                }
            }
        };
        // On the GPU, passes of at most 64 tokens: their logits are 64 rows, not n_batch.
        let step = if self.on_gpu() {
            self.n_batch.min(64)
        } else {
            self.n_batch
        };
        for (ci, chunk) in tokens.chunks(step).enumerate() {
            if self.cancelled() {
                return Err(Error::new(ErrorKind::Cancelled, "score was cancelled"));
            }
            let adapters = self.trainer.as_ref().map(|t| &t.adapters);
            match kv.forward(&model, chunk, adapters, true)? {
                Pass::Logits(l) => score_rows(ci * step, &l),
                Pass::Hidden(hidden) => {
                    // Logits a few rows at a time: never a [tokens, vocab] matrix for large
                    // vocabularies.
                    for (ri, rows) in hidden.chunks(16 * h).enumerate() {
                        let logits = model.compute(|| model.transformer().logits(rows));
                        score_rows(ci * step + ri * 16, &logits);
                    }
                }
            }
        }
        Ok(ScoreResult {
            tokens: tokens.to_vec(),
            nll,
        })
    }
}

/// −log softmax(row)[target], in f64.
pub fn neg_log_softmax(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - row[target] as f64
}
