//! Version, system information, errors and logging.

use std::ffi::{c_char, c_void};

use super::boundary::{call, last_error_ptr};
use super::status::*;
use super::strings::text_out;
use crate::log::{self, Level};

/// Version of the C ABI: bumped only by additions (functions, struct fields at the end).
pub const BIT_TTT_ABI_VERSION: u32 = 4;

/// Log levels passed to the log callback.
pub const BIT_TTT_LOG_ERROR: i32 = 1;
pub const BIT_TTT_LOG_WARN: i32 = 2;
pub const BIT_TTT_LOG_INFO: i32 = 3;
pub const BIT_TTT_LOG_DEBUG: i32 = 4;

// The C values are the Rust enum's discriminants.
const _: () = assert!(
    BIT_TTT_LOG_ERROR == Level::Error as i32
        && BIT_TTT_LOG_WARN == Level::Warn as i32
        && BIT_TTT_LOG_INFO == Level::Info as i32
        && BIT_TTT_LOG_DEBUG == Level::Debug as i32
);

/// Receives log messages: `message` is UTF-8, `len` bytes, NUL-terminated, valid only during
/// the call. May be called from the library's internal threads.
pub type bit_ttt_log_callback =
    Option<extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char, len: usize)>;

/// The ABI version of the library actually loaded (compare with BIT_TTT_ABI_VERSION).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_abi_version() -> u32 {
    BIT_TTT_ABI_VERSION
}

/// The library version, e.g. "0.1.0". Static string.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_version_string() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Text describing the build and machine: version, CPU features detected, the ternary kernel
/// chosen, threads, CUDA. One `key: value` per line.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_system_info(
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> bit_ttt_status {
    call(|| text_out(&crate::system_info(), buf, cap, out_len))
}

/// The message of the last failed call on this thread ("" if none). Valid until the next call
/// into the library on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_last_error() -> *const c_char {
    last_error_ptr()
}

struct Callback {
    f: extern "C" fn(*mut c_void, i32, *const c_char, usize),
    user_data: usize,
}

/// Installs the log callback (NULL to silence the library, the default).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_set_log_callback(
    callback: bit_ttt_log_callback,
    user_data: *mut c_void,
) -> bit_ttt_status {
    call(|| {
        let sink = callback.map(|f| {
            let cb = Callback {
                f,
                user_data: user_data as usize,
            };
            Box::new(move |level: Level, msg: &str| {
                let mut bytes = msg.as_bytes().to_vec();
                bytes.push(0);
                (cb.f)(
                    cb.user_data as *mut c_void,
                    level as i32,
                    bytes.as_ptr().cast(),
                    msg.len(),
                );
            }) as Box<dyn Fn(Level, &str) + Send + Sync>
        });
        log::set_sink(sink);
        Ok(())
    })
}

/// `sizeof` of a public struct as this library was built, by its C name (NUL-terminated), e.g.
/// "bit_ttt_generate_params"; 0 for an unknown name or NULL. Bindings compare their own layouts
/// with it at start-up.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_struct_size(name: *const c_char) -> usize {
    use super::{adapt, generate, model, session, strings, text};
    use std::mem::size_of;
    if name.is_null() {
        return 0;
    }
    // SAFETY: a non-NULL `name` is a NUL-terminated string by the contract above.
    let name = unsafe { std::ffi::CStr::from_ptr(name) };
    match name.to_bytes() {
        b"bit_ttt_adapt_params" => size_of::<adapt::bit_ttt_adapt_params>(),
        b"bit_ttt_adapt_result" => size_of::<adapt::bit_ttt_adapt_result>(),
        b"bit_ttt_generate_params" => size_of::<generate::bit_ttt_generate_params>(),
        b"bit_ttt_generate_result" => size_of::<generate::bit_ttt_generate_result>(),
        b"bit_ttt_model_params" => size_of::<model::bit_ttt_model_params>(),
        b"bit_ttt_memory_file" => size_of::<model::bit_ttt_memory_file>(),
        b"bit_ttt_model_info" => size_of::<model::bit_ttt_model_info>(),
        b"bit_ttt_memory_estimate" => size_of::<model::bit_ttt_memory_estimate>(),
        b"bit_ttt_session_params" => size_of::<session::bit_ttt_session_params>(),
        b"bit_ttt_string" => size_of::<strings::bit_ttt_string>(),
        b"bit_ttt_chat_message" => size_of::<text::bit_ttt_chat_message>(),
        _ => 0,
    }
}
