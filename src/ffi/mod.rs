//! The C ABI, and nothing else: handles, status codes, strings, callbacks, jobs. Every export goes
//! through `boundary::call` (panics become BIT_TTT_PANIC) and wraps the safe Rust API in lib.rs.
//! cbindgen turns this module into include/bit_ttt.h.

#![allow(non_camel_case_types)]
// The exports take raw pointers from C by design; their validity is the C caller's contract
// (documented per function), and every dereference is in an `unsafe` block with its SAFETY note.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod adapt;
mod boundary;
mod generate;
mod job;
mod model;
mod session;
mod state;
mod status;
mod strings;
mod system;
mod text;
