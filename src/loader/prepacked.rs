//! The pre-packed format written by `bit-ttt convert`: one safetensors file holding the ternary
//! weights already in the kernels' layout (`{module}.packed`, `{module}.gamma`), every other
//! tensor as in the checkpoint, and the model's text files (config, tokenizer, chat template)
//! in its metadata. Loading it maps the file and uses the weights in place: no repacking, no
//! second copy.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use safetensors::SafeTensors;
use serde_json::{Value, json};

use super::heads;
use super::safetensors::TensorStore;
use super::{build_linear, fingerprint, packed_name, projection_shape, weight_files};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::packed::Packing;
use crate::storage::DType;
use crate::storage::Source;
use crate::storage::map_file;
use crate::transformer::head::{HeadFormat, StoredHead, quantise};
use crate::transformer::linear::Linear;

/// Metadata key naming the format; its value is FORMAT, or FORMAT_BASE3 for a file whose
/// ternary matrices are in the base-3 layout (`{module}.packed3`, which a reader of FORMAT
/// alone would not find).
pub const FORMAT_KEY: &str = "bit_ttt.format";
pub const FORMAT: &str = "packed-v1";
pub const FORMAT_BASE3: &str = "packed-v2";
const FINGERPRINT_KEY: &str = "bit_ttt.fingerprint";
const TEXT_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// What `convert` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertStats {
    pub tensors: usize,
    pub bytes: u64,
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::U8 => "U8",
        DType::I8 => "I8",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F32 => "F32",
    }
}

/// One output tensor: its name, type, shape, and how to produce its bytes when its turn comes.
struct Planned<'a> {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Box<dyn Fn() -> Result<Cow<'a, [u8]>> + 'a>,
}

/// Converts the model folder `src` into a pre-packed file at `out`, one tensor at a time (the
/// largest repacked matrix, and a quantised head, are the most held in memory; tensors kept as
/// they are go from the input's mapping to the file), written to a temporary file and renamed. With
/// `head` int8 or int4 the file also holds the output head quantised that way, which a load
/// asking for that head then maps instead of quantising it.
/// Ternary matrices are written in `packing` (a load on a CPU whose kernel reads the other
/// layout repacks them).
pub fn convert(src: &Path, out: &Path, head: HeadFormat, packing: Packing) -> Result<ConvertStats> {
    let source = Source::Dir(src.to_path_buf());
    let config_text = source.read_string("config.json")?;
    let cfg =
        Config::from_json(&config_text).map_err(|e| e.context(source.describe("config.json")))?;
    let mut store = TensorStore::default();
    for file in weight_files(&source)? {
        store.add_backing(&source.describe(&file), source.backing(&file)?)?;
    }
    let mut metadata = HashMap::new();
    let format = match packing {
        Packing::Bits2 => FORMAT,
        Packing::Base3 => FORMAT_BASE3,
    };
    metadata.insert(FORMAT_KEY.to_string(), format.to_string());
    metadata.insert(
        FINGERPRINT_KEY.to_string(),
        format!("{:016x}", fingerprint(&config_text, &store)),
    );
    for name in TEXT_FILES {
        if source.exists(name) {
            metadata.insert(name.to_string(), source.read_string(name)?);
        }
    }

    let mut names: Vec<&str> = store.names().collect();
    names.sort_unstable();
    // Quantised once, when its first tensor is written.
    let quantised: OnceCell<Option<StoredHead>> = OnceCell::new();
    let head_name = match cfg.tie_word_embeddings {
        true => "model.embed_tokens.weight",
        false => "lm_head.weight",
    };
    let head_matrix =
        super::float_matrix(store.require(head_name)?, cfg.vocab_size, cfg.hidden_size)?;
    let mut plan: Vec<Planned> = Vec::new();
    for name in names {
        let t = store.get(name).expect("listed tensor");
        let module = name.strip_suffix(".weight");
        if name.ends_with(".weight_scale") {
            continue; // folded into `.gamma`
        }
        if let Some((rows, cols)) = module.and_then(|m| projection_shape(&cfg, m)) {
            let module = module.expect("projection name").to_string();
            let build = move |store, cfg, module: &str| {
                build_linear(store, cfg, module, (rows, cols), packing)
            };
            if let Linear::Ternary(lin) = build(&store, &cfg, &module)? {
                // Built again when written: holding every packed matrix would defeat streaming.
                let (cfg, store) = (&cfg, &store);
                let m2 = module.clone();
                plan.push(Planned {
                    name: format!("{module}.{}", packed_name(packing)),
                    dtype: DType::U8,
                    shape: vec![rows, lin.packed.row_bytes()],
                    bytes: Box::new(move || match build(store, cfg, &m2)? {
                        Linear::Ternary(l) => Ok(Cow::Owned(l.packed.data.to_vec())),
                        Linear::Dense(_) => Err(Error::internal("projection changed kind")),
                    }),
                });
                let gamma = lin.gamma;
                plan.push(Planned {
                    name: format!("{module}.gamma"),
                    dtype: DType::F32,
                    shape: vec![1],
                    bytes: Box::new(move || Ok(Cow::Owned(gamma.to_le_bytes().to_vec()))),
                });
                continue;
            }
        }
        plan.push(Planned {
            name: name.to_string(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            // Written from the mapping: the embedding (the largest tensor) is never copied.
            bytes: Box::new(move || Ok(Cow::Borrowed(&t.data[..]))),
        });
    }

    let (quantised, head_matrix) = (&quantised, &head_matrix);
    for (i, (name, dtype, shape)) in heads::layout(head, cfg.vocab_size, cfg.hidden_size)
        .into_iter()
        .enumerate()
    {
        plan.push(Planned {
            name: name.to_string(),
            dtype,
            shape,
            bytes: Box::new(move || {
                let q = quantised.get_or_init(|| quantise(head_matrix.view(), head));
                Ok(q.as_ref().expect("a quantised format").part_bytes(i))
            }),
        });
    }
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    for p in &plan {
        let n = p.shape.iter().product::<usize>() * p.dtype.size();
        header.insert(
            p.name.clone(),
            json!({"dtype": dtype_name(p.dtype), "shape": p.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut header_bytes =
        serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::internal(e.to_string()))?;
    header_bytes.resize(header_bytes.len().div_ceil(8) * 8, b' ');

    let tmp = out.with_extension("tmp");
    let io = |e: std::io::Error| Error::io(out, &e);
    let mut w = BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    w.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header_bytes).map_err(io)?;
    for p in &plan {
        let bytes = (p.bytes)()?;
        debug_assert_eq!(
            bytes.len(),
            p.shape.iter().product::<usize>() * p.dtype.size()
        );
        w.write_all(&bytes).map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)?;
    Ok(ConvertStats {
        tensors: plan.len(),
        bytes: 8 + header_bytes.len() as u64 + offset as u64,
    })
}

/// True when `path` is a file written by `convert`.
pub fn is_prepacked(path: &Path) -> bool {
    path.is_file()
}

/// Opens a pre-packed file: its text files come from the metadata.
pub fn open(path: &Path) -> Result<(Source, u64)> {
    let map = map_file(path)?;
    let bad = |what: String| Error::invalid_model(format!("{}: {what}", path.display()));
    let (_, meta) = SafeTensors::read_metadata(&map)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let kv = meta
        .metadata()
        .as_ref()
        .ok_or_else(|| bad("no metadata: not a `bit-ttt convert` file".into()))?;
    match kv.get(FORMAT_KEY).map(String::as_str) {
        Some(FORMAT | FORMAT_BASE3) => {}
        Some(other) => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: pre-packed format `{other}` is not supported (this library reads {FORMAT} and {FORMAT_BASE3})",
                    path.display()
                ),
            ));
        }
        None => {
            return Err(bad(format!(
                "no `{FORMAT_KEY}` in the metadata: not a `bit-ttt convert` file"
            )));
        }
    }
    let print = kv
        .get(FINGERPRINT_KEY)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| bad(format!("missing or invalid `{FINGERPRINT_KEY}`")))?;
    let texts: BTreeMap<String, Arc<Vec<u8>>> = TEXT_FILES
        .iter()
        .filter_map(|n| {
            kv.get(*n)
                .map(|v| (n.to_string(), Arc::new(v.clone().into_bytes())))
        })
        .collect();
    Ok((
        Source::Packed {
            file: path.to_path_buf(),
            texts,
        },
        print,
    ))
}
