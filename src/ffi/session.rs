//! Sessions: one conversation (KV cache, tokens, RNG). One call at a time: a concurrent call gets
//! BUSY. Cancel works from any thread at any time.

use std::ffi::{CString, c_char};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::boundary::{call, call_with, handle, out_ptr, out_struct, versioned_params, write_out};
use super::model::{bit_ttt_memory_estimate, bit_ttt_model};
use super::status::*;
use super::strings::{bit_ttt_string, path_in, string_in};
use crate::{CancelHandle, KvType, ResetParts, Session, SessionParams};

/// The shared part of a session handle; async jobs hold it too.
pub(crate) struct SessionShared {
    pub session: Arc<Mutex<Session>>,
    /// True while a call (or job) holds the session. Cancel requests and the start of a call
    /// are ordered by this lock, so a cancel is never lost nor left over for the next call.
    pub running: Mutex<bool>,
    pub cancel: CancelHandle,
    pub poisoned: AtomicBool,
    pub last_error: Mutex<CString>,
    /// Text and tokens of the last generate, for bit_ttt_session_last_text / _tokens.
    pub last_output: Mutex<(String, Vec<i32>)>,
}

/// A session over a model. Free with bit_ttt_session_free.
pub struct bit_ttt_session {
    pub(crate) shared: Arc<SessionShared>,
}

/// Options for a session. Initialise with bit_ttt_session_params_init.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_session_params {
    pub struct_size: u32,
    /// Context length in tokens; 0 = the model's maximum.
    pub n_ctx: u32,
    /// Prompt tokens per forward pass (and per cancellation check); default 512.
    pub n_batch: u32,
    /// Seed of the session's sampler.
    pub seed: u64,
    /// How the KV cache stores keys and values, by name: "f32" (exact; the default when
    /// empty) or "f16" (half the memory and, in long contexts, faster decode) (ABI 3).
    pub kv_cache: bit_ttt_string,
}

/// sizeof(bit_ttt_session_params) before `kv_cache` was appended, and the bytes that held fields.
const SESSION_PARAMS_V1: (usize, usize) = (24, 24);

/// Parts for bit_ttt_session_reset (a bit set).
pub const BIT_TTT_RESET_CONTEXT: u32 = 1;
pub const BIT_TTT_RESET_ADAPTERS: u32 = 2;
pub const BIT_TTT_RESET_RNG: u32 = 4;
pub const BIT_TTT_RESET_ALL: u32 = 7;
// The C bits are the Rust API's (`ResetParts`), checked when compiling.
const _: () = assert!(
    BIT_TTT_RESET_CONTEXT == ResetParts::CONTEXT.0
        && BIT_TTT_RESET_ADAPTERS == ResetParts::ADAPTERS.0
        && BIT_TTT_RESET_RNG == ResetParts::RNG.0
        && BIT_TTT_RESET_ALL == BIT_TTT_RESET_CONTEXT | BIT_TTT_RESET_ADAPTERS | BIT_TTT_RESET_RNG
);

impl bit_ttt_session_params {
    fn defaults() -> Self {
        let d = SessionParams::default();
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            n_ctx: d.n_ctx as u32,
            n_batch: d.n_batch as u32,
            seed: d.seed,
            kv_cache: bit_ttt_string {
                ptr: std::ptr::null(),
                len: 0,
            },
        }
    }
}

pub(crate) fn session_params(p: *const bit_ttt_session_params) -> FfiResult<SessionParams> {
    let p = versioned_params(
        p,
        "bit_ttt_session_params",
        bit_ttt_session_params::defaults,
        &[SESSION_PARAMS_V1],
    )?;
    let kv = string_in(&p.kv_cache, "kv_cache")?;
    Ok(SessionParams {
        n_ctx: p.n_ctx as usize,
        n_batch: p.n_batch as usize,
        seed: p.seed,
        kv_cache: if kv.is_empty() {
            KvType::F32
        } else {
            KvType::parse(&kv)?
        },
    })
}

impl SessionShared {
    /// Marks the session as running a call; BUSY if it already is.
    pub(crate) fn begin(&self) -> FfiResult {
        let mut running = self.running.lock();
        if *running {
            return Err(FfiError::new(
                BIT_TTT_BUSY,
                "the session is in use by another call",
            ));
        }
        *running = true;
        self.cancel.reset();
        Ok(())
    }

    pub(crate) fn end(&self) {
        *self.running.lock() = false;
    }

    /// Cancels the running call, if any.
    pub(crate) fn cancel(&self) {
        if *self.running.lock() {
            self.cancel.cancel();
        }
    }

    /// Runs `f` on the session: BUSY if another call holds it, POISONED after a panic; errors
    /// are also recorded as the session's last error.
    pub(crate) fn with(&self, f: impl FnOnce(&mut Session) -> FfiResult) -> bit_ttt_status {
        let status = call_with(
            || {
                if self.poisoned.load(Ordering::SeqCst) {
                    return Err(FfiError::new(
                        BIT_TTT_POISONED,
                        "the session was poisoned by an earlier panic",
                    ));
                }
                self.begin()?;
                let _end = EndOnDrop(self);
                let mut guard = self.session.try_lock().ok_or_else(|| {
                    FfiError::new(BIT_TTT_BUSY, "the session is in use by another call")
                })?;
                f(&mut guard)
            },
            || self.poisoned.store(true, Ordering::SeqCst),
        );
        if status != BIT_TTT_OK {
            self.record_error();
        }
        status
    }

    /// Copies this thread's last error into the session's.
    pub(crate) fn record_error(&self) {
        // SAFETY: bit_ttt_last_error returns a valid NUL-terminated string owned by this thread.
        let msg = unsafe { std::ffi::CStr::from_ptr(super::boundary::last_error_ptr()) };
        *self.last_error.lock() = msg.to_owned();
    }
}

/// Ends a call when dropped, also when the call panics.
pub(crate) struct EndOnDrop<'a>(pub &'a SessionShared);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

pub(crate) fn shared<'a>(session: *const bit_ttt_session) -> FfiResult<&'a Arc<SessionShared>> {
    Ok(&handle(session, "session")?.shared)
}

/// Runs `f` on the session behind a handle (see `SessionShared::with`); NULL_POINTER if NULL.
pub(crate) fn with_session(
    session: *const bit_ttt_session,
    f: impl FnOnce(&mut Session, &SessionShared) -> FfiResult,
) -> bit_ttt_status {
    match shared(session) {
        Ok(s) => s.with(|sess| f(sess, s)),
        Err(e) => call(|| Err(e)),
    }
}

/// Fills `params` with defaults (and its struct_size).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_params_init(
    params: *mut bit_ttt_session_params,
) -> bit_ttt_status {
    call(|| write_out(params, bit_ttt_session_params::defaults()))
}

/// Creates a session over `model` (`params` may be NULL). The session keeps the model alive.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_new(
    model: *const bit_ttt_model,
    params: *const bit_ttt_session_params,
    out_session: *mut *mut bit_ttt_session,
) -> bit_ttt_status {
    call(|| {
        out_ptr(out_session, "out_session")?;
        let m = &handle(model, "model")?.model;
        let session = Session::new(m, &session_params(params)?)?;
        let shared = Arc::new(SessionShared {
            cancel: session.cancel_handle(),
            session: Arc::new(Mutex::new(session)),
            running: Mutex::new(false),
            poisoned: AtomicBool::new(false),
            last_error: Mutex::new(CString::default()),
            last_output: Mutex::new((String::new(), Vec::new())),
        });
        write_out(
            out_session,
            Box::into_raw(Box::new(bit_ttt_session { shared })),
        )
    })
}

/// Frees a session (NULL is a no-op). A running call is cancelled first; an async job that
/// still runs keeps the session's memory alive until the job is freed.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_free(session: *mut bit_ttt_session) {
    if !session.is_null() {
        // SAFETY: `session` came from Box::into_raw in bit_ttt_session_new and is freed once.
        let s = unsafe { Box::from_raw(session) };
        s.shared.cancel();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(s)));
    }
}

/// Makes the running call on this session (from any thread) return CANCELLED within one token
/// or one prompt chunk. Safe to call at any time; a no-op when nothing runs.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_cancel(session: *const bit_ttt_session) -> bit_ttt_status {
    call(|| {
        shared(session)?.cancel();
        Ok(())
    })
}

/// Resets parts of the session: BIT_TTT_RESET_CONTEXT (tokens and KV cache),
/// BIT_TTT_RESET_ADAPTERS, BIT_TTT_RESET_RNG (back to the session's seed), or BIT_TTT_RESET_ALL.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_reset(
    session: *const bit_ttt_session,
    parts: u32,
) -> bit_ttt_status {
    with_session(session, |sess, _| {
        if parts == 0 || parts & !BIT_TTT_RESET_ALL != 0 {
            return Err(FfiError::invalid(format!(
                "reset parts {parts:#x}: use BIT_TTT_RESET_* bits"
            )));
        }
        sess.reset_parts(ResetParts(parts));
        Ok(())
    })
}

/// The message of the last failed call on this session ("" if none), whatever thread made it.
/// Valid until the next failing call on the session.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_last_error(session: *const bit_ttt_session) -> *const c_char {
    match shared(session) {
        Ok(s) => s.last_error.lock().as_ptr(),
        Err(_) => c"`session` is NULL".as_ptr(),
    }
}

/// Memory a model folder and one session with `session_params` (NULL = defaults) will take,
/// from config.json and the safetensors headers only: no weights are read.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_estimate_memory(
    path: *const c_char,
    path_len: usize,
    session_params: *const bit_ttt_session_params,
    out_estimate: *mut bit_ttt_memory_estimate,
) -> bit_ttt_status {
    call(|| {
        let out = out_struct(out_estimate, "out_estimate")?;
        let path = path_in(path, path_len)?;
        let sp = self::session_params(session_params)?;
        let e = crate::estimate_memory(path, sp.n_ctx, sp.n_batch)?;
        write_out(
            out,
            bit_ttt_memory_estimate {
                struct_size: std::mem::size_of::<bit_ttt_memory_estimate>() as u32,
                weight_bytes: e.weight_bytes,
                mapped_bytes: e.mapped_bytes,
                kv_cache_bytes: e.kv_cache_bytes,
                scratch_bytes: e.scratch_bytes,
                total_bytes: e.total(),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Model, ModelParams};

    fn shared_session() -> SessionShared {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/bitnet_packed_auto");
        let model = Model::load(
            dir,
            &ModelParams {
                n_threads: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let session = Session::new(&model, &SessionParams::default()).unwrap();
        SessionShared {
            cancel: session.cancel_handle(),
            session: Arc::new(Mutex::new(session)),
            running: Mutex::new(false),
            poisoned: AtomicBool::new(false),
            last_error: Mutex::new(CString::default()),
            last_output: Mutex::new((String::new(), Vec::new())),
        }
    }

    #[test]
    fn a_panic_becomes_panic_status_and_poisons_the_session() {
        let s = shared_session();
        let status = s.with(|_| panic!("boom"));
        assert_eq!(status, BIT_TTT_PANIC);
        assert!(s.last_error.lock().to_str().unwrap().contains("boom"));
        // The session is poisoned but not left busy.
        assert_eq!(s.with(|_| Ok(())), BIT_TTT_POISONED);
        assert!(!*s.running.lock());
    }

    #[test]
    fn cancel_reaches_only_a_running_call() {
        let s = shared_session();
        s.cancel(); // idle: nothing to cancel, nothing left over
        let status = s.with(|sess| {
            let r = sess.generate(
                "Hello",
                &crate::GenerateParams {
                    max_tokens: 3,
                    ..Default::default()
                },
                |_| true,
            )?;
            assert_ne!(r.stop_reason, crate::StopReason::Cancelled);
            Ok(())
        });
        assert_eq!(status, BIT_TTT_OK);
        // A call that started gets a cancel made before its first token.
        let status = s.with(|sess| {
            s.cancel();
            let r = sess.generate(" more", &crate::GenerateParams::default(), |_| true)?;
            assert_eq!(r.stop_reason, crate::StopReason::Cancelled);
            Ok(())
        });
        assert_eq!(status, BIT_TTT_OK);
        assert_eq!(s.with(|_| Ok(())), BIT_TTT_OK);
    }
}
