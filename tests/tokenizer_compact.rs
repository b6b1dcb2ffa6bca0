//! The compact BPE model (`text::bpe`) against the `tokenizers` crate's own: the same ids, tokens
//! and decoded text on every tokenizer the project has (the fixtures', the sample model's, the
//! real LLaMA-3 one), on corpora and random text; the unknown-token and byte-fallback rules on a
//! tokenizer written here; files it declines go to the crate's model.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use bit_ttt::__internal::text::tokenizer::Tokenizer;
use proptest::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fetched LLaMA-3 tokenizer; under CI a missing one is a failure, never a skip.
fn llama3_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BIT_TTT_LLAMA3_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/llama3-tokenizer"));
    if dir.join("tokenizer.json").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the LLaMA-3 tokenizer is missing: run scripts/fetch_llama3_tokenizer.sh"
    );
    eprintln!("SKIPPED: LLaMA-3 tokenizer not fetched (run scripts/fetch_llama3_tokenizer.sh)");
    None
}

/// Text of many kinds: prose, markup, code, numbers, whitespace runs, scripts and emoji,
/// special tokens written in the text, and a long run of one letter (many merges in one word).
fn corpus() -> Vec<String> {
    let mut texts: Vec<String> = ["README.md", "docs/BENCHMARKS.md", "docs/ADAPT.md"]
        .iter()
        .map(|p| std::fs::read_to_string(root().join(p)).unwrap())
        .collect();
    let heldout = root().join("models/sample/heldout");
    let mut files: Vec<_> = std::fs::read_dir(&heldout)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    texts.extend(
        files
            .iter()
            .take(3)
            .map(|p| std::fs::read_to_string(p).unwrap()),
    );
    texts.push(std::fs::read_to_string(root().join("src/text/bpe.rs")).unwrap());
    texts.extend(
        [
            "",
            " ",
            "\n\n\n  \t\r\n x",
            "Hello, world! It's 2026-12-04; 3.14159 × 10⁹ = 3141590000.",
            "日本語のテキストと絵文字 🦀🚀👩‍👩‍👧 and Ünïcödé, Ελληνικά, русский, עברית, العربية",
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
            "fn main() {\n    println!(\"{:?}\", vec![1, 2, 3]);\n}\n",
            "    indented\n\ttabbed   trailing   \n",
        ]
        .map(String::from),
    );
    texts.push("a".repeat(1000));
    texts.push("ab".repeat(300) + &"🦀".repeat(50));
    texts
}

/// Both models of one tokenizer.json: ours through `Tokenizer`, the crate's directly.
fn pair(dir: &Path) -> (Tokenizer, tokenizers::Tokenizer) {
    let ours = Tokenizer::from_dir(dir).unwrap();
    let theirs = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    (ours, theirs)
}

fn assert_same(dir: &Path, texts: &[String]) {
    let (ours, theirs) = pair(dir);
    assert!(
        ours.uses_compact_bpe(),
        "{}: compact BPE not used",
        dir.display()
    );
    let n = theirs.get_vocab_size(true);
    assert_eq!(ours.vocab_size(), n);
    for id in 0..n as u32 {
        let tok = theirs.id_to_token(id);
        assert_eq!(ours.id_to_token(id), tok, "id {id}");
        let tok = tok.unwrap();
        assert_eq!(ours.token_to_id(&tok), theirs.token_to_id(&tok), "{tok:?}");
        for skip in [false, true] {
            assert_eq!(
                ours.decode(&[id], skip).unwrap(),
                theirs.decode(&[id], skip).unwrap()
            );
        }
    }
    for text in texts {
        for special in [false, true] {
            let want = theirs.encode(text.as_str(), special).unwrap();
            let got = ours.encode(text, special).unwrap();
            assert_eq!(
                got,
                want.get_ids(),
                "{}: {:?}",
                dir.display(),
                &text[..text.len().min(80)]
            );
            assert_eq!(
                ours.decode(&got, false).unwrap(),
                theirs.decode(&got, false).unwrap()
            );
        }
    }
}

#[test]
fn fixture_and_sample_tokenizers_equal_the_crate() {
    let texts = corpus();
    assert_same(&root().join("tests/fixtures/bitnet_packed_auto"), &texts);
    assert_same(&root().join("models/sample"), &texts);
}

#[test]
fn llama3_tokenizer_equals_the_crate_and_holds_a_third_of_its_memory() {
    let Some(dir) = llama3_dir() else { return };
    assert_same(&dir, &corpus());
    let bytes = Tokenizer::from_dir(&dir)
        .unwrap()
        .compact_bpe_bytes()
        .unwrap();
    // The crate's BPE holds ~33 MB for this vocabulary (two string maps and the merge map).
    assert!(bytes < 11 << 20, "compact tables take {bytes} bytes");
}

/// A tokenizer.json with a BPE model made of `model` (JSON fields) and the byte-level parts off:
/// whitespace pre-tokenizer, no decoder.
fn write_tokenizer(dir: &Path, model: serde_json::Value) {
    let mut m = serde_json::json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
        "ignore_merges": false,
        "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "bc": 5, "abc": 6, "<0x78>": 7,
                  "<0xC3>": 8, "<0xA9>": 9, "ca": 10, "cab": 11},
        "merges": ["a b", "b c", "ab c", "c a", "c ab"]
    });
    for (k, v) in model.as_object().unwrap() {
        m[k] = v.clone();
    }
    let t = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<unk>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null, "model": m
    });
    std::fs::write(dir.join("tokenizer.json"), t.to_string()).unwrap();
}

#[test]
fn unknown_characters_and_byte_fallback_follow_the_crate() {
    let texts: Vec<String> = [
        "abc cab abcab",
        "x",
        "ax xa",
        "axxb",
        "é",
        "aéb",
        "xéx",
        "zz abz",
        "abcabcabcab ca",
        "cabc bcab aab",
    ]
    .map(String::from)
    .to_vec();
    let dir = tempfile::TempDir::new().unwrap();
    let cases = [
        serde_json::json!({}),
        serde_json::json!({"unk_token": "<unk>"}),
        serde_json::json!({"unk_token": "<unk>", "fuse_unk": true}),
        serde_json::json!({"unk_token": "<unk>", "byte_fallback": true}),
        serde_json::json!({"byte_fallback": true}),
        serde_json::json!({"ignore_merges": true}),
        serde_json::json!({"merges": [["a", "b"], ["b", "c"], ["ab", "c"], ["c", "a"], ["c", "ab"]]}),
        serde_json::json!({"merges": ["#version: 0.2", "b c", "a b", "ab c", "c a", "c ab"]}),
        // A pair listed twice keeps its last rank.
        serde_json::json!({"merges": ["a b", "b c", "ab c", "a b", "c a", "c ab"]}),
        // Two pairs making one token ("ab"+"c" and "a"+"bc"): a queued merge whose pair changed.
        serde_json::json!({"merges": ["b c", "a b", "a bc", "ab c", "c a", "c ab"]}),
    ];
    for case in cases {
        write_tokenizer(dir.path(), case);
        assert_same(dir.path(), &texts);
    }
}

#[test]
fn declined_files_are_read_by_the_crate() {
    let dir = tempfile::TempDir::new().unwrap();
    for case in [
        // Dropout 1.0: no merge ever taken, so the result is still deterministic.
        serde_json::json!({"dropout": 1.0}),
        serde_json::json!({"continuing_subword_prefix": "##",
                           "vocab": {"<unk>": 0, "a": 1, "b": 2, "##b": 3, "c": 4, "##c": 5,
                                     "ab": 6, "abc": 7},
                           "merges": ["a ##b", "ab ##c"]}),
        serde_json::json!({"end_of_word_suffix": "</w>"}),
        // Ids that skip a number.
        serde_json::json!({"vocab": {"<unk>": 0, "a": 1, "b": 3, "ab": 4, "abc": 6, "c": 7,
                                     "bc": 8, "ca": 10, "cab": 11}}),
    ] {
        write_tokenizer(dir.path(), case.clone());
        let (ours, theirs) = pair(dir.path());
        assert!(!ours.uses_compact_bpe(), "{case}");
        let want = theirs.encode("abc cab", false).unwrap();
        assert_eq!(ours.encode("abc cab", false).unwrap(), want.get_ids());
    }
    // A merge whose right part lacks the subword prefix: the crate panics on it; an error here.
    write_tokenizer(
        dir.path(),
        serde_json::json!({"continuing_subword_prefix": "##", "merges": ["a b"]}),
    );
    let err = Tokenizer::from_dir(dir.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    // A merge naming a token outside the vocabulary: the crate's error, as before.
    write_tokenizer(dir.path(), serde_json::json!({"merges": ["a q"]}));
    let err = Tokenizer::from_dir(dir.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

/// The sample model's and the LLaMA-3 tokenizers, loaded once for the random cases.
static LOADED: LazyLock<Vec<(Tokenizer, tokenizers::Tokenizer)>> = LazyLock::new(|| {
    [root().join("models/sample")]
        .into_iter()
        .chain(llama3_dir())
        .map(|d| pair(&d))
        .collect()
});

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random text from ASCII, Latin-1, CJK, emoji, whitespace and special-token pieces.
    #[test]
    fn random_text_encodes_as_the_crate_does(
        parts in proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9 ,.!?'\"-]{1,12}",
                "[\\u{a0}-\\u{17f}]{1,6}",
                "[\\u{3040}-\\u{30ff}\\u{4e00}-\\u{4e80}]{1,5}",
                "[\\u{1f300}-\\u{1f64f}]{1,3}",
                "[ \\t\\r\\n]{1,5}",
                Just("<|eot_id|>".to_string()),
                Just("<|begin_of_text|>".to_string()),
            ],
            0..24,
        )
    ) {
        let text: String = parts.concat();
        for (ours, theirs) in LOADED.iter() {
            for special in [false, true] {
                let want = theirs.encode(text.as_str(), special).unwrap();
                prop_assert_eq!(ours.encode(&text, special).unwrap(), want.get_ids());
            }
        }
    }
}
