//! Where a model's files come from: a folder on disk, or files handed over in memory (for hosts
//! that ship models inside their own archives).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::bytes::{Backing, map_file};
use crate::error::{Error, ErrorKind, Result};

/// A model folder, on disk or in memory (file name → bytes).
#[derive(Debug, Clone)]
pub enum Source {
    Dir(PathBuf),
    Memory(BTreeMap<String, Arc<Vec<u8>>>),
    /// A pre-packed file (`bit-ttt convert`): text files from its metadata, weights mapped.
    Packed {
        file: PathBuf,
        texts: BTreeMap<String, Arc<Vec<u8>>>,
    },
}

impl Source {
    /// Drops the text files a pre-packed file's metadata held (tokenizer.json is 9 MB for
    /// LLaMA-3) once the model is built from them: nothing reads them after loading.
    pub fn forget_texts(&mut self) {
        if let Source::Packed { texts, .. } = self {
            texts.clear();
        }
    }

    /// How errors name a file of this source.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Source::Dir(d) => d.join(name).display().to_string(),
            Source::Memory(_) => format!("<memory>/{name}"),
            Source::Packed { file, .. } if name.is_empty() => file.display().to_string(),
            Source::Packed { file, .. } => format!("{}[{name}]", file.display()),
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(d) => d.join(name).is_file(),
            Source::Memory(files) | Source::Packed { texts: files, .. } => files.contains_key(name),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::new(
            ErrorKind::Io,
            format!("{}: no such file", self.describe(name)),
        )
    }

    /// The whole content of a (small) file.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        match self {
            Source::Dir(d) => {
                let p = d.join(name);
                std::fs::read(&p).map_err(|e| Error::io(&p, &e))
            }
            Source::Memory(files) | Source::Packed { texts: files, .. } => files
                .get(name)
                .map(|b| b.to_vec())
                .ok_or_else(|| self.missing(name)),
        }
    }

    /// A text file, which must be UTF-8.
    pub fn read_string(&self, name: &str) -> Result<String> {
        String::from_utf8(self.read(name)?).map_err(|e| {
            Error::new(
                ErrorKind::InvalidUtf8,
                format!("{}: {e}", self.describe(name)),
            )
        })
    }

    /// A weights file: memory-mapped from disk, or shared from memory without a copy.
    pub fn backing(&self, name: &str) -> Result<Backing> {
        match self {
            Source::Dir(d) => map_file(&d.join(name)),
            Source::Memory(files) => files
                .get(name)
                .cloned()
                .map(Backing::Owned)
                .ok_or_else(|| self.missing(name)),
            Source::Packed { file, .. } => map_file(file),
        }
    }
}
