//! Tensors from one or more safetensors files, memory-mapped and looked up by name.
//!
//! Headers are validated by the `safetensors` crate (offsets in order, sizes consistent with
//! dtype and shape, file long enough), so a truncated or lying file is an error, never a read
//! out of bounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, ErrorKind, Result};
use crate::storage::{Backing, Bytes, DType};

/// One tensor: where it came from, its type and shape, and its bytes.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub file: Arc<PathBuf>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Converts a float tensor to f32 values.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let b = &*self.data;
        Ok(match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(self.error(format!("dtype {other:?} where a float tensor is expected")));
            }
        })
    }

    /// An InvalidModel error naming this tensor and its file.
    pub fn error(&self, what: impl std::fmt::Display) -> Error {
        Error::invalid_model(format!(
            "tensor `{}` in {}: {what}",
            self.name,
            self.file.display()
        ))
    }

    /// Checks the shape, with an error that shows expected and found.
    pub fn expect_shape(&self, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(self.error(format!("shape {:?}, expected {:?}", self.shape, expected)));
        }
        Ok(())
    }
}

/// All tensors of a checkpoint, across its shards.
#[derive(Default)]
pub struct TensorStore {
    tensors: HashMap<String, Tensor>,
}

fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        _ => return None,
    })
}

impl TensorStore {
    /// Adds the tensors of a safetensors file (`label` names it in errors).
    pub fn add_backing(&mut self, label: &str, backing: Backing) -> Result<()> {
        let backing = Arc::new(backing);
        let path = Path::new(label);
        let file = Arc::new(path.to_path_buf());
        let bad = |e: safetensors::SafeTensorError| {
            Error::invalid_model(format!(
                "{}: not a valid safetensors file: {e}",
                path.display()
            ))
        };
        let parsed = SafeTensors::deserialize(&backing).map_err(bad)?;
        for (name, view) in parsed.tensors() {
            let dtype = dtype_of(view.dtype()).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "tensor `{name}` in {}: dtype {:?} is not supported",
                        path.display(),
                        view.dtype()
                    ),
                )
            })?;
            // The view borrows the backing; turn it back into an offset range we can own.
            let start = view.data().as_ptr() as usize - backing.as_ptr() as usize;
            let range = start..start + view.data().len();
            if self.tensors.contains_key(&name) {
                return Err(Error::invalid_model(format!(
                    "tensor `{name}` appears twice (again in {})",
                    path.display()
                )));
            }
            let tensor = Tensor {
                name: name.clone(),
                file: file.clone(),
                dtype,
                shape: view.shape().to_vec(),
                data: Bytes::Shared {
                    file: backing.clone(),
                    range,
                },
            };
            self.tensors.insert(name, tensor);
        }
        drop(parsed);
        // The header has been read; the tensors after it stay mapped.
        let header = u64::from_le_bytes(backing[..8].try_into().expect("8 bytes"));
        backing.release_prefix(8 + header as usize);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The tensor, or an error naming the missing tensor.
    pub fn require(&self, name: &str) -> Result<&Tensor> {
        self.get(name).ok_or_else(|| {
            Error::invalid_model(format!("tensor `{name}` is missing from the checkpoint"))
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}
