//! The floor every layer stands on: bytes that are mapped from a file or owned, and the element
//! types of stored tensors. Nothing here knows about models, kernels or files' formats; memory
//! maps are `unsafe` to create, so this is the one folder outside kernels/, cuda/ and ffi/ that
//! holds `unsafe` (docs/ARCHITECTURE.md).

pub mod bytes;
pub mod dtype;
pub mod source;

pub use bytes::{Backing, Bytes, map_file, release_free_heap};
pub use dtype::DType;
pub use source::Source;
