//! The output head's formats: the checkpoint's own floats, or a quantised copy (int8 per row,
//! int4 per group) that reads fewer bytes per token.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::kernels::dense::DenseView;
use crate::kernels::int4::Int4Matrix;
use crate::kernels::int8::Int8Matrix;

/// How the output head is stored for computing logits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeadFormat {
    /// As in the checkpoint (bf16, f16 or f32).
    #[default]
    Native,
    /// int8 with one scale per row: half of bf16's bytes.
    Int8,
    /// 4 bits with one f16 scale per 64 columns: 4.25 bits per weight (4.3 with the scales'
    /// padding), under a quarter of bf16's bytes.
    Int4,
}

impl HeadFormat {
    pub const ALL: [HeadFormat; 3] = [HeadFormat::Native, HeadFormat::Int8, HeadFormat::Int4];

    pub fn name(self) -> &'static str {
        match self {
            HeadFormat::Native => "native",
            HeadFormat::Int8 => "int8",
            HeadFormat::Int4 => "int4",
        }
    }

    pub fn parse(name: &str) -> Result<HeadFormat> {
        HeadFormat::ALL
            .into_iter()
            .find(|h| h.name() == name.trim())
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "unknown head format `{name}` (known: {})",
                    HeadFormat::ALL.map(HeadFormat::name).join(", ")
                ))
            })
    }
}

/// A quantised head as loaded.
#[derive(Debug, Clone)]
pub enum StoredHead {
    Int8(Int8Matrix),
    Int4(Int4Matrix),
}

impl StoredHead {
    pub fn format(&self) -> HeadFormat {
        match self {
            StoredHead::Int8(_) => HeadFormat::Int8,
            StoredHead::Int4(_) => HeadFormat::Int4,
        }
    }

    /// The bytes of stored tensor `i` of `layout`.
    pub fn part_bytes(&self, i: usize) -> Cow<'_, [u8]> {
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        match (self, i) {
            (StoredHead::Int8(m), 0) => Cow::Borrowed(&m.w[..]),
            (StoredHead::Int8(m), _) => Cow::Owned(f32_bytes(&m.row_scale)),
            (StoredHead::Int4(m), 0) => Cow::Borrowed(&m.nibbles[..]),
            (StoredHead::Int4(m), _) => {
                Cow::Owned(m.scales.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
        }
    }
}

/// The checkpoint's head quantised to `format` (None for the native head).
pub fn quantise(head: DenseView, format: HeadFormat) -> Option<StoredHead> {
    match format {
        HeadFormat::Native => None,
        HeadFormat::Int8 => Some(StoredHead::Int8(Int8Matrix::from_dense(head))),
        HeadFormat::Int4 => Some(StoredHead::Int4(Int4Matrix::from_dense(head))),
    }
}
