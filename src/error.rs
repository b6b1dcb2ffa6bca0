//! One error type for the whole library. Each error has a kind (which the C ABI maps to a
//! fixed status code) and a message that names the file, tensor, field or argument at fault.

use std::fmt;
use std::path::Path;

/// What went wrong, coarse enough for a host program to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A parameter is out of range or inconsistent.
    InvalidArgument,
    /// Text that should be UTF-8 is not.
    InvalidUtf8,
    /// A file could not be read or written.
    Io,
    /// The model folder or file is malformed: missing tensors, wrong shapes, bad config.
    InvalidModel,
    /// A saved session state does not belong to this model or is corrupt.
    IncompatibleState,
    /// The prompt (or the generated text) does not fit in the context window.
    ContextFull,
    /// The operation was cancelled through a cancel handle.
    Cancelled,
    /// The session is in use by another call.
    Busy,
    /// The model or request uses a feature this build does not implement.
    Unsupported,
    /// A bug: an invariant inside the library did not hold.
    Internal,
}

/// The library's error: a kind plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn invalid_model(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidModel, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn io(path: &Path, err: &std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{}: {err}", path.display()))
    }
    /// Prefixes the message with where it happened, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
