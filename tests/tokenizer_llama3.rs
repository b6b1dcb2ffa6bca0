//! The real LLaMA-3 tokenizer (BitNet b1.58 2B4T's), fetched by scripts/fetch_llama3_tokenizer.sh:
//! token ids and the 2B4T chat template must equal what Python tokenizers / transformers give
//! (tests/data/llama3_tokenizer.json, written by tools/make_tokenizer_expectations.py).

use std::path::PathBuf;

use bit_ttt::__internal::text::chat;
use bit_ttt::__internal::text::stream::Detokenizer;
use bit_ttt::__internal::text::tokenizer::Tokenizer;
use bit_ttt::ChatMessage;
use serde_json::Value;

/// The fetched tokenizer folder. Under CI a missing tokenizer is a failure, never a skip.
fn tokenizer_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BIT_TTT_LLAMA3_TOKENIZER")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/llama3-tokenizer")))
        .filter(|d| d.join("tokenizer.json").exists());
    if dir.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the LLaMA-3 tokenizer is missing: run scripts/fetch_llama3_tokenizer.sh"
        );
        eprintln!("SKIPPED: LLaMA-3 tokenizer not fetched (run scripts/fetch_llama3_tokenizer.sh)");
    }
    dir
}

fn expected() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama3_tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn ids_match_python_tokenizers() {
    let Some(dir) = tokenizer_dir() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let exp = expected();
    assert_eq!(
        tok.vocab_size(),
        exp["vocab_size"].as_u64().unwrap() as usize
    );
    for e in exp["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&e["ids"]), "{text:?}");
    }
}

#[test]
fn bitnet_chat_template_matches_transformers() {
    let Some(dir) = tokenizer_dir() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let c = &expected()["chat"];
    let messages: Vec<ChatMessage> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let special = [("bos_token".to_string(), tok.bos_token.clone().unwrap())];
    let text = chat::render(c["template"].as_str().unwrap(), &messages, true, &special).unwrap();
    assert_eq!(text, c["text"].as_str().unwrap());
    // transformers tokenizes a rendered chat without adding special tokens again.
    assert_eq!(tok.encode(&text, false).unwrap(), ids(&c["ids"]));
}

#[test]
fn streaming_detokenizer_emits_whole_characters() {
    let Some(dir) = tokenizer_dir() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    for e in expected()["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let ids = tok.encode(text, false).unwrap();
        let mut d = Detokenizer::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = d.push(&tok, id).unwrap();
            assert!(
                !piece.contains('\u{FFFD}'),
                "partial character emitted for {text:?}: {piece:?}"
            );
            out += &piece;
        }
        out += &d.flush(&tok).unwrap();
        assert_eq!(out, tok.decode(&ids, true).unwrap(), "{text:?}");
    }
}
