//! The loaded model the API hands out: weights laid out for the chosen kernels, the tokenizer,
//! the worker threads, and the GPU part when there is one. Immutable once loaded and shared by
//! every session; also the one-shot conversions (`convert`) and the memory estimate. `caches`
//! is the seam between CPU and GPU that sessions compute through; `gpu` the GPU side, a stub
//! when the `cuda` feature is off.

pub(crate) mod caches;
mod gpu;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{self, Config};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernels::{self, Isa};
use crate::loader::{self, estimate::MemoryEstimate};
use crate::log;
use crate::storage;
use crate::storage::Source;
use crate::text::{
    self,
    chat::ChatMessage,
    tokenizer::{TokenId, Tokenizer},
};
use crate::transformer::forward::Transformer;
use crate::transformer::head::HeadFormat;
use crate::transformer::kv_cache::KvType;

/// Options for loading a model.
#[derive(Debug, Clone, Default)]
pub struct ModelParams {
    /// Worker threads for this model's compute; 0 = one per available core.
    pub n_threads: usize,
    /// The ternary kernel; `None` = BIT_TTT_KERNEL if set, else the fastest this CPU runs.
    pub kernel: Option<Isa>,
    /// Which copy of the output head computes the logits (a quantised copy reads fewer bytes
    /// per token, for a small accuracy cost; the original is then kept for nothing else).
    pub head: HeadFormat,
    /// Where the model computes (default: the GPU when there is one and this build has CUDA).
    pub device: Device,
    /// Layers to run on the GPU, from the first; `None` = all of them (and the output head).
    /// The rest run on the CPU (partial offload, for models larger than the card).
    pub gpu_layers: Option<usize>,
}

/// Size and shape of a loaded model, as reported by `bit-ttt info`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub family: config::Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Every parameter (embedding, norms, projections, and an untied head).
    pub n_params: u64,
    /// Parameters held as ternary values.
    pub n_ternary_params: u64,
    /// Bytes of weights as held by the engine (mapped or owned).
    pub weight_bytes: u64,
    /// Bytes the same parameters take in FP16.
    pub fp16_bytes: u64,
}

struct ModelInner {
    transformer: Transformer,
    tokenizer: Tokenizer,
    stop_tokens: Vec<TokenId>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    source: Source,
    fingerprint: u64,
    pool: kernels::pool::Pool,
    /// The layers (and maybe the head) uploaded to the GPU.
    gpu: Option<Arc<gpu::Core>>,
}

/// A loaded model: immutable, cheap to clone (reference counted), shareable across threads and
/// sessions.
#[derive(Clone)]
pub struct Model(Arc<ModelInner>);

fn ids_from_generation_config(src: &Source) -> Result<Vec<TokenId>> {
    let name = "generation_config.json";
    if !src.exists(name) {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(&src.read_string(name)?)
        .map_err(|e| Error::invalid_model(format!("{}: {e}", src.describe(name))))?;
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        None => Vec::new(),
    })
}

impl Model {
    /// Loads a Hugging Face model folder (config.json, safetensors, tokenizer.json), or a file
    /// written by `bit-ttt convert` (weights already in the kernels' layout, mapped in place).
    pub fn load(path: impl AsRef<Path>, params: &ModelParams) -> Result<Model> {
        let path = path.as_ref();
        if loader::prepacked::is_prepacked(path) {
            let (src, print) = loader::prepacked::open(path)?;
            return Self::load_source(src, Some(print), params);
        }
        Self::load_source(Source::Dir(path.to_path_buf()), None, params)
    }

    /// Loads a model whose files are held in memory, by file name (`config.json`,
    /// `model.safetensors`, `tokenizer.json`, ...). The bytes are kept, not copied again.
    pub fn load_memory(
        files: BTreeMap<String, Arc<Vec<u8>>>,
        params: &ModelParams,
    ) -> Result<Model> {
        Self::load_source(Source::Memory(files), None, params)
    }

    /// `print` overrides the fingerprint (a pre-packed file carries its checkpoint's, so that
    /// session states move between the two forms of one model).
    fn load_source(src: Source, print: Option<u64>, params: &ModelParams) -> Result<Model> {
        let kernel = Isa::select(params.kernel)?;
        // Loading repacks and quantises in parallel on the model's own threads.
        let pool = kernels::pool::Pool::new(params.n_threads)
            .map_err(|e| Error::internal(format!("thread pool: {e}")))?;
        let (weights, computed) = pool.install(|| loader::load_weights(&src, kernel.packing()))?;
        let fingerprint = print.unwrap_or(computed);
        let tokenizer = Tokenizer::from_source(&src)?;
        let cfg = &weights.config;
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(Error::invalid_model(format!(
                "{}: tokenizer has {} tokens but the model's vocab_size is {}",
                src.describe("tokenizer.json"),
                tokenizer.vocab_size(),
                cfg.vocab_size
            )));
        }
        // End of generation: the config's EOS ids, generation_config's, and the tokenizer's eos.
        let mut stop_tokens = cfg.eos_token_ids.clone();
        stop_tokens.extend(ids_from_generation_config(&src)?);
        if let Some(id) = tokenizer
            .eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
        {
            stop_tokens.push(id);
        }
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        let mut src = src;
        src.forget_texts();
        log::log(log::Level::Info, || {
            format!(
                "loaded {}: {} layers, hidden {}, vocab {}; kernel {}, {} threads",
                src.describe(""),
                cfg.num_layers,
                cfg.hidden_size,
                cfg.vocab_size,
                kernel.name(),
                pool.n_threads()
            )
        });
        let transformer = pool.install(|| Transformer::new(weights, kernel.kernels(), params.head));
        let gpu = gpu::load(&transformer, params)?;
        let model = Model(Arc::new(ModelInner {
            bos_token: tokenizer.bos_token.clone(),
            eos_token: tokenizer.eos_token.clone(),
            transformer,
            gpu,
            tokenizer,
            stop_tokens,
            source: src,
            fingerprint,
            pool,
        }));
        storage::release_free_heap();
        Ok(model)
    }

    pub fn config(&self) -> &Config {
        &self.0.transformer.weights.config
    }
    /// Where the model was loaded from (a folder, or `<memory>`).
    pub fn location(&self) -> String {
        self.0.source.describe("")
    }
    /// Identity of the model's config and weights; saved session states carry it.
    pub fn fingerprint(&self) -> u64 {
        self.0.fingerprint
    }
    /// Token ids that end generation (EOS / EOT from the configs).
    pub fn stop_tokens(&self) -> &[TokenId] {
        &self.0.stop_tokens
    }
    /// The instruction set the model computes with.
    pub fn kernel(&self) -> Isa {
        self.0.transformer.kernel().isa
    }

    /// (operation, function) for every CPU operation: the dispatch table the model was loaded
    /// with, as `bit-ttt info` prints it.
    pub fn kernel_table(&self) -> Vec<(&'static str, &'static str)> {
        self.0.transformer.kernel().describe()
    }
    /// Which copy of the output head computes the logits.
    pub fn head_format(&self) -> HeadFormat {
        self.0.transformer.head_format()
    }

    /// Where the model computes: "cpu", or "cuda:0 <GPU name> (L/N layers)".
    pub fn device(&self) -> String {
        if let Some(g) = &self.0.gpu {
            return format!(
                "cuda:0 {} ({}/{} layers{})",
                gpu::describe(),
                g.n_layers(),
                self.config().num_layers,
                if g.is_full() { " and the head" } else { "" }
            );
        }
        "cpu".into()
    }

    /// Layers that run on the GPU (0: the model runs on the CPU).
    pub fn gpu_layers(&self) -> usize {
        self.0.gpu.as_ref().map_or(0, |g| g.n_layers())
    }

    pub(crate) fn gpu(&self) -> Option<&gpu::Core> {
        self.0.gpu.as_deref()
    }

    /// Number of worker threads the model computes with.
    pub fn n_threads(&self) -> usize {
        self.0.pool.n_threads()
    }

    /// Token ids of `text`; `add_special` adds what the tokenizer adds by default (BOS).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<TokenId>> {
        self.0.tokenizer.encode(text, add_special)
    }
    /// Text of `ids`, special tokens left out.
    pub fn detokenize(&self, ids: &[TokenId]) -> Result<String> {
        self.0.tokenizer.decode(ids, true)
    }
    pub fn token_to_id(&self, token: &str) -> Option<TokenId> {
        self.0.tokenizer.token_to_id(token)
    }

    /// Renders the model's chat template (from tokenizer_config.json).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = &self.0.tokenizer;
        let template = t.chat_template.as_deref().ok_or_else(|| {
            Error::unsupported(format!(
                "{}: the model has no chat template",
                self.location()
            ))
        })?;
        let mut special: Vec<(String, String)> = t.extra_special.clone();
        if let Some(b) = &self.0.bos_token {
            special.push(("bos_token".into(), b.clone()));
        }
        if let Some(e) = &self.0.eos_token {
            special.push(("eos_token".into(), e.clone()));
        }
        text::chat::render(template, messages, add_generation_prompt, &special)
    }

    /// Architecture, parameter counts and memory, measured from the loaded tensors.
    pub fn info(&self) -> ModelInfo {
        let w = &self.0.transformer.weights;
        let c = &w.config;
        let mut n_params = (w.embed.rows * w.embed.cols + w.final_norm.len()) as u64;
        let mut n_ternary = 0u64;
        let mut bytes = (w.embed.bytes() + w.final_norm.len() * 4) as u64;
        for l in &w.layers {
            let norms = [&l.input_norm, &l.post_attention_norm]
                .into_iter()
                .chain(l.attn_sub_norm.as_ref())
                .chain(l.ffn_sub_norm.as_ref());
            for n in norms {
                n_params += n.len() as u64;
                bytes += (n.len() * 4) as u64;
            }
            for lin in l.linears() {
                let n = (lin.rows() * lin.cols()) as u64;
                n_params += n;
                bytes += lin.bytes() as u64;
                if matches!(lin, crate::transformer::linear::Linear::Ternary(_)) {
                    n_ternary += n;
                }
            }
        }
        if let Some(h) = &w.lm_head {
            n_params += (h.rows * h.cols) as u64;
            bytes += h.bytes() as u64;
        }
        bytes += self.0.transformer.quant_head_bytes() as u64;
        ModelInfo {
            family: c.family,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_layers,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            n_params,
            n_ternary_params: n_ternary,
            weight_bytes: bytes,
            fp16_bytes: n_params * 2,
        }
    }

    /// Bytes one decode step reads at `context` tokens: every projection, the output head (or
    /// its quantised copy) and the KV cache. Divided by memory bandwidth, the decode speed limit.
    pub fn bytes_read_per_token(&self, context: usize, kv: KvType) -> u64 {
        let t = &self.0.transformer;
        let w = &t.weights;
        let linears: usize = w
            .layers
            .iter()
            .flat_map(|l| l.linears())
            .map(|l| l.bytes())
            .sum();
        let head = match t.head_format() {
            HeadFormat::Native => w.head().bytes(),
            _ => t.quant_head_bytes(),
        };
        let kv = 2 * w.config.num_layers * context * w.config.kv_dim() * kv.size();
        (linears + head + kv) as u64
    }

    pub(crate) fn transformer(&self) -> &Transformer {
        &self.0.transformer
    }
    pub(crate) fn tokenizer(&self) -> &Tokenizer {
        &self.0.tokenizer
    }
    /// Runs `f` on the model's worker pool.
    pub(crate) fn compute<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.pool.install(f)
    }
}

/// Converts a model folder into one pre-packed file that loads without repacking (see
/// `loader::prepacked`).
pub fn convert(
    src: impl AsRef<Path>,
    out: impl AsRef<Path>,
) -> Result<loader::prepacked::ConvertStats> {
    convert_with_head(src, out, HeadFormat::Native)
}

/// `convert`, also storing the output head quantised to `head` (int8 or int4): loading the file
/// with that head then maps it instead of quantising the checkpoint's head.
pub fn convert_with_head(
    src: impl AsRef<Path>,
    out: impl AsRef<Path>,
    head: HeadFormat,
) -> Result<loader::prepacked::ConvertStats> {
    convert_with(src, out, head, Isa::best().packing())
}

/// `convert_with_head`, with the ternary matrices in `packing` rather than in the layout of
/// this CPU's fastest kernel.
pub fn convert_with(
    src: impl AsRef<Path>,
    out: impl AsRef<Path>,
    head: HeadFormat,
    packing: kernels::packed::Packing,
) -> Result<loader::prepacked::ConvertStats> {
    let pool =
        kernels::pool::Pool::new(0).map_err(|e| Error::internal(format!("thread pool: {e}")))?;
    pool.install(|| loader::prepacked::convert(src.as_ref(), out.as_ref(), head, packing))
}

/// Memory a model folder and one session of `n_ctx` tokens (0 = the model's maximum) will take,
/// read from config.json and the safetensors headers only.
pub fn estimate_memory(
    path: impl AsRef<Path>,
    n_ctx: usize,
    n_batch: usize,
) -> Result<MemoryEstimate> {
    loader::estimate::estimate(&Source::Dir(path.as_ref().to_path_buf()), n_ctx, n_batch)
}
