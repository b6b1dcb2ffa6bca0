//! Models: load from a folder or from memory, describe, estimate, free.

use std::collections::BTreeMap;
use std::ffi::c_char;
use std::sync::Arc;

use super::boundary::{call, handle, out_ptr, out_struct, versioned_params, write_out};
use super::status::*;
use super::strings::{bit_ttt_string, bytes_in, path_in, slice_in, str_in, string_in};
use crate::Isa;
use crate::{HeadFormat, Model, ModelParams};

/// A loaded model: immutable, usable from any thread, shared by sessions. Reference counted:
/// it lives until bit_ttt_model_free and the last session using it are both gone.
pub struct bit_ttt_model {
    pub(crate) model: Model,
}

/// Options for loading a model. Initialise with bit_ttt_model_params_init.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_model_params {
    /// sizeof(bit_ttt_model_params).
    pub struct_size: u32,
    /// Worker threads; 0 = one per core.
    pub n_threads: u32,
    /// Ternary kernel by name ("portable", "avx2", "avx512vnni", "neon", "neondot"); empty = the BIT_TTT_KERNEL
    /// environment variable if set, else the fastest this CPU runs.
    pub kernel: bit_ttt_string,
    /// Non-zero: compute logits with an int8 copy of the output head (faster decode, small
    /// accuracy cost). `head`, when set, takes precedence.
    pub int8_head: u8,
    /// Output head format by name ("native", "int8", "int4"); empty = int8 if int8_head is
    /// set, else native. int4 reads a quarter of bf16's bytes per token (ABI 2).
    pub head: bit_ttt_string,
    /// Where the model computes: "auto" (empty: the GPU when the library has CUDA and one is
    /// present, else the CPU), "cpu", "cuda" or "cuda:N" (fails, naming why, when unusable)
    /// (ABI 4).
    pub device: bit_ttt_string,
    /// Layers to run on the GPU, from the first; -1 = all of them and the output head, 0 = none
    /// (the CPU runs the rest: partial offload) (ABI 4).
    pub n_gpu_layers: i32,
}

/// sizeof(bit_ttt_model_params) before `head` was appended, and the bytes of it that held fields.
const MODEL_PARAMS_V1: (usize, usize) = (32, 25);
/// sizeof(bit_ttt_model_params) before `device` and `n_gpu_layers` were appended (ABI 2, 3).
const MODEL_PARAMS_V2: (usize, usize) = (48, 48);

impl bit_ttt_model_params {
    fn defaults() -> Self {
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            n_threads: 0,
            kernel: bit_ttt_string {
                ptr: std::ptr::null(),
                len: 0,
            },
            int8_head: 0,
            head: bit_ttt_string {
                ptr: std::ptr::null(),
                len: 0,
            },
            device: bit_ttt_string {
                ptr: std::ptr::null(),
                len: 0,
            },
            n_gpu_layers: -1,
        }
    }
    fn into_rust(self) -> FfiResult<ModelParams> {
        let name = string_in(&self.kernel, "kernel")?;
        let kernel = if name.is_empty() {
            None
        } else {
            Some(Isa::parse(&name)?)
        };
        let head = string_in(&self.head, "head")?;
        let head = if !head.is_empty() {
            HeadFormat::parse(&head)?
        } else if self.int8_head != 0 {
            HeadFormat::Int8
        } else {
            HeadFormat::Native
        };
        let device = crate::Device::parse(&string_in(&self.device, "device")?)?;
        let gpu_layers = match self.n_gpu_layers {
            -1 => None,
            n if n >= 0 => Some(n as usize),
            n => {
                return Err(crate::Error::invalid_argument(format!(
                    "n_gpu_layers = {n}: must be -1 (all) or >= 0"
                ))
                .into());
            }
        };
        Ok(ModelParams {
            n_threads: self.n_threads as usize,
            kernel,
            head,
            device,
            gpu_layers,
        })
    }
}

/// One file of a model held in memory, for bit_ttt_model_load_memory.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_memory_file {
    /// File name as in a model folder: "config.json", "model.safetensors", "tokenizer.json", ...
    pub name: *const c_char,
    pub name_len: usize,
    pub data: *const u8,
    pub data_len: usize,
}

/// Model families (bit_ttt_model_info.family).
pub const BIT_TTT_FAMILY_BITNET: i32 = 1;
pub const BIT_TTT_FAMILY_LLAMA: i32 = 2;

/// What a loaded model is. Set struct_size before calling bit_ttt_model_info.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_model_info {
    pub struct_size: u32,
    /// BIT_TTT_FAMILY_*.
    pub family: i32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_layers: u32,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub vocab_size: u32,
    pub max_position_embeddings: u32,
    pub n_threads: u32,
    /// All parameters.
    pub n_params: u64,
    /// Parameters held as ternary values.
    pub n_ternary_params: u64,
    /// Bytes of weights as held (mapped or owned).
    pub weight_bytes: u64,
    /// Bytes the same parameters would take in FP16.
    pub fp16_bytes: u64,
    /// Identity of the model; session states carry it.
    pub fingerprint: u64,
}

/// Memory a model and one session will take (bit_ttt_estimate_memory).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_memory_estimate {
    pub struct_size: u32,
    pub weight_bytes: u64,
    /// Part of weight_bytes memory-mapped from the checkpoint.
    pub mapped_bytes: u64,
    pub kv_cache_bytes: u64,
    pub scratch_bytes: u64,
    pub total_bytes: u64,
}

/// Fills `params` with defaults (and its struct_size).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_model_params_init(params: *mut bit_ttt_model_params) -> bit_ttt_status {
    call(|| write_out(params, bit_ttt_model_params::defaults()))
}

fn boxed(model: Model, out_model: *mut *mut bit_ttt_model) -> FfiResult {
    write_out(out_model, Box::into_raw(Box::new(bit_ttt_model { model })))
}

/// The Rust model params of a C params struct (any size this library knows; NULL = defaults).
fn model_params(params: *const bit_ttt_model_params) -> FfiResult<crate::ModelParams> {
    versioned_params(
        params,
        "bit_ttt_model_params",
        bit_ttt_model_params::defaults,
        &[MODEL_PARAMS_V1, MODEL_PARAMS_V2],
    )?
    .into_rust()
}

/// Loads a Hugging Face model folder (UTF-8 path). `params` may be NULL for defaults.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_model_load(
    path: *const c_char,
    path_len: usize,
    params: *const bit_ttt_model_params,
    out_model: *mut *mut bit_ttt_model,
) -> bit_ttt_status {
    call(|| {
        out_ptr(out_model, "out_model")?;
        let path = path_in(path, path_len)?;
        boxed(Model::load(path, &model_params(params)?)?, out_model)
    })
}

/// Loads a model from files held in memory. The bytes are copied; the caller may free them
/// when this returns.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_model_load_memory(
    files: *const bit_ttt_memory_file,
    n_files: usize,
    params: *const bit_ttt_model_params,
    out_model: *mut *mut bit_ttt_model,
) -> bit_ttt_status {
    call(|| {
        out_ptr(out_model, "out_model")?;
        let mut map = BTreeMap::new();
        for f in slice_in(files, n_files, "files")? {
            let name = str_in(f.name, f.name_len, "files[].name")?;
            let data = bytes_in(f.data.cast(), f.data_len, "files[].data")?;
            map.insert(name.to_string(), Arc::new(data.to_vec()));
        }
        boxed(Model::load_memory(map, &model_params(params)?)?, out_model)
    })
}

/// Drops the caller's reference. Sessions keep the model alive until they are freed. NULL is
/// a no-op.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_model_free(model: *mut bit_ttt_model) {
    if !model.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `model` came from Box::into_raw in this module and is freed once.
            drop(unsafe { Box::from_raw(model) })
        }));
    }
}

/// Describes a loaded model.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_model_get_info(
    model: *const bit_ttt_model,
    out_info: *mut bit_ttt_model_info,
) -> bit_ttt_status {
    call(|| {
        let m = &handle(model, "model")?.model;
        let out = out_struct(out_info, "out_info")?;
        let i = m.info();
        let info = bit_ttt_model_info {
            struct_size: std::mem::size_of::<bit_ttt_model_info>() as u32,
            family: match i.family {
                crate::Family::BitNet => BIT_TTT_FAMILY_BITNET,
                crate::Family::Llama => BIT_TTT_FAMILY_LLAMA,
            },
            hidden_size: i.hidden_size as u32,
            intermediate_size: i.intermediate_size as u32,
            num_layers: i.num_layers as u32,
            num_heads: i.num_heads as u32,
            num_kv_heads: i.num_kv_heads as u32,
            vocab_size: i.vocab_size as u32,
            max_position_embeddings: i.max_position_embeddings as u32,
            n_threads: m.n_threads() as u32,
            n_params: i.n_params,
            n_ternary_params: i.n_ternary_params,
            weight_bytes: i.weight_bytes,
            fp16_bytes: i.fp16_bytes,
            fingerprint: m.fingerprint(),
        };
        write_out(out, info)
    })
}
