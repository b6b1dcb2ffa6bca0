//! Byte buffers that are either a window into a memory-mapped (or caller-given) file, or owned.
//! Weights read in place stay in the page cache only: no second copy in RAM.

use std::ops::{Deref, Range};
use std::sync::Arc;

use memmap2::Mmap;

/// The whole content of one weights file.
pub enum Backing {
    Mapped(Mmap),
    Owned(Arc<Vec<u8>>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A byte slice that keeps its file alive.
#[derive(Clone)]
pub enum Bytes {
    Shared {
        file: Arc<Backing>,
        range: Range<usize>,
    },
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn owned(v: Vec<u8>) -> Self {
        Bytes::Owned(Arc::new(v))
    }
    /// True when the bytes live in a mapped file rather than on the heap.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Shared { file, .. } if matches!(**file, Backing::Mapped(_)))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Shared { file, range } => &file[range.clone()],
            Bytes::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bytes({} bytes, mapped: {})",
            self.len(),
            self.is_mapped()
        )
    }
}
