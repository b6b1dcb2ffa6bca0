//! Byte buffers that are either a window into a memory-mapped (or caller-given) file, or owned.
//! Weights read in place stay in the page cache only: no second copy in RAM.

use std::fs::File;
use std::ops::{Deref, Range};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Reads `out.len()` bytes of `file` at `offset`.
fn read_at(file: &File, out: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, out, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < out.len() {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut out[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (file, out, offset);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Maps a whole file read-only.
pub fn map_file(p: &std::path::Path) -> Result<Backing> {
    let file = File::open(p).map_err(|e| Error::io(p, &e))?;
    // SAFETY: the map is read-only; a checkpoint modified while mapped is outside the contract
    // (as with every mmap-based loader), and every read is bounds-checked.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(p, &e))?;
    Ok(Backing::Mapped(map, file))
}

/// The whole content of one weights file.
pub enum Backing {
    /// The whole file mapped from offset 0, and the file itself for `Bytes::read_into`.
    Mapped(Mmap, File),
    Owned(Arc<Vec<u8>>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(m, _) => m,
            Backing::Owned(v) => v,
        }
    }
}

impl Backing {
    /// Lets the OS drop the first `end` bytes of a mapped file from this process's resident
    /// memory (rounded down to whole pages): a safetensors header read once at load, which in a
    /// pre-packed file holds the tokenizer (9 MB for LLaMA-3). Pages read again come back from
    /// the file.
    pub fn release_prefix(&self, end: usize) {
        #[cfg(unix)]
        if let Backing::Mapped(map, _) = self {
            const PAGE: usize = 4096;
            let len = end.min(map.len()) / PAGE * PAGE;
            if len > 0 {
                // SAFETY: the mapping is private and read-only, so dropping its pages changes
                // nothing a reader can see: they are read back from the file, unchanged (the
                // file must not change while mapped, as for every map here). A failure only
                // leaves the pages resident.
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, len)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = end;
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
    /// Copies `range` (within these bytes) into `out`. From a mapped file this is a read of
    /// the file, which maps nothing: the way to look up rows of a large table read a row at a
    /// time (the input embedding). Touching its mapping instead makes a whole page-cache folio
    /// resident per row (up to megabytes on filesystems with large folios), so a few hundred
    /// tokens would show most of the table in the process's RSS.
    pub fn read_into(&self, range: Range<usize>, out: &mut [u8]) {
        debug_assert_eq!(range.len(), out.len());
        if let Bytes::Shared { file, range: r } = self
            && let Backing::Mapped(_, f) = &**file
            && read_at(f, out, (r.start + range.start) as u64).is_ok()
        {
            return;
        }
        out.copy_from_slice(&self[range]);
    }

    /// True when the bytes live in a mapped file rather than on the heap.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Shared { file, .. } if matches!(**file, Backing::Mapped(..)))
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

/// Gives the C heap's free pages back to the system (glibc; elsewhere nothing). Loading parses
/// JSON and builds the tokenizer's tables: the freed intermediates (tens of MB for a LLaMA-3
/// tokenizer) would otherwise stay resident in holes that later buffers only partly reuse.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it locks each arena
    // while it walks it, so it is safe with other threads allocating.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_into_equals_the_mapped_bytes() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("t.bin");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(map_file(&path).unwrap());
        let bytes = Bytes::Shared {
            file,
            range: 1000..9000,
        };
        for range in [0..8000, 123..4567, 7999..8000] {
            let mut out = vec![0u8; range.len()];
            bytes.read_into(range.clone(), &mut out);
            assert_eq!(out, &bytes[range.clone()]);
            assert_eq!(out, &data[1000 + range.start..1000 + range.end]);
        }
        let owned = Bytes::owned(data.clone());
        let mut out = vec![0u8; 10];
        owned.read_into(5..15, &mut out);
        assert_eq!(out, &data[5..15]);
    }
}
