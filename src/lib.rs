//! # bit_ttt
//!
//! Runs BitNet b1.58 language models (ternary weights, int8 activations) straight from Hugging
//! Face checkpoints. This file is the safe Rust API, and the whole of it: every module is private
//! to the crate, and what a user needs is re-exported here. The C ABI (`ffi`) wraps exactly this
//! and nothing else; `tools/check_layers.py` fails CI when it, or the CLI, reaches past it. The
//! layers and their rules are in docs/ARCHITECTURE.md.
//!
//! ```no_run
//! use bit_ttt::{GenerateParams, Model, ModelParams, Session, SessionParams};
//! let model = Model::load("models/sample", &ModelParams::default())?;
//! let mut session = Session::new(&model, &SessionParams::default())?;
//! let result = session.generate("Once upon a time", &GenerateParams::default(), |ev| {
//!     print!("{}", ev.text);
//!     true
//! })?;
//! println!("\n[{:?}]", result.stop_reason);
//! # Ok::<(), bit_ttt::Error>(())
//! ```

// Floors, bottom up (docs/ARCHITECTURE.md; checked by tools/check_layers.py): an import points
// at its own module or a lower floor, never up.
mod adapt; // 7
mod config; // 4
#[cfg(feature = "cuda")]
mod cuda; // 6
mod device; // 1
mod error; // 0
mod ffi;
mod kernels; // 3
mod loader; // 6
pub mod log; // 0: the library's log sink, public for hosts that route its messages
mod model; // 8
mod quant; // 2
mod rng; // 1
mod sampling; // 4
mod session; // 9
mod state; // 7
mod storage; // 1
mod system; // 9
mod text; // 4
mod transformer; // 5 // 11: the C ABI, over this file's API only

#[doc(hidden)]
pub mod __internal;

pub use adapt::{AdaptParams, AdaptProgress, AdaptResult, windows as adapt_windows};
pub use config::{Config, Family};
pub use device::Device;
pub use error::{Error, ErrorKind, Result};
pub use kernels::Isa;
pub use kernels::packed::Packing;
pub use loader::estimate::MemoryEstimate;
pub use model::{
    Model, ModelInfo, ModelParams, convert, convert_with, convert_with_head, estimate_memory,
};
pub use sampling::{DEFAULT_SEED, SamplingParams};
pub use session::{
    CancelHandle, GenerateParams, GenerateResult, ResetParts, ScoreResult, Session, SessionParams,
    StopReason, TokenEvent,
};
pub use system::{read_bandwidth, system_info};
pub use text::chat::ChatMessage;
pub use text::tokenizer::TokenId;
pub use transformer::head::HeadFormat;
pub use transformer::kv_cache::KvType;
