//! adapt: params, the synchronous call with its progress callback, the async job, and eval_nll.

use std::ffi::{c_char, c_void};

use super::boundary::{call, out_ptr, out_struct, params, write_out};
use super::job::{JobShared, Outcome, bit_ttt_job, job_shared, spawn};
use super::session::{bit_ttt_session, with_session};
use super::status::*;
use super::strings::str_in;
use crate::Session;
use crate::{AdaptParams, AdaptResult};

/// Called after each adapt step with the step (1-based), the number of steps and the step's
/// mean loss in nats per token. Runs on the thread that called bit_ttt_adapt. Return non-zero
/// to stop after this step (the steps taken are kept; the call returns BIT_TTT_OK).
pub type bit_ttt_adapt_callback =
    Option<extern "C" fn(user_data: *mut c_void, step: i32, total_steps: i32, loss: f32) -> i32>;

/// Options for adapt. Initialise with bit_ttt_adapt_params_init.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_adapt_params {
    pub struct_size: u32,
    /// LoRA rank r. Default 16.
    pub rank: i32,
    /// LoRA α; updates are scaled by α / r. Default 16.
    pub alpha: f32,
    /// Adapt the top `layers` layers: 0 (default) = the last quarter; >= the layer count = all.
    pub layers: i32,
    /// Bit mask of adapted projections: 1 q, 2 k, 4 v, 8 o, 16 gate, 32 up, 64 down. Default 0x7f.
    pub projections: u32,
    /// AdamW. Defaults: 3e-3 (chosen by the sweep in docs/ADAPT.md), 0, 0.9, 0.999, 1e-8.
    pub learning_rate: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Largest global gradient norm; 0 = no clipping. Default 1.
    pub clip: f32,
    /// Tokens per training window (one step each). Default 512.
    pub chunk_tokens: i32,
    /// Passes over the text. Default 2.
    pub epochs: i32,
    /// Seed of the adapters' initial values (when the session has none yet).
    pub seed: u64,
    /// Pull towards the initial adapter per step; 0 (default) = off.
    pub decay_to_init: f32,
    /// Non-zero: keep the KV cache computed with the old adapters (default: recompute it).
    pub keep_kv: u8,
    /// Progress callback (NULL for none). Must be NULL for bit_ttt_adapt_async.
    pub on_progress: bit_ttt_adapt_callback,
    pub user_data: *mut c_void,
}

/// What an adapt call did. Set struct_size before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_adapt_result {
    pub struct_size: u32,
    pub steps: u32,
    /// Tokens in the text.
    pub tokens: u32,
    /// Mean loss (nats per token) of the first and of the last step, before each step.
    pub first_loss: f32,
    pub last_loss: f32,
    pub ms: f64,
}

impl bit_ttt_adapt_params {
    fn defaults() -> Self {
        let d = AdaptParams::default();
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            rank: d.rank as i32,
            alpha: d.alpha,
            layers: d.layers as i32,
            projections: d.projections,
            learning_rate: d.learning_rate,
            weight_decay: d.weight_decay,
            beta1: d.beta1,
            beta2: d.beta2,
            eps: d.eps,
            clip: d.clip,
            chunk_tokens: d.chunk_tokens as i32,
            epochs: d.epochs as i32,
            seed: d.seed,
            decay_to_init: d.decay_to_init,
            keep_kv: u8::from(d.keep_kv),
            on_progress: None,
            user_data: std::ptr::null_mut(),
        }
    }

    fn into_rust(self) -> FfiResult<AdaptParams> {
        let nonneg = |v: i32, name: &str| {
            usize::try_from(v).map_err(|_| FfiError::invalid(format!("{name} = {v}: must be >= 0")))
        };
        let p = AdaptParams {
            rank: nonneg(self.rank, "rank")?,
            alpha: self.alpha,
            layers: nonneg(self.layers, "layers")?,
            projections: self.projections,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            clip: self.clip,
            chunk_tokens: nonneg(self.chunk_tokens, "chunk_tokens")?,
            epochs: nonneg(self.epochs, "epochs")?,
            seed: self.seed,
            decay_to_init: self.decay_to_init,
            keep_kv: self.keep_kv != 0,
        };
        p.validate()?;
        Ok(p)
    }
}

fn result_out(r: &AdaptResult) -> bit_ttt_adapt_result {
    bit_ttt_adapt_result {
        struct_size: std::mem::size_of::<bit_ttt_adapt_result>() as u32,
        steps: r.steps as u32,
        tokens: r.tokens as u32,
        first_loss: r.first_loss,
        last_loss: r.last_loss,
        ms: r.seconds * 1e3,
    }
}

/// Fills `params` with defaults (and its struct_size).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_adapt_params_init(params: *mut bit_ttt_adapt_params) -> bit_ttt_status {
    call(|| write_out(params, bit_ttt_adapt_params::defaults()))
}

/// Offline (`bit_ttt_adapt`) or online (`bit_ttt_adapt_online`) training.
#[derive(Clone, Copy)]
enum Mode {
    Offline,
    Online,
}

fn run_adapt(
    sess: &mut Session,
    mode: Mode,
    text: &str,
    p: &AdaptParams,
    progress: impl FnMut(&crate::AdaptProgress) -> bool,
) -> crate::Result<AdaptResult> {
    match mode {
        Mode::Offline => sess.adapt(text, p, progress),
        Mode::Online => sess.adapt_online(text, p, progress),
    }
}

fn adapt_sync(
    session: *const bit_ttt_session,
    mode: Mode,
    text: *const c_char,
    text_len: usize,
    params: *const bit_ttt_adapt_params,
    out_result: *mut bit_ttt_adapt_result,
) -> bit_ttt_status {
    with_session(session, |sess, _| {
        let out = if out_result.is_null() {
            None
        } else {
            Some(out_struct(out_result, "out_result")?)
        };
        let text = str_in(text, text_len, "text")?;
        let raw = self::params(
            params,
            "bit_ttt_adapt_params",
            bit_ttt_adapt_params::defaults,
        )?;
        let p = raw.into_rust()?;
        let r = run_adapt(sess, mode, text, &p, |pr| match raw.on_progress {
            None => true,
            Some(cb) => {
                cb(
                    raw.user_data,
                    pr.step as i32,
                    pr.total_steps as i32,
                    pr.loss,
                ) == 0
            }
        })?;
        match out {
            Some(o) => write_out(o, result_out(&r)),
            None => Ok(()),
        }
    })
}

fn adapt_async(
    session: *const bit_ttt_session,
    mode: Mode,
    text: *const c_char,
    text_len: usize,
    params: *const bit_ttt_adapt_params,
    out_job: *mut *mut bit_ttt_job,
) -> bit_ttt_status {
    spawn(session, out_job, || {
        let text = str_in(text, text_len, "text")?.to_string();
        let raw = self::params(
            params,
            "bit_ttt_adapt_params",
            bit_ttt_adapt_params::defaults,
        )?;
        if raw.on_progress.is_some() {
            return Err(FfiError::invalid(
                "on_progress must be NULL for an async job: read bit_ttt_job_adapt_progress",
            ));
        }
        let p = raw.into_rust()?;
        Ok(Box::new(move |sess: &mut Session, job: &JobShared| {
            let r = run_adapt(sess, mode, &text, &p, |pr| {
                job.state.lock().progress = Some(*pr);
                job.changed.notify_all();
                true
            })?;
            Ok(Outcome::Adapt(r))
        }))
    })
}

/// Trains the session's adapters on `text` (test-time training; the model is not modified
/// and the text is not added to the context). Returns BIT_TTT_CANCELLED if
/// bit_ttt_session_cancel stopped it (within one step; the steps taken are kept).
/// `out_result` (may be NULL) is written on success.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_adapt(
    session: *const bit_ttt_session,
    text: *const c_char,
    text_len: usize,
    params: *const bit_ttt_adapt_params,
    out_result: *mut bit_ttt_adapt_result,
) -> bit_ttt_status {
    adapt_sync(session, Mode::Offline, text, text_len, params, out_result)
}

/// Online test-time training while reading: appends `text` to the session's context (BOS
/// added when the context is empty) in windows of `chunk_tokens`, scoring each window with the
/// current adapters (the loss the callback reports: the window's mean next-token NLL given all
/// text before it) and then taking one step on it. `epochs` is not used. Generation continues
/// right after the text (its last token is run by the next bit_ttt_generate, which may have an
/// empty prompt). A text that does not fit in the context is refused (BIT_TTT_CONTEXT_FULL)
/// before anything is read; a cancel stops within one window, keeping what was read.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_adapt_online(
    session: *const bit_ttt_session,
    text: *const c_char,
    text_len: usize,
    params: *const bit_ttt_adapt_params,
    out_result: *mut bit_ttt_adapt_result,
) -> bit_ttt_status {
    adapt_sync(session, Mode::Online, text, text_len, params, out_result)
}

/// Starts adapt on an internal thread and returns at once; poll or wait on the job, read its
/// progress with bit_ttt_job_adapt_progress and its result with bit_ttt_job_adapt_result.
/// `params->on_progress` must be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_adapt_async(
    session: *const bit_ttt_session,
    text: *const c_char,
    text_len: usize,
    params: *const bit_ttt_adapt_params,
    out_job: *mut *mut bit_ttt_job,
) -> bit_ttt_status {
    adapt_async(session, Mode::Offline, text, text_len, params, out_job)
}

/// bit_ttt_adapt_online on an internal thread, as bit_ttt_adapt_async.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_adapt_online_async(
    session: *const bit_ttt_session,
    text: *const c_char,
    text_len: usize,
    params: *const bit_ttt_adapt_params,
    out_job: *mut *mut bit_ttt_job,
) -> bit_ttt_status {
    adapt_async(session, Mode::Online, text, text_len, params, out_job)
}

/// The last step an adapt job reported: step (0 before the first), total steps and its loss.
/// Never blocks.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_job_adapt_progress(
    job: *const bit_ttt_job,
    out_step: *mut i32,
    out_total_steps: *mut i32,
    out_loss: *mut f32,
) -> bit_ttt_status {
    call(|| {
        let j = job_shared(job)?;
        if out_step.is_null() || out_total_steps.is_null() || out_loss.is_null() {
            return Err(FfiError::null("out_step / out_total_steps / out_loss"));
        }
        let p = j.state.lock().progress;
        let (step, total, loss) = p.map_or((0, 0, f32::NAN), |p| {
            (p.step as i32, p.total_steps as i32, p.loss)
        });
        write_out(out_step, step)?;
        write_out(out_total_steps, total)?;
        write_out(out_loss, loss)
    })
}

/// The outcome of a finished adapt job: its status (BIT_TTT_OK, BIT_TTT_CANCELLED, an error),
/// with `out_result` (may be NULL) written on OK. BIT_TTT_BUSY while it still runs.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_job_adapt_result(
    job: *const bit_ttt_job,
    out_result: *mut bit_ttt_adapt_result,
) -> bit_ttt_status {
    call(|| {
        let j = job_shared(job)?;
        let out = if out_result.is_null() {
            None
        } else {
            Some(out_struct(out_result, "out_result")?)
        };
        let st = j.state.lock();
        match (st.finished()?, out) {
            (Some(Outcome::Adapt(r)), Some(o)) => write_out(o, result_out(r)),
            (Some(Outcome::Generate(_)), _) => Err(FfiError::invalid(
                "this is a generate job: read its result with bit_ttt_job_result",
            )),
            _ => Ok(()),
        }
    })
}

/// Mean negative log-likelihood (nats per token) of `text` under the session's current
/// adapters, BOS added as the tokenizer adds it and the first token not scored: the measuring
/// stick of adapt. The context is left as it was. `out_tokens` (may be NULL) gets the number
/// of tokens of the text.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_eval_nll(
    session: *const bit_ttt_session,
    text: *const c_char,
    text_len: usize,
    out_nll: *mut f64,
    out_tokens: *mut usize,
) -> bit_ttt_status {
    with_session(session, |sess, _| {
        out_ptr(out_nll, "out_nll")?;
        let text = str_in(text, text_len, "text")?;
        let s = sess.score(text)?;
        if !out_tokens.is_null() {
            write_out(out_tokens, s.tokens.len())?;
        }
        write_out(out_nll, s.nll_mean())
    })
}
