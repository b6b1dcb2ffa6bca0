//! Async jobs: generation on an internal thread that never calls back into the host. The host
//! polls for text from its own loop (a game's Update()) or waits.

use std::ffi::c_char;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::boundary::{call, handle, out_ptr, out_struct, params, write_out};
use super::generate::{bit_ttt_generate_params, bit_ttt_generate_result, result_out};
use super::session::{SessionShared, bit_ttt_session, shared};
use super::status::*;
use super::strings::{str_in, text_out};
use crate::{AdaptProgress, AdaptResult};
use crate::{GenerateResult, Session, StopReason};

/// What a finished job produced.
pub(crate) enum Outcome {
    Generate(GenerateResult),
    Adapt(AdaptResult),
}

#[derive(Default)]
pub(crate) struct JobState {
    /// Text produced and not yet polled.
    pub(crate) pending: String,
    /// The last adapt step reported.
    pub(crate) progress: Option<AdaptProgress>,
    done: bool,
    status: bit_ttt_status,
    message: String,
    result: Option<Outcome>,
}

#[derive(Default)]
pub(crate) struct JobShared {
    pub(crate) state: Mutex<JobState>,
    pub(crate) changed: Condvar,
}

/// A generation or adapt running on an internal thread. Free with bit_ttt_job_free.
pub struct bit_ttt_job {
    shared: Arc<JobShared>,
    session: Arc<SessionShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Runs `work` on the session on a new thread and writes the job handle to `out_job`. The
/// session is BUSY until the work ends; a panic poisons it.
pub(crate) fn spawn(
    session: *const bit_ttt_session,
    out_job: *mut *mut bit_ttt_job,
    prepare: impl FnOnce() -> FfiResult<
        Box<dyn FnOnce(&mut Session, &JobShared) -> FfiResult<Outcome> + Send>,
    >,
) -> bit_ttt_status {
    let s = match shared(session) {
        Ok(s) => s.clone(),
        Err(e) => return call(|| Err(e)),
    };
    let status = call(|| {
        out_ptr(out_job, "out_job")?;
        if s.poisoned.load(Ordering::SeqCst) {
            return Err(FfiError::new(
                BIT_TTT_POISONED,
                "the session was poisoned by an earlier panic",
            ));
        }
        let work = prepare()?;
        s.begin()?;
        let Some(mut guard) = s.session.try_lock_arc() else {
            s.end();
            return Err(FfiError::new(
                BIT_TTT_BUSY,
                "the session is in use by another call",
            ));
        };
        let job = Arc::new(JobShared::default());
        let (job2, sess_shared) = (job.clone(), s.clone());
        let thread = std::thread::Builder::new()
            .name("bit-ttt-job".into())
            .spawn(move || {
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    work(&mut guard, &job2)
                }));
                drop(guard);
                sess_shared.end();
                let mut st = job2.state.lock();
                match run {
                    Ok(Ok(outcome)) => st.result = Some(outcome),
                    Ok(Err(e)) => {
                        st.status = e.status;
                        st.message = e.message;
                    }
                    Err(_) => {
                        sess_shared.poisoned.store(true, Ordering::SeqCst);
                        st.status = BIT_TTT_PANIC;
                        st.message = "internal panic in an async job".into();
                    }
                }
                st.done = true;
                drop(st);
                job2.changed.notify_all();
            })
            .map_err(|e| {
                s.end();
                FfiError::new(
                    BIT_TTT_OUT_OF_MEMORY,
                    format!("cannot start a job thread: {e}"),
                )
            })?;
        let handle = bit_ttt_job {
            shared: job,
            session: s.clone(),
            thread: Mutex::new(Some(thread)),
        };
        write_out(out_job, Box::into_raw(Box::new(handle)))
    });
    if status != BIT_TTT_OK {
        s.record_error();
    }
    status
}

/// Starts generating on an internal thread and returns at once. The session is BUSY until the
/// job finishes. `params->on_token` must be NULL: poll the job for text instead.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_generate_async(
    session: *const bit_ttt_session,
    prompt: *const c_char,
    prompt_len: usize,
    params: *const bit_ttt_generate_params,
    out_job: *mut *mut bit_ttt_job,
) -> bit_ttt_status {
    let sess_shared = shared(session).ok().cloned();
    spawn(session, out_job, || {
        let prompt = str_in(prompt, prompt_len, "prompt")?.to_string();
        let raw = self::params(
            params,
            "bit_ttt_generate_params",
            bit_ttt_generate_params::defaults,
        )?;
        if raw.on_token.is_some() {
            return Err(FfiError::invalid(
                "on_token must be NULL for an async job: poll the job for text",
            ));
        }
        let p = raw.into_rust()?;
        let sess_shared = sess_shared.expect("spawn checked the handle");
        Ok(Box::new(move |sess: &mut Session, job: &JobShared| {
            let r = sess.generate(&prompt, &p, |ev| {
                if !ev.text.is_empty() {
                    job.state.lock().pending.push_str(ev.text);
                    job.changed.notify_all();
                }
                true
            })?;
            *sess_shared.last_output.lock() =
                (r.text.clone(), r.tokens.iter().map(|&t| t as i32).collect());
            if r.stop_reason == StopReason::Cancelled {
                return Err(FfiError::new(BIT_TTT_CANCELLED, "generation was cancelled"));
            }
            Ok(Outcome::Generate(r))
        }))
    })
}

/// Takes the text produced since the last poll into `buf` (see the buffer rule; the text stays
/// queued on BUFFER_TOO_SMALL) and sets `*out_done` to 1 once the job has finished and all of
/// its text has been taken, else 0. Never blocks. The job keeps producing between calls, so the
/// size asked for on BUFFER_TOO_SMALL can have grown by the next call: retry until OK.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_job_poll(
    job: *const bit_ttt_job,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
    out_done: *mut u8,
) -> bit_ttt_status {
    call(|| {
        let j = handle(job, "job")?;
        out_ptr(out_done, "out_done")?;
        let mut st = j.shared.state.lock();
        text_out(&st.pending, buf, cap, out_len)?;
        st.pending.clear();
        write_out(out_done, u8::from(st.done))
    })
}

/// Blocks until the job finishes or `timeout_ms` passes (negative = no limit); `*out_done`
/// tells which.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_job_wait(
    job: *const bit_ttt_job,
    timeout_ms: i32,
    out_done: *mut u8,
) -> bit_ttt_status {
    call(|| {
        let j = handle(job, "job")?;
        out_ptr(out_done, "out_done")?;
        let deadline =
            (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
        let mut st = j.shared.state.lock();
        while !st.done {
            match deadline {
                None => j.shared.changed.wait(&mut st),
                Some(d) => {
                    if j.shared.changed.wait_until(&mut st, d).timed_out() {
                        break;
                    }
                }
            }
        }
        write_out(out_done, u8::from(st.done))
    })
}

/// The outcome of a finished job: the call's status (BIT_TTT_OK, BIT_TTT_CANCELLED, an
/// error), with `out_result` (may be NULL) written on OK. BIT_TTT_BUSY while it still runs.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_job_result(
    job: *const bit_ttt_job,
    out_result: *mut bit_ttt_generate_result,
) -> bit_ttt_status {
    call(|| {
        let j = handle(job, "job")?;
        let out = if out_result.is_null() {
            None
        } else {
            Some(out_struct(out_result, "out_result")?)
        };
        let st = j.shared.state.lock();
        if !st.done {
            return Err(FfiError::new(BIT_TTT_BUSY, "the job is still running"));
        }
        if st.status != BIT_TTT_OK {
            return Err(FfiError::new(st.status, st.message.clone()));
        }
        match (out, &st.result) {
            (Some(o), Some(Outcome::Generate(r))) => write_out(o, result_out(r)),
            (Some(_), Some(Outcome::Adapt(_))) => Err(FfiError::invalid(
                "this is an adapt job: read its result with bit_ttt_job_adapt_result",
            )),
            _ => Ok(()),
        }
    })
}

/// Asks the job to stop (it finishes with BIT_TTT_CANCELLED within one token or prompt chunk).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_job_cancel(job: *const bit_ttt_job) -> bit_ttt_status {
    call(|| {
        let j = handle(job, "job")?;
        // A finished job must not cancel a later call on the same session.
        if !j.shared.state.lock().done {
            j.session.cancel();
        }
        Ok(())
    })
}

/// Cancels the job if it still runs, waits for its thread, and frees it. NULL is a no-op.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_job_free(job: *mut bit_ttt_job) {
    if job.is_null() {
        return;
    }
    // SAFETY: `job` came from Box::into_raw in bit_ttt_generate_async and is freed once.
    let j = unsafe { Box::from_raw(job) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        if !j.shared.state.lock().done {
            j.session.cancel();
        }
        if let Some(t) = j.thread.lock().take() {
            let _ = t.join();
        }
    }));
}

/// The shared state of a job handle, for the adapt-specific queries.
pub(crate) fn job_shared<'a>(job: *const bit_ttt_job) -> FfiResult<&'a JobShared> {
    Ok(&handle(job, "job")?.shared)
}

impl JobState {
    pub(crate) fn finished(&self) -> FfiResult<Option<&Outcome>> {
        if !self.done {
            return Err(FfiError::new(BIT_TTT_BUSY, "the job is still running"));
        }
        if self.status != BIT_TTT_OK {
            return Err(FfiError::new(self.status, self.message.clone()));
        }
        Ok(self.result.as_ref())
    }
}
