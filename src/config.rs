//! The model's shape and quantisation, read from a Hugging Face `config.json`.
//!
//! Two families are accepted: `model_type: bitnet` (BitNet b1.58 2B4T block: sub-norms and
//! ReLU² GLU) and `model_type: llama` with `quantization_config.quant_method: bitnet` (plain
//! LLaMA block with ternary linears, SiLU GLU).

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Which transformer block the checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BitNet b1.58 2B4T: `attn_sub_norm` before o_proj, `ffn_sub_norm` before down_proj.
    BitNet,
    /// LLaMA block whose linears are BitLinear.
    Llama,
}

/// The gate activation of the GLU feed-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// relu(x)²
    Relu2,
    /// x·sigmoid(x)
    Silu,
}

/// How `weight_scale` relates to the ternary weights' scale γ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearClass {
    /// transformers `BitLinear`: output divided by weight_scale (weight_scale = 1/γ).
    BitLinear,
    /// transformers `AutoBitLinear`: output multiplied by weight_scale (weight_scale = γ).
    AutoBitLinear,
}

/// Whether ternary weights are stored (offline) or derived from latent weights at load (online).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMode {
    Offline,
    Online,
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// LLaMA 3.1 style: low frequencies divided by `factor`, a smooth band in between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: f32,
    },
}

/// Everything the engine needs to know about a model's architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    pub activation: Activation,
    pub linear_class: LinearClass,
    pub quant_mode: QuantMode,
    /// Linear modules that stay in floating point (transformers' `modules_to_not_convert`).
    pub modules_to_not_convert: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawQuant {
    quant_method: Option<String>,
    linear_class: Option<String>,
    quantization_mode: Option<String>,
    modules_to_not_convert: Option<Vec<String>>,
    #[serde(default)]
    use_rms_norm: bool,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    quantization_config: Option<RawQuant>,
}

fn required(v: Option<usize>, name: &str) -> Result<usize> {
    match v {
        Some(0) => Err(Error::invalid_model(format!("field `{name}` is 0"))),
        Some(x) => Ok(x),
        None => Err(Error::invalid_model(format!("field `{name}` is missing"))),
    }
}

/// Token ids in HF configs are an int, a list of ints, or null.
fn token_ids(v: &Option<Value>, name: &str) -> Result<Vec<u32>> {
    let as_id = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::invalid_model(format!("field `{name}`: {x} is not a token id")))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(x) => Ok(vec![as_id(x)?]),
    }
}

fn f32_field(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

/// Reads rope_theta and scaling from the top level (transformers 4) or `rope_parameters`
/// (transformers 5), whichever the file has.
fn rope(raw: &RawConfig) -> Result<(f32, RopeScaling)> {
    let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
    let theta = raw
        .rope_theta
        .or_else(|| {
            raw.rope_parameters
                .as_ref()
                .and_then(|p| f32_field(p, "rope_theta"))
        })
        .unwrap_or(10_000.0);
    if !(theta.is_finite() && theta > 1.0) {
        return Err(Error::invalid_model(format!(
            "rope_theta {theta} is not a valid base"
        )));
    }
    let Some(p) = params.filter(|p| !p.is_null()) else {
        return Ok((theta, RopeScaling::None));
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scaling = match kind {
        "default" => RopeScaling::None,
        "llama3" => {
            let get = |k: &str| {
                f32_field(p, k).ok_or_else(|| {
                    Error::invalid_model(format!("rope scaling `llama3` is missing `{k}`"))
                })
            };
            RopeScaling::Llama3 {
                factor: get("factor")?,
                low_freq_factor: get("low_freq_factor")?,
                high_freq_factor: get("high_freq_factor")?,
                original_max_position: get("original_max_position_embeddings")?,
            }
        }
        other => {
            return Err(Error::unsupported(format!(
                "rope_type `{other}` is not supported"
            )));
        }
    };
    Ok((theta, scaling))
}

impl Config {
    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| Error::invalid_model(format!("not a valid config: {e}")))?;
        let model_type = raw.model_type.as_deref().unwrap_or("");
        let quant = raw.quantization_config.as_ref();
        let is_bitnet_quant = quant
            .and_then(|q| q.quant_method.as_deref())
            .is_some_and(|m| m == "bitnet");
        let family = match model_type {
            "bitnet" => Family::BitNet,
            "llama" if is_bitnet_quant => Family::Llama,
            "llama" => {
                return Err(Error::unsupported(
                    "model_type `llama` without quantization_config.quant_method `bitnet` is not a ternary model",
                ));
            }
            "" => return Err(Error::invalid_model("field `model_type` is missing")),
            other => {
                return Err(Error::unsupported(format!(
                    "model_type `{other}` is not supported (expected `bitnet`, or `llama` with bitnet quantization)"
                )));
            }
        };
        if let Some(method) = quant.and_then(|q| q.quant_method.as_deref())
            && method != "bitnet"
        {
            return Err(Error::unsupported(format!(
                "quantization_config.quant_method `{method}` is not supported (expected `bitnet`)"
            )));
        }
        if quant.is_some_and(|q| q.use_rms_norm) {
            return Err(Error::unsupported(
                "quantization_config.use_rms_norm is not supported",
            ));
        }
        if raw.attention_bias || raw.mlp_bias {
            return Err(Error::unsupported(
                "linear biases (attention_bias / mlp_bias) are not supported",
            ));
        }
        let linear_class = match quant.and_then(|q| q.linear_class.as_deref()) {
            None | Some("bitlinear") => LinearClass::BitLinear,
            Some("autobitlinear") => LinearClass::AutoBitLinear,
            Some(other) => {
                return Err(Error::unsupported(format!(
                    "quantization_config.linear_class `{other}` is not supported"
                )));
            }
        };
        // A bitnet model without a quantization_config holds latent weights: ternarise them.
        let quant_mode = match (quant, quant.and_then(|q| q.quantization_mode.as_deref())) {
            (None, _) => QuantMode::Online,
            (Some(_), None | Some("offline")) => QuantMode::Offline,
            (Some(_), Some("online")) => QuantMode::Online,
            (Some(_), Some(other)) => {
                return Err(Error::unsupported(format!(
                    "quantization_config.quantization_mode `{other}` is not supported"
                )));
            }
        };
        let modules_to_not_convert = quant
            .and_then(|q| q.modules_to_not_convert.clone())
            .unwrap_or_default();

        let hidden_size = required(raw.hidden_size, "hidden_size")?;
        let num_heads = required(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = required(
            raw.num_key_value_heads.or(Some(num_heads)),
            "num_key_value_heads",
        )?;
        if num_heads % num_kv_heads != 0 {
            return Err(Error::invalid_model(format!(
                "num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => required(Some(d), "head_dim")?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(Error::invalid_model(format!(
                    "hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_heads}) and head_dim is not given"
                )));
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::invalid_model(format!(
                "head_dim ({head_dim}) must be even for RoPE"
            )));
        }
        let activation = match raw.hidden_act.as_deref() {
            Some("relu2") => Activation::Relu2,
            Some("silu") | Some("swish") => Activation::Silu,
            None if family == Family::BitNet => Activation::Relu2,
            None => Activation::Silu,
            Some(other) => {
                return Err(Error::unsupported(format!(
                    "hidden_act `{other}` is not supported"
                )));
            }
        };
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(Error::invalid_model(format!(
                "rms_norm_eps {rms_norm_eps} is invalid"
            )));
        }
        let (rope_theta, rope_scaling) = rope(&raw)?;
        let bos = token_ids(&raw.bos_token_id, "bos_token_id")?;
        Ok(Config {
            family,
            hidden_size,
            intermediate_size: required(raw.intermediate_size, "intermediate_size")?,
            num_layers: required(raw.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: required(raw.vocab_size, "vocab_size")?,
            max_position_embeddings: required(
                raw.max_position_embeddings.or(Some(2048)),
                "max_position_embeddings",
            )?,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            activation,
            linear_class,
            quant_mode,
            modules_to_not_convert,
            bos_token_id: bos.first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id, "eos_token_id")?,
        })
    }

    /// Width of the K (and V) projection output.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Width of the Q projection output.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_B: &str = r#"{"architectures":["BitNetForCausalLM"],"bos_token_id":128000,
      "eos_token_id":128001,"hidden_act":"relu2","hidden_size":2560,"intermediate_size":6912,
      "max_position_embeddings":4096,"model_type":"bitnet","rms_norm_eps":1e-05,
      "num_attention_heads":20,"num_hidden_layers":30,"num_key_value_heads":5,
      "rope_theta":500000.0,"tie_word_embeddings":true,"vocab_size":128256,
      "quantization_config":{"quant_method":"bitnet","linear_class":"autobitlinear","quantization_mode":"offline"}}"#;

    #[test]
    fn reads_2b4t() {
        let c = Config::from_json(TWO_B).unwrap();
        assert_eq!(c.family, Family::BitNet);
        assert_eq!((c.head_dim, c.kv_dim(), c.q_dim()), (128, 640, 2560));
        assert_eq!(c.linear_class, LinearClass::AutoBitLinear);
        assert_eq!(c.quant_mode, QuantMode::Offline);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.eos_token_ids, vec![128001]);
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn rope_theta_from_rope_parameters() {
        let text = TWO_B.replace(
            r#""rope_theta":500000.0"#,
            r#""rope_parameters":{"rope_type":"default","rope_theta":250000.0}"#,
        );
        assert_eq!(Config::from_json(&text).unwrap().rope_theta, 250000.0);
    }

    #[test]
    fn rejects_bad_configs_with_names() {
        let err =
            Config::from_json(&TWO_B.replace("\"bitnet\",\"rms", "\"gpt2\",\"rms")).unwrap_err();
        assert!(err.message().contains("gpt2"), "{err}");
        let err = Config::from_json(
            &TWO_B.replace("\"num_key_value_heads\":5", "\"num_key_value_heads\":3"),
        )
        .unwrap_err();
        assert!(err.message().contains("num_key_value_heads"), "{err}");
        let err = Config::from_json(&TWO_B.replace("\"hidden_size\":2560,", "")).unwrap_err();
        assert!(err.message().contains("hidden_size"), "{err}");
        let err = Config::from_json("{not json").unwrap_err();
        assert!(err.message().contains("not a valid config"), "{err}");
    }
}
