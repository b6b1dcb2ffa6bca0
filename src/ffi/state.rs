//! Session state save and load: to a caller buffer, or to a file written atomically.

use std::ffi::c_char;
use std::io::Write;

use super::session::{bit_ttt_session, with_session};
use super::status::*;
use super::strings::{items_out, path_in, slice_in};
use crate::Error;

/// Saves the session's context (tokens, KV cache, sampler state) as a versioned blob tied to
/// the model. Usual buffer rule: with buf NULL or too small, `*out_len` gets the size needed.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_state_save(
    session: *const bit_ttt_session,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> bit_ttt_status {
    with_session(session, |sess, _| {
        items_out(&sess.save_state(), buf, cap, out_len)
    })
}

/// Restores a blob from bit_ttt_session_state_save, all or nothing: a blob from another model,
/// a corrupt one, or one larger than the session's context gives BIT_TTT_INCOMPATIBLE_STATE and
/// leaves the session unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_state_load(
    session: *const bit_ttt_session,
    data: *const u8,
    len: usize,
) -> bit_ttt_status {
    with_session(session, |sess, _| {
        Ok(sess.load_state(slice_in(data, len, "data")?)?)
    })
}

/// Saves the state to a file (UTF-8 path), atomically: written to a temporary file beside it,
/// then renamed over it.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_state_save_file(
    session: *const bit_ttt_session,
    path: *const c_char,
    path_len: usize,
) -> bit_ttt_status {
    with_session(session, |sess, _| {
        let path = path_in(path, path_len)?;
        let blob = sess.save_state();
        let name = path
            .file_name()
            .ok_or_else(|| FfiError::invalid(format!("{}: not a file path", path.display())))?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&blob)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&path, &e).into()
        })
    })
}

/// Restores the state from a file written by bit_ttt_session_state_save_file (all or nothing).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_session_state_load_file(
    session: *const bit_ttt_session,
    path: *const c_char,
    path_len: usize,
) -> bit_ttt_status {
    with_session(session, |sess, _| {
        let path = path_in(path, path_len)?;
        let blob = std::fs::read(&path).map_err(|e| Error::io(&path, &e))?;
        Ok(sess.load_state(&blob)?)
    })
}
