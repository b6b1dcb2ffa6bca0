//! The one door every export goes through: panics are caught and become BIT_TTT_PANIC, errors
//! become a status plus a thread-local message.

use std::cell::RefCell;
use std::ffi::CString;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::status::*;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records the message for `bit_ttt_last_error` on this thread.
pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(crate) fn last_error_ptr() -> *const std::ffi::c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal panic: {what}")
}

/// Runs `f`, turning its error or panic into a status and a last-error message.
/// `on_panic` runs after a panic (a session uses it to mark itself poisoned).
pub(crate) fn call_with(f: impl FnOnce() -> FfiResult, on_panic: impl FnOnce()) -> bit_ttt_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => BIT_TTT_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(payload) => {
            on_panic();
            set_last_error(&panic_message(payload.as_ref()));
            BIT_TTT_PANIC
        }
    }
}

pub(crate) fn call(f: impl FnOnce() -> FfiResult) -> bit_ttt_status {
    call_with(f, || {})
}

/// Writes `value` through `out` (checked for NULL by the caller's conversion).
pub(crate) fn write_out<T>(out: *mut T, value: T) -> FfiResult {
    if out.is_null() {
        return Err(FfiError::null("out"));
    }
    // SAFETY: `out` is non-NULL and, by the API contract, points to writable memory for a T.
    unsafe { out.write(value) };
    Ok(())
}

/// An out-pointer the caller must give (a handle's or a value's), or NULL_POINTER naming it;
/// checked before the work, so a NULL costs nothing.
pub(crate) fn out_ptr<T>(ptr: *mut T, what: &str) -> FfiResult<*mut T> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    Ok(ptr)
}

/// Borrows a handle, or NULL_POINTER naming it.
pub(crate) fn handle<'a, T>(ptr: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: a non-NULL handle was produced by this library (Box::into_raw) and is valid until
    // its _free; using a freed handle is outside the contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| FfiError::null(what))
}

/// Checks the `uint32_t struct_size` that starts every params and out-struct: ours, or one of
/// the `older` sizes the struct had before fields were appended. Returns the size.
fn check_struct_size<T>(ptr: *const T, what: &str, older: &[usize]) -> FfiResult<usize> {
    // SAFETY: every params and out-struct starts with `uint32_t struct_size`; the caller passes a
    // non-NULL pointer to at least that much readable memory.
    let size = unsafe { ptr.cast::<u32>().read_unaligned() } as usize;
    if size != std::mem::size_of::<T>() && !older.contains(&size) {
        return Err(FfiError::new(
            BIT_TTT_ABI_MISMATCH,
            format!(
                "{what}.struct_size is {size}, this library expects {}",
                std::mem::size_of::<T>()
            ),
        ));
    }
    Ok(size)
}

/// Reads a params struct: NULL means defaults; a struct_size other than ours is ABI_MISMATCH.
pub(crate) fn params<T: Copy>(
    ptr: *const T,
    what: &str,
    defaults: impl FnOnce() -> T,
) -> FfiResult<T> {
    versioned_params(ptr, what, defaults, &[])
}

/// `params` for a struct that has grown: a caller built against an older header passes one of
/// the `older` sizes, and gets its fields plus defaults for the ones appended since. Only the
/// bytes the caller's struct_size covers are read; bytes past the older layout's last field
/// (its tail padding) are ignored however they are set, because `defaults` then decides.
pub(crate) fn versioned_params<T: Copy>(
    ptr: *const T,
    what: &str,
    defaults: impl FnOnce() -> T,
    older: &[(usize, usize)],
) -> FfiResult<T> {
    if ptr.is_null() {
        return Ok(defaults());
    }
    let sizes: Vec<usize> = older.iter().map(|&(size, _)| size).collect();
    let size = check_struct_size(ptr, what, &sizes)?;
    if size == std::mem::size_of::<T>() {
        // SAFETY: struct_size says the caller's struct is a full T.
        return Ok(unsafe { ptr.read_unaligned() });
    }
    let used = older
        .iter()
        .find(|&&(s, _)| s == size)
        .map_or(size, |&(_, used)| used);
    let mut value = defaults();
    // SAFETY: the caller's struct has `size` >= `used` readable bytes, the prefix of T they
    // share (fields are only appended); `value` is a T, so `used` bytes fit in it.
    unsafe { std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&raw mut value).cast::<u8>(), used) };
    // The caller's struct_size stays recorded as theirs; ours from here on.
    // SAFETY: struct_size is the first field of every params struct.
    unsafe {
        (&raw mut value)
            .cast::<u32>()
            .write_unaligned(std::mem::size_of::<T>() as u32)
    };
    Ok(value)
}

/// Checks the struct_size of an out-struct the library fills.
pub(crate) fn out_struct<T>(ptr: *mut T, what: &str) -> FfiResult<*mut T> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    check_struct_size(ptr, what, &[])?;
    Ok(ptr)
}
