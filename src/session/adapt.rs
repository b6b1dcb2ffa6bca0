//! `adapt` on a session: training its adapters on text, keeping the KV cache consistent with
//! them, and scoring with them.

use super::{ClearOnDrop, Session};
use crate::TokenId;
use crate::adapt::{self, AdaptParams, AdaptProgress, AdaptResult, Trainer};
use crate::error::{Error, ErrorKind, Result};
use crate::model::caches::Caches;
use crate::transformer::kv_cache::KvCache;

impl Session {
    /// Trains the session's adapters on `text` (BOS added as the tokenizer adds it): windows
    /// of `chunk_tokens`, `epochs` passes, one AdamW step per window. The text is not added to
    /// the context. `progress` sees every step and returns false to stop early (the steps taken
    /// are kept). A cancel stops within one step with `ErrorKind::Cancelled`, keeping the steps
    /// taken before it.
    pub fn adapt(
        &mut self,
        text: &str,
        params: &AdaptParams,
        progress: impl FnMut(&AdaptProgress) -> bool,
    ) -> Result<AdaptResult> {
        let tokens = self.model.tokenize(text, true)?;
        self.adapt_tokens(&tokens, params, progress)
    }

    /// As `adapt`, from token ids.
    pub fn adapt_tokens(
        &mut self,
        tokens: &[TokenId],
        params: &AdaptParams,
        progress: impl FnMut(&AdaptProgress) -> bool,
    ) -> Result<AdaptResult> {
        let cancel = self.cancel.clone();
        let _clear = ClearOnDrop(&cancel);
        self.check_adapt_input(tokens, params)?;
        let windows = adapt::windows(tokens.len(), params.chunk_tokens);
        if windows.is_empty() {
            return Err(Error::invalid_argument(format!(
                "adapt: the text has {} tokens, at least 2 are needed",
                tokens.len()
            )));
        }
        self.ensure_trainer(params)?;
        let mut tally = Tally::new(tokens.len(), windows.len() * params.epochs, progress);
        'epochs: for _ in 0..params.epochs {
            for w in &windows {
                if self.cancelled() {
                    return Err(Error::new(ErrorKind::Cancelled, "adapt was cancelled"));
                }
                let step = self.train_step(&tokens[w.clone()], params, false)?;
                if !params.keep_kv && !self.tokens.is_empty() {
                    self.kv_stale = true;
                }
                if !tally.step(&step) {
                    break 'epochs;
                }
            }
        }
        Ok(tally.finish())
    }

    /// Online test-time training while reading: appends `text` to the context (BOS added when
    /// the context is empty) in windows of `chunk_tokens`, and for each window first scores it
    /// with the current adapters (its mean next-token loss given everything before it, which
    /// `progress` reports) and then takes one AdamW step on it (score-then-update). `epochs`
    /// is not used: each token is read once. The last token is left for the next `generate`
    /// to run, as a prompt's is, so generation continues right after the text.
    ///
    /// Each window's keys and values are computed with the adapters before its step; with
    /// `keep_kv` off (default) the whole context is recomputed with the final adapters when next
    /// needed. A text that does not fit in the context is refused before anything is read; a
    /// cancel stops within one window, keeping the windows read and the steps taken.
    pub fn adapt_online(
        &mut self,
        text: &str,
        params: &AdaptParams,
        progress: impl FnMut(&AdaptProgress) -> bool,
    ) -> Result<AdaptResult> {
        let tokens = self.prompt_tokens(text)?;
        self.adapt_online_tokens(&tokens, params, progress)
    }

    /// As `adapt_online`, from token ids.
    pub fn adapt_online_tokens(
        &mut self,
        tokens: &[TokenId],
        params: &AdaptParams,
        progress: impl FnMut(&AdaptProgress) -> bool,
    ) -> Result<AdaptResult> {
        let cancel = self.cancel.clone();
        let _clear = ClearOnDrop(&cancel);
        self.check_adapt_input(tokens, params)?;
        let pending = self.unfed.len();
        let mut input = self.unfed.clone();
        input.extend_from_slice(tokens);
        if input.len() < 2 {
            return Err(Error::invalid_argument(format!(
                "adapt: the text has {} tokens, at least 2 are needed",
                tokens.len()
            )));
        }
        self.check_fits(tokens.len())?;
        self.refresh_kv()?;
        self.ensure_trainer(params)?;
        self.unfed.clear();
        // The last token stays unfed: the next generate runs it and samples from its logits.
        let last = input.pop().expect("at least 2 tokens");
        let windows = adapt::windows(input.len(), params.chunk_tokens);
        let mut tally = Tally::new(tokens.len(), windows.len(), progress);
        let model = self.model.clone();
        let tf = model.transformer();
        let mut read = 0;
        let mut stopped = false;
        let mut outcome = Ok(());
        for w in &windows {
            if self.cancelled() {
                outcome = Err(Error::new(ErrorKind::Cancelled, "adapt was cancelled"));
                break;
            }
            let window = &input[w.clone()];
            let step = match self.train_step(window, params, true) {
                Ok(step) => step,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            self.tokens.extend_from_slice(window);
            read = w.end;
            if !params.keep_kv {
                self.kv_stale = true;
            }
            if !tally.step(&step) {
                stopped = true;
                break;
            }
        }
        // A lone token (nothing to score) is read without a step.
        if outcome.is_ok() && !stopped && read < input.len() {
            let rest = &input[read..];
            let cache = &mut self.kv.cpu;
            let adapters = self.trainer.as_ref().map(|t| &t.adapters);
            model.compute(|| tf.forward_with(cache, rest, adapters, None))?;
            self.tokens.extend_from_slice(rest);
            read = input.len();
        }
        if read == input.len() {
            self.unfed.push(last);
        } else if read < pending {
            // Stopped before the tokens a previous generate left unfed were read: keep them.
            self.unfed = input[read..pending].to_vec();
        }
        outcome.map(|()| tally.finish())
    }

    /// One AdamW step of the session's adapters on `window`: scored from the start of a
    /// context of its own, or (`in_context`, online) after the session's context, to which its
    /// keys and values are then appended.
    fn train_step(
        &mut self,
        window: &[TokenId],
        params: &AdaptParams,
        in_context: bool,
    ) -> Result<adapt::Step> {
        let model = self.model.clone();
        let trainer = self.trainer.as_mut().expect("ensure_trainer ran");
        let tf = model.transformer();
        if in_context {
            let cache = &mut self.kv.cpu;
            return model.compute(|| trainer.step(tf, cache, window, params));
        }
        let mut cache = KvCache::new(model.config(), window.len(), self.kv.cpu.kv_type());
        model.compute(|| trainer.step(tf, &mut cache, window, params))
    }

    /// Validates adapt parameters and token ids.
    fn check_adapt_input(&self, tokens: &[TokenId], params: &AdaptParams) -> Result<()> {
        params.validate()?;
        let vocab = self.model.config().vocab_size;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid_argument(format!(
                "adapt: token {bad} is outside the vocabulary ({vocab})"
            )));
        }
        Ok(())
    }

    /// Creates the adapters on first use; refuses parameters of another shape than the
    /// adapters the session already has.
    fn ensure_trainer(&mut self, params: &AdaptParams) -> Result<()> {
        let shape = params.shape(self.model.config().num_layers);
        match &self.trainer {
            Some(t) if t.adapters.shape != shape => Err(Error::invalid_argument(format!(
                "adapt: the session's adapters have rank {}, alpha {}, layers {}.., projections {:#x}; \
                 these parameters ask for rank {}, alpha {}, layers {}.., projections {:#x} \
                 (reset the adapters first)",
                t.adapters.shape.rank,
                t.adapters.shape.alpha,
                t.adapters.shape.first_layer,
                t.adapters.shape.projections,
                shape.rank,
                shape.alpha,
                shape.first_layer,
                shape.projections
            ))),
            Some(_) => Ok(()),
            None => {
                // Adapters run on the CPU: the context the GPU holds moves there first.
                self.move_kv_to_cpu()?;
                self.trainer = Some(Trainer::new(
                    &self.model.transformer().weights,
                    shape,
                    params.seed,
                ));
                Ok(())
            }
        }
    }

    /// True when the session has adapters (trained or not).
    pub fn has_adapters(&self) -> bool {
        self.trainer.is_some()
    }

    /// The session's trainable state, if any.
    pub fn trainer(&self) -> Option<&Trainer> {
        self.trainer.as_ref()
    }

    /// Recomputes the KV cache with the current adapters when they changed since it was
    /// filled. Built aside and swapped in, so a cancel leaves the session as it was.
    pub(super) fn refresh_kv(&mut self) -> Result<()> {
        if !self.kv_stale {
            return Ok(());
        }
        if self.tokens.is_empty() {
            self.kv_stale = false;
            return Ok(());
        }
        let (capacity, kv_type) = (self.kv.capacity(), self.kv.cpu.kv_type());
        let mut kv = Caches::new(&self.model, capacity, kv_type, self.on_gpu())?;
        let model = self.model.clone();
        let adapters = self.trainer.as_ref().map(|t| &t.adapters);
        for chunk in self.tokens.chunks(self.n_batch) {
            if self.cancel.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::new(
                    ErrorKind::Cancelled,
                    "cancelled while recomputing the context",
                ));
            }
            kv.forward(&model, chunk, adapters, false)?;
        }
        self.kv.adopt(kv);
        self.kv_stale = false;
        Ok(())
    }

    /// NLL of `tokens[p]` given its predecessors for every `p` in `scored_from.max(1)..`, with a
    /// sliding window: each token is scored with at most `window` tokens of context (at least
    /// `window / 2` where the text allows), so texts longer than the context can be scored.
    /// Uses its own cache and the current adapters; the session's context is left as it was.
    pub fn score_windowed(
        &mut self,
        tokens: &[TokenId],
        scored_from: usize,
        window: usize,
    ) -> Result<Vec<f64>> {
        let cancel = self.cancel.clone();
        let _clear = ClearOnDrop(&cancel);
        if window < 2 || window > self.n_ctx() {
            return Err(Error::invalid_argument(format!(
                "score window {window} must be in 2..={}",
                self.n_ctx()
            )));
        }
        let cfg = self.model.config().clone();
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::invalid_argument(format!(
                "token {bad} is outside the vocabulary ({})",
                cfg.vocab_size
            )));
        }
        let stride = window / 2;
        let model = self.model.clone();
        let tf = model.transformer();
        let adapters = self.trainer.as_ref().map(|t| &t.adapters);
        let mut nll = Vec::new();
        let mut p = scored_from.max(1);
        while p < tokens.len() {
            if self.cancelled() {
                return Err(Error::new(ErrorKind::Cancelled, "score was cancelled"));
            }
            let end = (p + stride).min(tokens.len());
            let start = end.saturating_sub(window);
            let mut cache = KvCache::new(&cfg, end - start, self.kv.cpu.kv_type());
            let mut hidden = Vec::new();
            for chunk in tokens[start..end].chunks(self.n_batch) {
                hidden
                    .extend(model.compute(|| tf.forward_with(&mut cache, chunk, adapters, None))?);
            }
            let h = cfg.hidden_size;
            for rows in (p - 1 - start..end - 1 - start)
                .collect::<Vec<_>>()
                .chunks(16)
            {
                let states = &hidden[rows[0] * h..(rows[rows.len() - 1] + 1) * h];
                let logits = model.compute(|| tf.logits(states));
                for (k, row) in logits.chunks_exact(cfg.vocab_size).enumerate() {
                    let target = tokens[start + rows[k] + 1];
                    nll.push(crate::session::neg_log_softmax(row, target as usize));
                }
            }
            p = end;
        }
        Ok(nll)
    }

    /// Mean negative log-likelihood (nats per scored token) of `text` under the current
    /// adapters: the measuring stick of `adapt`. The session's context is left as it was.
    pub fn eval_nll(&mut self, text: &str) -> Result<f64> {
        Ok(self.score(text)?.nll_mean())
    }
}

/// What both adapt loops keep of their steps: the count, the first and last loss, the time;
/// each step is reported to the caller's `progress`.
struct Tally<F> {
    result: AdaptResult,
    total: usize,
    start: std::time::Instant,
    progress: F,
}

impl<F: FnMut(&AdaptProgress) -> bool> Tally<F> {
    fn new(tokens: usize, total: usize, progress: F) -> Self {
        Tally {
            result: AdaptResult {
                steps: 0,
                tokens,
                first_loss: f32::NAN,
                last_loss: f32::NAN,
                seconds: 0.0,
            },
            total,
            start: std::time::Instant::now(),
            progress,
        }
    }

    /// Counts `step` and reports it; false when `progress` asks to stop.
    fn step(&mut self, step: &adapt::Step) -> bool {
        let r = &mut self.result;
        r.steps += 1;
        if r.steps == 1 {
            r.first_loss = step.loss;
        }
        r.last_loss = step.loss;
        r.seconds = self.start.elapsed().as_secs_f64();
        (self.progress)(&AdaptProgress {
            step: r.steps,
            total_steps: self.total,
            loss: step.loss,
            grad_norm: step.grad_norm,
        })
    }

    fn finish(mut self) -> AdaptResult {
        self.result.seconds = self.start.elapsed().as_secs_f64();
        self.result
    }
}
