//! Status codes: fixed forever, never reused. New codes are appended.

use crate::{Error, ErrorKind};

/// Result of every fallible function: BIT_TTT_OK or an error code.
pub type bit_ttt_status = i32;

/// Success.
pub const BIT_TTT_OK: bit_ttt_status = 0;
/// A parameter is out of range or inconsistent.
pub const BIT_TTT_INVALID_ARGUMENT: bit_ttt_status = 1;
/// A required pointer is NULL.
pub const BIT_TTT_NULL_POINTER: bit_ttt_status = 2;
/// The output buffer is too small (or NULL); `*out_len` holds what is needed.
pub const BIT_TTT_BUFFER_TOO_SMALL: bit_ttt_status = 3;
/// Text or a path is not valid UTF-8.
pub const BIT_TTT_INVALID_UTF8: bit_ttt_status = 4;
/// A file could not be read or written.
pub const BIT_TTT_IO: bit_ttt_status = 5;
/// The model files are malformed.
pub const BIT_TTT_INVALID_MODEL: bit_ttt_status = 6;
/// A session state belongs to another model, or is corrupt.
pub const BIT_TTT_INCOMPATIBLE_STATE: bit_ttt_status = 7;
/// Memory could not be allocated.
pub const BIT_TTT_OUT_OF_MEMORY: bit_ttt_status = 8;
/// The prompt does not fit in the context window.
pub const BIT_TTT_CONTEXT_FULL: bit_ttt_status = 9;
/// The call was cancelled.
pub const BIT_TTT_CANCELLED: bit_ttt_status = 10;
/// The session is in use by another call.
pub const BIT_TTT_BUSY: bit_ttt_status = 11;
/// The model or request uses something this build does not support.
pub const BIT_TTT_UNSUPPORTED: bit_ttt_status = 12;
/// A struct_size this library does not know.
pub const BIT_TTT_ABI_MISMATCH: bit_ttt_status = 13;
/// A GPU error.
pub const BIT_TTT_DEVICE_ERROR: bit_ttt_status = 14;
/// An earlier call panicked inside this session; free it.
pub const BIT_TTT_POISONED: bit_ttt_status = 15;
/// A bug in the library: an internal invariant did not hold.
pub const BIT_TTT_INTERNAL: bit_ttt_status = 100;
/// The library panicked; the process is fine, the session (if any) is poisoned.
pub const BIT_TTT_PANIC: bit_ttt_status = 101;

/// An error on its way to the C caller.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: bit_ttt_status,
    pub message: String,
}

impl FfiError {
    pub fn new(status: bit_ttt_status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn null(what: &str) -> Self {
        Self::new(BIT_TTT_NULL_POINTER, format!("`{what}` is NULL"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(BIT_TTT_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::InvalidArgument => BIT_TTT_INVALID_ARGUMENT,
            ErrorKind::InvalidUtf8 => BIT_TTT_INVALID_UTF8,
            ErrorKind::Io => BIT_TTT_IO,
            ErrorKind::InvalidModel => BIT_TTT_INVALID_MODEL,
            ErrorKind::IncompatibleState => BIT_TTT_INCOMPATIBLE_STATE,
            ErrorKind::ContextFull => BIT_TTT_CONTEXT_FULL,
            ErrorKind::Cancelled => BIT_TTT_CANCELLED,
            ErrorKind::Busy => BIT_TTT_BUSY,
            ErrorKind::Unsupported => BIT_TTT_UNSUPPORTED,
            ErrorKind::Internal => BIT_TTT_INTERNAL,
        };
        Self::new(status, e.message())
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, FfiError>;

/// The name of a status code, e.g. "BIT_TTT_BUSY"; "BIT_TTT_UNKNOWN_STATUS" for other values.
/// The string is static.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_status_string(status: bit_ttt_status) -> *const std::ffi::c_char {
    let s: &'static std::ffi::CStr = match status {
        BIT_TTT_OK => c"BIT_TTT_OK",
        BIT_TTT_INVALID_ARGUMENT => c"BIT_TTT_INVALID_ARGUMENT",
        BIT_TTT_NULL_POINTER => c"BIT_TTT_NULL_POINTER",
        BIT_TTT_BUFFER_TOO_SMALL => c"BIT_TTT_BUFFER_TOO_SMALL",
        BIT_TTT_INVALID_UTF8 => c"BIT_TTT_INVALID_UTF8",
        BIT_TTT_IO => c"BIT_TTT_IO",
        BIT_TTT_INVALID_MODEL => c"BIT_TTT_INVALID_MODEL",
        BIT_TTT_INCOMPATIBLE_STATE => c"BIT_TTT_INCOMPATIBLE_STATE",
        BIT_TTT_OUT_OF_MEMORY => c"BIT_TTT_OUT_OF_MEMORY",
        BIT_TTT_CONTEXT_FULL => c"BIT_TTT_CONTEXT_FULL",
        BIT_TTT_CANCELLED => c"BIT_TTT_CANCELLED",
        BIT_TTT_BUSY => c"BIT_TTT_BUSY",
        BIT_TTT_UNSUPPORTED => c"BIT_TTT_UNSUPPORTED",
        BIT_TTT_ABI_MISMATCH => c"BIT_TTT_ABI_MISMATCH",
        BIT_TTT_DEVICE_ERROR => c"BIT_TTT_DEVICE_ERROR",
        BIT_TTT_POISONED => c"BIT_TTT_POISONED",
        BIT_TTT_INTERNAL => c"BIT_TTT_INTERNAL",
        BIT_TTT_PANIC => c"BIT_TTT_PANIC",
        _ => c"BIT_TTT_UNKNOWN_STATUS",
    };
    s.as_ptr()
}
