//! Quantised output heads stored in a pre-packed file (`bit-ttt convert --head int8|int4`), so
//! that a model loaded with that head maps it in place instead of quantising the f16/bf16 head
//! at every load (seconds for a 128k vocabulary, and the whole bf16 head paged in on the way).

use super::safetensors::TensorStore;
use crate::error::{Error, Result};
use crate::kernels::int4::{Int4Matrix, Scales};
use crate::kernels::int8::Int8Matrix;
use crate::storage::DType;
use crate::transformer::head::{HeadFormat, StoredHead};

/// Tensor names: values, then per-row (int8, f32) or per-group (int4, f16; f32 in files written
/// before 2026-12) scales.
pub const INT8: [&str; 2] = ["bit_ttt.head.int8.values", "bit_ttt.head.int8.scales"];
pub const INT4: [&str; 2] = ["bit_ttt.head.int4.values", "bit_ttt.head.int4.scales"];

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
