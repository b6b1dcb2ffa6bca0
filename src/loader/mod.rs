//! Reading a Hugging Face model folder: config.json, the safetensors file(s), and turning HF
//! tensors into the engine's weights (ternary weights in every published encoding).

pub mod estimate;
pub mod heads;
pub mod prepacked;
pub mod safetensors;

use std::collections::BTreeSet;

use crate::config::{Config, Family, LinearClass, QuantMode};
use crate::error::{Error, Result};
use crate::kernels::packed::{PackedTernary, Packing};
use crate::quant;
use crate::storage::DType;
pub use crate::storage::Source;
use crate::transformer::linear::{FloatMatrix, Linear, TernaryMatrix};
use crate::transformer::{LayerWeights, Weights};
use safetensors::{Tensor, TensorStore};

/// The safetensors files of a model: `model.safetensors.index.json` shards, or
/// `model.safetensors`.
pub fn weight_files(src: &Source) -> Result<Vec<String>> {
    if let Source::Packed { file, .. } = src {
        return Ok(vec![file.display().to_string()]);
    }
    let index = "model.safetensors.index.json";
    if src.exists(index) {
        let label = src.describe(index);
        let json: serde_json::Value = serde_json::from_str(&src.read_string(index)?)
            .map_err(|e| Error::invalid_model(format!("{label}: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::invalid_model(format!("{label}: no `weight_map` object")))?;
        let mut files = BTreeSet::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::invalid_model(format!("{label}: file of `{tensor}` is not a string"))
            })?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(Error::invalid_model(format!(
                    "{label}: shard name `{file}` leaves the model folder"
                )));
            }
            files.insert(file.to_string());
        }
        return Ok(files.into_iter().collect());
    }
    if src.exists("model.safetensors") {
        return Ok(vec!["model.safetensors".to_string()]);
    }
    Err(Error::new(
        crate::ErrorKind::Io,
        format!(
            "{}: no model.safetensors or model.safetensors.index.json",
            src.describe("")
        ),
    ))
}

/// Loads config and weights, ternary matrices repacked in `packing` (a pre-packed file's 2-bit
/// matrices stay as they are: every kernel reads them); weights stay memory-mapped where their
/// format allows it. Also returns the model's fingerprint (see `fingerprint`).
pub fn load_weights(src: &Source, packing: Packing) -> Result<(Weights, u64)> {
    if let Source::Dir(d) = src
        && !d.is_dir()
    {
        return Err(Error::new(
            crate::ErrorKind::Io,
            format!("{}: not a model folder", d.display()),
        ));
    }
    let config_text = src.read_string("config.json")?;
    let config =
        Config::from_json(&config_text).map_err(|e| e.context(src.describe("config.json")))?;
    let mut store = TensorStore::default();
    for file in weight_files(src)? {
        store.add_backing(&src.describe(&file), src.backing(&file)?)?;
    }
    let print = fingerprint(&config_text, &store);
    Ok((build_weights(config, &store, packing)?, print))
}

/// A 64-bit identity of a model: its config and every tensor's name, type, shape and a sample
/// of its bytes. Saved session states carry it so a state is never loaded into another model.
pub(crate) fn fingerprint(config_text: &str, store: &TensorStore) -> u64 {
    let mut h = Fnv64::default();
    h.write(config_text.as_bytes());
    let mut names: Vec<&str> = store.names().collect();
    names.sort_unstable();
    for name in names {
        let t = store.get(name).expect("listed tensor");
        h.write(name.as_bytes());
        h.write(format!("{:?}{:?}", t.dtype, t.shape).as_bytes());
        let d = &*t.data;
        let n = d.len().min(256);
        h.write(&d[..n]);
        h.write(&d[d.len() / 2..(d.len() / 2 + n).min(d.len())]);
        h.write(&d[d.len() - n..]);
    }
    h.finish()
}

/// FNV-1a, 64-bit: tiny and stable across releases and platforms.
#[derive(Debug, Clone)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

fn float_vector(store: &TensorStore, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = store.require(name)?;
    t.expect_shape(&[len])?;
    t.to_f32()
}

pub(crate) fn float_matrix(t: &Tensor, rows: usize, cols: usize) -> Result<FloatMatrix> {
    if !t.dtype.is_float() {
        return Err(t.error(format!("dtype {:?}, expected a float type", t.dtype)));
    }
    t.expect_shape(&[rows, cols])?;
    Ok(FloatMatrix {
        rows,
        cols,
        dtype: t.dtype,
        data: t.data.clone(),
        read_rows: false,
    })
}

/// Matches transformers' `modules_to_not_convert` (a module name or a suffix of one).
fn kept_in_float(cfg: &Config, module: &str) -> bool {
    cfg.modules_to_not_convert.iter().any(|m| {
        module == m || module.ends_with(&format!(".{m}")) || module.starts_with(&format!("{m}."))
    })
}

/// The suffix of a pre-packed file's ternary tensors (`{module}.packed`, `{module}.packed3`).
pub(crate) fn packed_name(packing: Packing) -> &'static str {
    match packing {
        Packing::Bits2 => "packed",
        Packing::Base3 => "packed3",
    }
}

/// γ from the checkpoint's `weight_scale` under the config's linear class.
fn gamma_from_scale(store: &TensorStore, module: &str, class: LinearClass) -> Result<f32> {
    let t = store.require(&format!("{module}.weight_scale"))?;
    if t.numel() != 1 {
        return Err(t.error(format!("shape {:?}, expected one value", t.shape)));
    }
    let ws = t.to_f32()?[0];
    if !(ws.is_finite() && ws > 0.0) {
        return Err(t.error(format!("value {ws} is not a positive scale")));
    }
    Ok(match class {
        LinearClass::AutoBitLinear => ws,
        LinearClass::BitLinear => 1.0 / ws,
    })
}

pub(crate) fn build_linear(
    store: &TensorStore,
    cfg: &Config,
    module: &str,
    (rows, cols): (usize, usize),
    packing: Packing,
) -> Result<Linear> {
    let stored = [Packing::Bits2, Packing::Base3].into_iter().find_map(|k| {
        store
            .get(&format!("{module}.{}", packed_name(k)))
            .map(|p| (k, p))
    });
    if let Some((stored, p)) = stored {
        // A pre-packed file: the kernels' layout, used in place.
        let cols_padded = PackedTernary::padded_cols(cols, stored);
        p.expect_shape(&[rows, cols_padded / stored.block() * 64])?;
        if p.dtype != DType::U8 {
            return Err(p.error(format!("dtype {:?}, expected U8", p.dtype)));
        }
        let g = store.require(&format!("{module}.gamma"))?;
        g.expect_shape(&[1])?;
        let gamma = g.to_f32()?[0];
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(g.error(format!("value {gamma} is not a positive scale")));
        }
        let packed = PackedTernary {
            rows,
            cols,
            cols_padded,
            packing: stored,
            data: p.data.clone(),
        };
        // Every kernel reads 2-bit rows fast: those stay mapped in place. Base-3 rows are
        // repacked for a kernel that does not read them fast.
        let packed = match (stored, packing) {
            (Packing::Base3, Packing::Bits2) => packed.repacked(Packing::Bits2),
            _ => packed,
        };
        return Ok(Linear::Ternary(TernaryMatrix { packed, gamma }));
    }
    let t = store.require(&format!("{module}.weight"))?;
    if kept_in_float(cfg, module) {
        return Ok(Linear::Dense(float_matrix(t, rows, cols)?));
    }
    // Every encoding is brought to the HF packed layout, then repacked for the kernels.
    let ternary = |hf: &[u8], gamma: f32| {
        Linear::Ternary(TernaryMatrix {
            packed: PackedTernary::from_hf_as(hf, rows, cols, packing),
            gamma,
        })
    };
    match (t.dtype, cfg.quant_mode) {
        (DType::U8 | DType::I8, QuantMode::Offline) => {
            t.expect_shape(&[quant::packed_rows(rows), cols])?;
            if let Some((i, b)) = t.data.iter().enumerate().find(|(_, b)| (0..4).any(|k| (*b >> (2 * k)) & 3 == 3)) {
                return Err(t.error(format!("byte {i} (0x{b:02x}) holds the invalid 2-bit code 3")));
            }
            Ok(ternary(&t.data, gamma_from_scale(store, module, cfg.linear_class)?))
        }
        (DType::U8 | DType::I8, QuantMode::Online) => Err(t.error(
            "packed ternary weights, but quantization_mode is `online` (which expects latent float weights)",
        )),
        (_, QuantMode::Offline) => {
            t.expect_shape(&[rows, cols])?;
            let values = t.to_f32()?;
            let mut tern = Vec::with_capacity(values.len());
            for (i, &v) in values.iter().enumerate() {
                if v != -1.0 && v != 0.0 && v != 1.0 {
                    return Err(t.error(format!(
                        "value {v} at [{}, {}] is not ternary (latent weights need quantization_mode `online`)",
                        i / cols,
                        i % cols
                    )));
                }
                tern.push(v as i8);
            }
            let packed = quant::pack_ternary(&tern, rows, cols);
            Ok(ternary(&packed, gamma_from_scale(store, module, cfg.linear_class)?))
        }
        (_, QuantMode::Online) => {
            t.expect_shape(&[rows, cols])?;
            let values = t.to_f32()?;
            if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                return Err(t.error(format!("holds the non-finite value {v}")));
            }
            let (tern, gamma) = quant::absmean_ternarize(&values);
            Ok(ternary(&quant::pack_ternary(&tern, rows, cols), gamma))
        }
    }
}

/// `(rows, cols)` of a projection named `model.layers.N.<proj>`, or None for other modules.
pub(crate) fn projection_shape(c: &Config, module: &str) -> Option<(usize, usize)> {
    let rest = module.strip_prefix("model.layers.")?;
    let (_, proj) = rest.split_once('.')?;
    let (h, ffn) = (c.hidden_size, c.intermediate_size);
    Some(match proj {
        "self_attn.q_proj" => (c.q_dim(), h),
        "self_attn.k_proj" | "self_attn.v_proj" => (c.kv_dim(), h),
        "self_attn.o_proj" => (h, c.q_dim()),
        "mlp.gate_proj" | "mlp.up_proj" => (ffn, h),
        "mlp.down_proj" => (h, ffn),
        _ => return None,
    })
}

/// Builds the engine's weights from a checkpoint's tensors, checking every name and shape.
pub fn build_weights(config: Config, store: &TensorStore, packing: Packing) -> Result<Weights> {
    let c = &config;
    let (h, ffn) = (c.hidden_size, c.intermediate_size);
    // The 2B4T attention sub-norm normalises the concatenated heads (q_dim wide).
    if c.family == Family::BitNet && c.q_dim() != h {
        return Err(Error::unsupported(format!(
            "num_attention_heads × head_dim ({}) differs from hidden_size ({h})",
            c.q_dim()
        )));
    }
    let embed = float_matrix(store.require("model.embed_tokens.weight")?, c.vocab_size, h)?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        let lin = |m: &str, rows, cols| {
            build_linear(store, c, &format!("{p}.{m}"), (rows, cols), packing)
        };
        let sub = |name: &str, len| match c.family {
            Family::BitNet => float_vector(store, &format!("{p}.{name}.weight"), len).map(Some),
            Family::Llama => Ok(None),
        };
        layers.push(LayerWeights {
            input_norm: float_vector(store, &format!("{p}.input_layernorm.weight"), h)?,
            post_attention_norm: float_vector(
                store,
                &format!("{p}.post_attention_layernorm.weight"),
                h,
            )?,
            attn_sub_norm: sub("self_attn.attn_sub_norm", h)?,
            ffn_sub_norm: sub("mlp.ffn_sub_norm", ffn)?,
            q: lin("self_attn.q_proj", c.q_dim(), h)?,
            k: lin("self_attn.k_proj", c.kv_dim(), h)?,
            v: lin("self_attn.v_proj", c.kv_dim(), h)?,
            o: lin("self_attn.o_proj", h, c.q_dim())?,
            gate: lin("mlp.gate_proj", ffn, h)?,
            up: lin("mlp.up_proj", ffn, h)?,
            down: lin("mlp.down_proj", h, ffn)?,
        });
    }
    let final_norm = float_vector(store, "model.norm.weight", h)?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(float_matrix(
            store.require("lm_head.weight")?,
            c.vocab_size,
            h,
        )?)
    };
    let stored_heads = heads::load(store, c.vocab_size, h)?;
    Ok(Weights {
        config,
        embed,
        layers,
        final_norm,
        lm_head,
        stored_heads,
    })
}
