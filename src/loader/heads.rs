//! Quantised output heads stored in a pre-packed file (`bit-ttt convert --head int8|int4`), so
//! that a model loaded with that head maps it in place instead of quantising the f16/bf16 head
//! at every load (seconds for a 128k vocabulary, and the whole bf16 head paged in on the way).

use std::borrow::Cow;

use super::safetensors::{DType, TensorStore};
use crate::HeadFormat;
use crate::error::{Error, Result};
use crate::kernels::int4::{Int4Matrix, Scales};
use crate::kernels::int8::Int8Matrix;

/// Tensor names: values, then per-row (int8, f32) or per-group (int4, f16; f32 in files written
/// before 2026-12) scales.
pub const INT8: [&str; 2] = ["bit_ttt.head.int8.values", "bit_ttt.head.int8.scales"];
pub const INT4: [&str; 2] = ["bit_ttt.head.int4.values", "bit_ttt.head.int4.scales"];

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

/// The tensors (name, dtype, shape) that store a `[rows, cols]` head in `format`; none for the
/// native head.
pub fn layout(
    format: HeadFormat,
    rows: usize,
    cols: usize,
) -> Vec<(&'static str, DType, Vec<usize>)> {
    match format {
        HeadFormat::Native => Vec::new(),
        HeadFormat::Int8 => vec![
            (
                INT8[0],
                DType::I8,
                vec![rows, Int8Matrix::padded_cols(cols)],
            ),
            (INT8[1], DType::F32, vec![rows]),
        ],
        HeadFormat::Int4 => {
            let (v, s) = Int4Matrix::part_shapes(rows, cols);
            vec![
                (INT4[0], DType::U8, v.to_vec()),
                (INT4[1], DType::F16, s.to_vec()),
            ]
        }
    }
}

/// The quantised heads `store` holds for a `[rows, cols]` head; a stored head of the wrong
/// shape or type is an error naming it.
pub fn load(store: &TensorStore, rows: usize, cols: usize) -> Result<Vec<StoredHead>> {
    let mut heads = Vec::new();
    if let (Some(v), Some(s)) = (store.get(INT8[0]), store.get(INT8[1])) {
        v.expect_shape(&[rows, Int8Matrix::padded_cols(cols)])?;
        s.expect_shape(&[rows])?;
        if v.dtype != DType::I8 {
            return Err(v.error(format!("dtype {:?}, expected I8", v.dtype)));
        }
        let m = Int8Matrix::from_parts(rows, cols, v.data.clone(), s.to_f32()?)
            .ok_or_else(|| Error::internal("int8 head parts"))?;
        heads.push(StoredHead::Int8(m));
    }
    if let (Some(v), Some(s)) = (store.get(INT4[0]), store.get(INT4[1])) {
        let (vs, ss) = Int4Matrix::part_shapes(rows, cols);
        v.expect_shape(&vs)?;
        s.expect_shape(&ss)?;
        if v.dtype != DType::U8 {
            return Err(v.error(format!("dtype {:?}, expected U8", v.dtype)));
        }
        // f16 scales are read in place from the mapped file, other types rounded to f16.
        let scales = match s.dtype {
            DType::F16 => Scales::from_le_bytes(s.data.clone()),
            _ => Some(Scales::from_f32(&s.to_f32()?)),
        };
        let m = scales
            .and_then(|sc| Int4Matrix::from_parts(rows, cols, v.data.clone(), sc))
            .ok_or_else(|| Error::internal("int4 head parts"))?;
        heads.push(StoredHead::Int4(m));
    }
    Ok(heads)
}

/// The checkpoint's head quantised to `format` (None for the native head).
pub fn quantise(head: crate::kernels::dense::DenseView, format: HeadFormat) -> Option<StoredHead> {
    match format {
        HeadFormat::Native => None,
        HeadFormat::Int8 => Some(StoredHead::Int8(Int8Matrix::from_dense(head))),
        HeadFormat::Int4 => Some(StoredHead::Int4(Int4Matrix::from_dense(head))),
    }
}
