//! The model's tokenizer (tokenizer.json through the `tokenizers` crate) and the special tokens
//! named in tokenizer_config.json. A BPE vocabulary is held by `bpe::CompactBpe` (a quarter of
//! the crate's memory for LLaMA-3's); anything else by the crate's own models.

use std::path::Path;

use serde_json::Value;

use tokenizers::{
    DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerImpl,
};

use super::bpe::CompactBpe;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::Source;

/// A token id.
pub type TokenId = u32;

type CompactTokenizer = TokenizerImpl<
    CompactBpe,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// The crate's tokenizer over one of two models.
enum Inner {
    Compact(Box<CompactTokenizer>),
    Crate(Box<tokenizers::Tokenizer>),
}

/// `$body` with `$t` bound to whichever tokenizer `$inner` holds (the two differ only in their
/// model type, so every call reads the same).
macro_rules! with_inner {
    ($inner:expr, $t:ident => $body:expr) => {
        match $inner {
            Inner::Compact($t) => $body,
            Inner::Crate($t) => $body,
        }
    };
}

impl Inner {
    /// The compact model where it takes the file, the crate's otherwise (whose error is the one
    /// reported when neither does).
    /// The crate panics on some inconsistent files (a merge whose right part lacks the
    /// `continuing_subword_prefix`): that is reported as an error like any other bad file.
    fn from_bytes(bytes: &[u8]) -> tokenizers::Result<Self> {
        if let Ok(t) = serde_json::from_slice::<CompactTokenizer>(bytes) {
            return Ok(Inner::Compact(Box::new(t)));
        }
        match std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes)) {
            Ok(t) => Ok(Inner::Crate(Box::new(t?))),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                Err(format!("the tokenizers crate could not read it ({what})").into())
            }
        }
    }
}

/// tokenizer.json plus what tokenizer_config.json adds: special token strings and the chat template.
pub struct Tokenizer {
    inner: Inner,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
    /// Other named special tokens (unk, pad) for the chat template's context.
    pub extra_special: Vec<(String, String)>,
}

/// A special-token field is a string or an `AddedToken` object with `content`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` where `default` is the one.
fn chat_template(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Reads tokenizer.json and (if present) tokenizer_config.json and chat_template.jinja.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_source(&Source::Dir(dir.to_path_buf()))
    }

    /// As `from_dir`, from any model source.
    pub fn from_source(src: &Source) -> Result<Self> {
        let bytes = src.read("tokenizer.json")?;
        let inner = Inner::from_bytes(&bytes).map_err(|e| {
            Error::invalid_model(format!("{}: {e}", src.describe("tokenizer.json")))
        })?;
        let cfg_name = "tokenizer_config.json";
        let cfg: Value = if src.exists(cfg_name) {
            serde_json::from_str(&src.read_string(cfg_name)?)
                .map_err(|e| Error::invalid_model(format!("{}: {e}", src.describe(cfg_name))))?
        } else {
            Value::Null
        };
        let template = if src.exists("chat_template.jinja") {
            Some(src.read_string("chat_template.jinja")?)
        } else {
            chat_template(cfg.get("chat_template"))
        };
        let extra_special = ["unk_token", "pad_token"]
            .iter()
            .filter_map(|k| token_string(cfg.get(*k)).map(|v| (k.to_string(), v)))
            .collect();
        Ok(Self {
            inner,
            bos_token: token_string(cfg.get("bos_token")),
            eos_token: token_string(cfg.get("eos_token")),
            chat_template: template,
            extra_special,
        })
    }

    /// Token ids of `text`. With `add_special`, the tokenizer's post-processor adds what
    /// transformers adds by default (e.g. `<|begin_of_text|>`). Special tokens written in the
    /// text are recognised as such.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<TokenId>> {
        let enc = with_inner!(&self.inner, t => t.encode(text, add_special))
            .map_err(|e| Error::new(ErrorKind::Internal, format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[TokenId], skip_special: bool) -> Result<String> {
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid_argument(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        with_inner!(&self.inner, t => t.decode(ids, skip_special))
            .map_err(|e| Error::new(ErrorKind::Internal, format!("tokenizer: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<TokenId> {
        with_inner!(&self.inner, t => t.token_to_id(token))
    }
    pub fn id_to_token(&self, id: TokenId) -> Option<String> {
        with_inner!(&self.inner, t => t.id_to_token(id))
    }
    /// Number of ids the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        with_inner!(&self.inner, t => t.get_vocab_size(true))
    }
    /// True when the vocabulary is held by `bpe::CompactBpe` (false: the crate's own model).
    pub fn uses_compact_bpe(&self) -> bool {
        matches!(self.inner, Inner::Compact(_))
    }

    /// Bytes of the compact BPE's tables, when that model is in use.
    pub fn compact_bpe_bytes(&self) -> Option<usize> {
        match &self.inner {
            Inner::Compact(t) => Some(t.get_model().table_bytes()),
            Inner::Crate(_) => None,
        }
    }

    /// True for added tokens marked special (`<|eot_id|>` and the like).
    pub fn is_special(&self, id: TokenId) -> bool {
        with_inner!(&self.inner, t => t.get_added_vocabulary().get_added_tokens_decoder())
            .get(&id)
            .is_some_and(|t| t.special)
    }
}
