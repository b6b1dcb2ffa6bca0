//! Generation: params, the synchronous call with its per-token callback, and its result.

use std::ffi::{c_char, c_void};

use super::boundary::{call, out_struct, params, write_out};
use super::session::bit_ttt_session;
use super::session::{shared, with_session};
use super::status::*;
use super::strings::bit_ttt_string;
use super::strings::{items_out, slice_in, str_in, string_in, text_out};
use crate::{GenerateParams, GenerateResult, SamplingParams, StopReason};

/// Called for each generated token with the text it releases (`text_len` bytes of whole UTF-8
/// characters, possibly 0; NUL-terminated; valid only during the call). Runs on the thread that
/// called bit_ttt_generate. Return non-zero to stop generation.
pub type bit_ttt_token_callback = Option<
    extern "C" fn(user_data: *mut c_void, token: i32, text: *const c_char, text_len: usize) -> i32,
>;

/// `seed` value meaning: continue the session's random stream.
pub const BIT_TTT_SEED_CONTINUE: u64 = u64::MAX;

/// Why generation ended (bit_ttt_generate_result.stop_reason).
pub const BIT_TTT_STOP_TOKEN: i32 = 1;
pub const BIT_TTT_STOP_STRING: i32 = 2;
pub const BIT_TTT_STOP_MAX_TOKENS: i32 = 3;
pub const BIT_TTT_STOP_CONTEXT_FULL: i32 = 4;
pub const BIT_TTT_STOP_CANCELLED: i32 = 5;
pub const BIT_TTT_STOP_CALLBACK: i32 = 6;

/// Options for one generate call. Initialise with bit_ttt_generate_params_init.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_generate_params {
    pub struct_size: u32,
    /// Most tokens to generate; 0 = until the context is full. Default 256.
    pub max_tokens: i32,
    /// 0 = greedy. Default 0.8.
    pub temperature: f32,
    /// 0 = off. Default 40.
    pub top_k: i32,
    /// 1 = off. Default 0.95.
    pub top_p: f32,
    /// 0 = off. Default 0.05.
    pub min_p: f32,
    /// 1 = off. Default 1.
    pub repeat_penalty: f32,
    /// Recent tokens the penalties look at. Default 64.
    pub repeat_last_n: i32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Reseeds the session's sampler; BIT_TTT_SEED_CONTINUE (default) continues its stream.
    pub seed: u64,
    /// Generation stops before any of these strings (never emitted).
    pub stop_strings: *const bit_ttt_string,
    pub n_stop_strings: usize,
    /// Extra token ids that end generation.
    pub stop_tokens: *const i32,
    pub n_stop_tokens: usize,
    /// Non-zero: keep going past the model's EOS/EOT tokens.
    pub ignore_eos: u8,
    /// Per-token callback (NULL for none). Must be NULL for bit_ttt_generate_async.
    pub on_token: bit_ttt_token_callback,
    pub user_data: *mut c_void,
}

/// What a generate call produced. Set struct_size before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_generate_result {
    pub struct_size: u32,
    /// BIT_TTT_STOP_*.
    pub stop_reason: i32,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

impl bit_ttt_generate_params {
    pub(crate) fn defaults() -> Self {
        let d = GenerateParams::default();
        let s = &d.sampling;
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            max_tokens: d.max_tokens as i32,
            temperature: s.temperature,
            top_k: s.top_k as i32,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: s.repeat_last_n as i32,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: BIT_TTT_SEED_CONTINUE,
            stop_strings: std::ptr::null(),
            n_stop_strings: 0,
            stop_tokens: std::ptr::null(),
            n_stop_tokens: 0,
            ignore_eos: 0,
            on_token: None,
            user_data: std::ptr::null_mut(),
        }
    }

    /// The Rust params, with every array copied (so async jobs own them).
    pub(crate) fn into_rust(self) -> FfiResult<GenerateParams> {
        let nonneg = |v: i32, name: &str| {
            usize::try_from(v).map_err(|_| FfiError::invalid(format!("{name} = {v}: must be >= 0")))
        };
        let stop = slice_in(self.stop_strings, self.n_stop_strings, "stop_strings")?
            .iter()
            .map(|s| string_in(s, "stop_strings[]"))
            .collect::<FfiResult<Vec<_>>>()?;
        let stop_tokens = slice_in(self.stop_tokens, self.n_stop_tokens, "stop_tokens")?
            .iter()
            .map(|&t| {
                u32::try_from(t)
                    .map_err(|_| FfiError::invalid(format!("stop token {t} is negative")))
            })
            .collect::<FfiResult<Vec<_>>>()?;
        let p = GenerateParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: nonneg(self.top_k, "top_k")?,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: nonneg(self.repeat_last_n, "repeat_last_n")?,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: (self.seed != BIT_TTT_SEED_CONTINUE).then_some(self.seed),
            },
            max_tokens: nonneg(self.max_tokens, "max_tokens")?,
            stop,
            stop_tokens,
            ignore_eos: self.ignore_eos != 0,
        };
        p.sampling.validate()?;
        Ok(p)
    }
}

pub(crate) fn stop_reason_code(r: StopReason) -> i32 {
    match r {
        StopReason::StopToken => BIT_TTT_STOP_TOKEN,
        StopReason::StopString => BIT_TTT_STOP_STRING,
        StopReason::MaxTokens => BIT_TTT_STOP_MAX_TOKENS,
        StopReason::ContextFull => BIT_TTT_STOP_CONTEXT_FULL,
        StopReason::Cancelled => BIT_TTT_STOP_CANCELLED,
        StopReason::Callback => BIT_TTT_STOP_CALLBACK,
    }
}

pub(crate) fn result_out(r: &GenerateResult) -> bit_ttt_generate_result {
    bit_ttt_generate_result {
        struct_size: std::mem::size_of::<bit_ttt_generate_result>() as u32,
        stop_reason: stop_reason_code(r.stop_reason),
        prompt_tokens: r.prompt_tokens as u32,
        generated_tokens: r.tokens.len() as u32,
        prefill_ms: r.prefill_seconds * 1e3,
        decode_ms: r.decode_seconds * 1e3,
    }
}

/// Fills `params` with defaults (and its struct_size).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_generate_params_init(
    params: *mut bit_ttt_generate_params,
) -> bit_ttt_status {
    call(|| write_out(params, bit_ttt_generate_params::defaults()))
}

/// Generates a continuation of `prompt` (raw text; BOS is added when the context is empty) and
/// appends both to the session's context. Streams through `params->on_token`. Returns
/// BIT_TTT_CANCELLED if bit_ttt_session_cancel stopped it (the text so far is in
/// bit_ttt_session_last_text); `out_result` (may be NULL) is written on success.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_generate(
    session: *const bit_ttt_session,
    prompt: *const c_char,
    prompt_len: usize,
    params: *const bit_ttt_generate_params,
    out_result: *mut bit_ttt_generate_result,
) -> bit_ttt_status {
    with_session(session, |sess, s| {
        let out = if out_result.is_null() {
            None
        } else {
            Some(out_struct(out_result, "out_result")?)
        };
        let prompt = str_in(prompt, prompt_len, "prompt")?;
        let raw = self::params(
            params,
            "bit_ttt_generate_params",
            bit_ttt_generate_params::defaults,
        )?;
        let p = raw.into_rust()?;
        let mut buf = Vec::new();
        let result = sess.generate(prompt, &p, |ev| match raw.on_token {
            None => true,
            Some(cb) => {
                buf.clear();
                buf.extend_from_slice(ev.text.as_bytes());
                buf.push(0);
                cb(
                    raw.user_data,
                    ev.token as i32,
                    buf.as_ptr().cast(),
                    ev.text.len(),
                ) == 0
            }
        })?;
        *s.last_output.lock() = (
            result.text.clone(),
            result.tokens.iter().map(|&t| t as i32).collect(),
        );
        if result.stop_reason == StopReason::Cancelled {
            return Err(FfiError::new(BIT_TTT_CANCELLED, "generation was cancelled"));
        }
        match out {
            Some(o) => write_out(o, result_out(&result)),
            None => Ok(()),
        }
    })
}

/// The text of the session's last generate (also after CANCELLED).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_last_text(
    session: *const bit_ttt_session,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> bit_ttt_status {
    call(|| text_out(&shared(session)?.last_output.lock().0, buf, cap, out_len))
}

/// The tokens of the session's last generate (a final stop token included).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_last_tokens(
    session: *const bit_ttt_session,
    buf: *mut i32,
    cap: usize,
    out_len: *mut usize,
) -> bit_ttt_status {
    call(|| items_out(&shared(session)?.last_output.lock().1, buf, cap, out_len))
}
