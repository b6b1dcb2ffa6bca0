//! Strings and buffers across the boundary. In: UTF-8 `(ptr, len)`, where
//! BIT_TTT_NUL_TERMINATED as len means strlen. Out: caller buffers `(buf, cap, *out_len)`.

use std::ffi::{CStr, c_char};
use std::path::PathBuf;

use super::status::*;

/// Pass as a length to mean "the string is NUL-terminated" (SIZE_MAX; the header defines it
/// by hand because cbindgen cannot spell usize::MAX portably).
pub const BIT_TTT_NUL_TERMINATED: usize = usize::MAX;

/// A UTF-8 string given by pointer and length (len may be BIT_TTT_NUL_TERMINATED).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_string {
    pub ptr: *const c_char,
    pub len: usize,
}

/// The bytes of an input string. NULL is accepted only with length 0.
pub(crate) fn bytes_in<'a>(ptr: *const c_char, len: usize, what: &str) -> FfiResult<&'a [u8]> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(FfiError::null(what))
        };
    }
    if len == BIT_TTT_NUL_TERMINATED {
        // SAFETY: the caller promises a NUL-terminated string when passing NUL_TERMINATED.
        return Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes());
    }
    // SAFETY: the caller promises `len` readable bytes at `ptr`.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// An input string, which must be UTF-8.
pub(crate) fn str_in<'a>(ptr: *const c_char, len: usize, what: &str) -> FfiResult<&'a str> {
    let bytes = bytes_in(ptr, len, what)?;
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::new(
            BIT_TTT_INVALID_UTF8,
            format!("`{what}` is not valid UTF-8: {e}"),
        )
    })
}

pub(crate) fn string_in(s: &bit_ttt_string, what: &str) -> FfiResult<String> {
    str_in(s.ptr, s.len, what).map(str::to_string)
}

/// A UTF-8 path (on every OS).
pub(crate) fn path_in(ptr: *const c_char, len: usize) -> FfiResult<PathBuf> {
    let s = str_in(ptr, len, "path")?;
    if s.is_empty() {
        return Err(FfiError::invalid("`path` is empty"));
    }
    Ok(PathBuf::from(s))
}

/// An input array of `n` items; NULL is accepted only with n = 0.
pub(crate) fn slice_in<'a, T>(ptr: *const T, n: usize, what: &str) -> FfiResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(FfiError::invalid(format!("`{what}` count {n} is absurd")));
    }
    // SAFETY: the caller promises `n` readable items at `ptr`.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

fn set_len(out_len: *mut usize, n: usize) {
    // SAFETY: checked non-NULL by the callers below; points to a writable size_t.
    unsafe { out_len.write(n) };
}

/// Copies `text` and a NUL into `buf`. `*out_len` gets the text's length in bytes (without the
/// NUL) on success and on BUFFER_TOO_SMALL alike, so the capacity needed is `*out_len + 1`.
pub(crate) fn text_out(text: &str, buf: *mut c_char, cap: usize, out_len: *mut usize) -> FfiResult {
    if out_len.is_null() {
        return Err(FfiError::null("out_len"));
    }
    set_len(out_len, text.len());
    if buf.is_null() || cap < text.len() + 1 {
        return Err(FfiError::new(
            BIT_TTT_BUFFER_TOO_SMALL,
            format!("buffer of {cap} bytes; {} needed", text.len() + 1),
        ));
    }
    // SAFETY: `buf` has room for `cap` >= len + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

/// Copies `items` into `buf`; `*out_len` gets the number of items (the capacity needed).
pub(crate) fn items_out<T: Copy>(
    items: &[T],
    buf: *mut T,
    cap: usize,
    out_len: *mut usize,
) -> FfiResult {
    if out_len.is_null() {
        return Err(FfiError::null("out_len"));
    }
    set_len(out_len, items.len());
    if items.is_empty() {
        return Ok(());
    }
    if buf.is_null() || cap < items.len() {
        return Err(FfiError::new(
            BIT_TTT_BUFFER_TOO_SMALL,
            format!("buffer of {cap} items; {} needed", items.len()),
        ));
    }
    // SAFETY: `buf` has room for `cap` >= items.len() items.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len()) };
    Ok(())
}
