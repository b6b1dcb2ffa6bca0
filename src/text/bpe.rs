//! A byte-pair-encoding model for the `tokenizers` crate that holds its vocabulary and merges
//! compactly. The crate's own `BPE` keeps the vocabulary twice as hash maps of owned strings and
//! the merges as a map of (pair → rank, id): 33 MB live for the LLaMA-3 tokenizer (128k tokens,
//! 280k merges), the largest part of a 2B model's resident memory after its weights and KV cache.
//! Here the token strings sit back to back in one buffer (looked up by binary search over ids
//! sorted by string) and each merge is 12 bytes of a hash table: 9 MB.
//!
//! Only the tokenisation step is replaced: normalisation, pre-tokenisation, added tokens,
//! post-processing and decoding stay the crate's (`TokenizerImpl` over this model). Encoding
//! follows the crate's `BPE` step for step (the same merge queue, the same ordering of ties, the
//! same unknown-token rules), and tests compare the two on every tokenizer the project has. A
//! tokenizer.json using an option this model does not implement (dropout, subword prefix or
//! suffix, ids that do not number the vocabulary 0..n) is declined, and the crate's `BPE` loads it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use tokenizers::models::bpe::BpeTrainer;
use tokenizers::{Model, Token};

/// Two token ids, hashed as one 64-bit word.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Pair(u32, u32);

impl Hash for Pair {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0) << 32 | u64::from(self.1));
    }
}

/// Multiply and fold: both halves of the pair reach the low bits that pick a bucket.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Why a tokenizer.json is left to the crate's `BPE`.
const DECLINED: &str = "not handled by the compact BPE";

/// The model. Ids are 0..n; `merges` maps a pair to its rank, `merged[rank]` is the id it makes.
pub struct CompactBpe {
    text: String,
    /// `ends[id]`: end of token `id` in `text` (it starts where `id - 1` ends).
    ends: Vec<u32>,
    /// Ids in the order of their strings.
    sorted: Vec<u32>,
    merges: HashMap<Pair, u32, BuildHasherDefault<PairHasher>>,
    merged: Vec<u32>,
    unk_token: Option<String>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
}

impl CompactBpe {
    fn token(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    fn lookup(&self, s: &str) -> Option<u32> {
        self.sorted
            .binary_search_by(|&id| self.token(id).cmp(s))
            .ok()
            .map(|i| self.sorted[i])
    }

    /// The crate's `BPE::merge_word`: symbols (id, byte length) of `w` after all merges.
    fn merge_word(&self, w: &str) -> tokenizers::Result<Vec<(u32, usize)>> {
        let mut syms: Vec<Symbol> = Vec::with_capacity(w.len());
        let mut unk: Option<(u32, usize)> = None;
        let unk_id = || -> tokenizers::Result<u32> {
            let t = self.unk_token.as_deref().expect("checked by the caller");
            self.lookup(t)
                .ok_or_else(|| format!("unk token `{t}` is not in the vocabulary").into())
        };
        for (i, c) in w.char_indices() {
            let s = &w[i..i + c.len_utf8()];
            if let Some(id) = self.lookup(s) {
                if let Some((u, len)) = unk.take() {
                    push(&mut syms, u, len);
                }
                push(&mut syms, id, s.len());
                continue;
            }
            if self.byte_fallback {
                let bytes: Option<Vec<u32>> = s
                    .bytes()
                    .map(|b| self.lookup(&format!("<{b:#04X}>")))
                    .collect();
                if let Some(bytes) = bytes {
                    for id in bytes {
                        push(&mut syms, id, 1);
                    }
                    continue;
                }
            }
            if self.unk_token.is_some() {
                unk = match unk {
                    Some((u, len)) if self.fuse_unk => Some((u, len + s.len())),
                    Some((u, len)) => {
                        push(&mut syms, u, len);
                        Some((unk_id()?, s.len()))
                    }
                    None => Some((unk_id()?, s.len())),
                };
            }
        }
        if let Some((u, len)) = unk {
            push(&mut syms, u, len);
        }
        self.merge_all(&mut syms);
        Ok(syms
            .into_iter()
            .filter(|s| s.len != 0)
            .map(|s| (s.id, s.len))
            .collect())
    }

    /// The crate's `Word::merge_all` without dropout: the lowest rank first, then the leftmost;
    /// an entry whose pair has changed since it was queued is used if the pair now there makes
    /// the same token, as the crate does.
    fn merge_all(&self, syms: &mut [Symbol]) {
        let mut queue: BinaryHeap<Reverse<(u32, usize, u32)>> = BinaryHeap::new();
        let rank_of = |a: u32, b: u32| self.merges.get(&Pair(a, b)).copied();
        for (pos, w) in syms.windows(2).enumerate() {
            if let Some(rank) = rank_of(w[0].id, w[1].id) {
                queue.push(Reverse((rank, pos, self.merged[rank as usize])));
            }
        }
        while let Some(Reverse((_, pos, new_id))) = queue.pop() {
            if syms[pos].len == 0 || syms[pos].next < 0 {
                continue;
            }
            let next = syms[pos].next as usize;
            let right = syms[next];
            match rank_of(syms[pos].id, right.id) {
                Some(r) if self.merged[r as usize] == new_id => {}
                _ => continue,
            }
            let cur = &mut syms[pos];
            cur.id = new_id;
            cur.len += right.len;
            cur.next = right.next;
            syms[next].len = 0;
            if right.next >= 0 {
                syms[right.next as usize].prev = pos as isize;
            }
            // The pairs the merged symbol now forms with its neighbours.
            let cur = syms[pos];
            let left =
                (cur.prev >= 0).then(|| (cur.prev as usize, syms[cur.prev as usize].id, cur.id));
            let right = (cur.next >= 0).then(|| (pos, cur.id, syms[cur.next as usize].id));
            for (at, a, b) in left.into_iter().chain(right) {
                if let Some(rank) = rank_of(a, b) {
                    queue.push(Reverse((rank, at, self.merged[rank as usize])));
                }
            }
        }
    }

    /// Bytes held by the tables (for tests and the memory notes).
    pub fn table_bytes(&self) -> usize {
        self.text.capacity()
            + 4 * (self.ends.capacity() + self.sorted.capacity() + self.merged.capacity())
            + self.merges.capacity() * (std::mem::size_of::<(Pair, u32)>() + 1)
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: isize,
    next: isize,
    len: usize,
}

fn push(syms: &mut Vec<Symbol>, id: u32, len: usize) {
    let n = syms.len() as isize;
    if let Some(last) = syms.last_mut() {
        last.next = n;
    }
    syms.push(Symbol {
        id,
        prev: n - 1,
        next: -1,
        len,
    });
}

impl Model for CompactBpe {
    type Trainer = BpeTrainer;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        if sequence.is_empty() {
            return Ok(vec![]);
        }
        if self.ignore_merges
            && let Some(id) = self.lookup(sequence)
        {
            return Ok(vec![Token::new(
                id,
                sequence.to_string(),
                (0, sequence.len()),
            )]);
        }
        let mut start = 0;
        Ok(self
            .merge_word(sequence)?
            .into_iter()
            .map(|(id, len)| {
                let t = Token::new(id, self.token(id).to_string(), (start, start + len));
                start += len;
                t
            })
            .collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.lookup(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        ((id as usize) < self.ends.len()).then(|| self.token(id).to_string())
    }

    fn get_vocab(&self) -> std::collections::HashMap<String, u32> {
        (0..self.ends.len() as u32)
            .map(|id| (self.token(id).to_string(), id))
            .collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.ends.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("the compact BPE model is read-only".into())
    }

    fn get_trainer(&self) -> BpeTrainer {
        BpeTrainer::default()
    }
}

/// The vocabulary object: (string, id) entries in file order.
struct VocabEntries(Vec<(String, u32)>);

impl<'de> Deserialize<'de> for VocabEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VocabEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of token strings to ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VocabEntries, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(e) = map.next_entry::<String, u32>()? {
                    v.push(e);
                }
                Ok(VocabEntries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// One merge: `"a b"` (the legacy form) or `["a", "b"]`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum MergeEntry {
    Pair(String, String),
    Legacy(String),
}

impl MergeEntry {
    fn parts(&self) -> Option<(&str, &str)> {
        match self {
            MergeEntry::Pair(a, b) => Some((a, b)),
            MergeEntry::Legacy(s) => {
                let mut it = s.split(' ');
                let (a, b) = (it.next()?, it.next()?);
                it.next().is_none().then_some((a, b))
            }
        }
    }
}

/// The vocabulary laid out by id; `None` unless the ids are exactly 0..n, once each.
fn layout(entries: Vec<(String, u32)>) -> Option<(String, Vec<u32>, Vec<u32>)> {
    let n = entries.len();
    let mut by_id: Vec<Option<String>> = vec![None; n];
    for (s, id) in entries {
        let slot = by_id.get_mut(id as usize)?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(s);
    }
    let mut text = String::with_capacity(by_id.iter().flatten().map(String::len).sum());
    let mut ends = Vec::with_capacity(n);
    for s in by_id {
        text.push_str(&s?);
        ends.push(u32::try_from(text.len()).ok()?);
    }
    let mut sorted: Vec<u32> = (0..n as u32).collect();
    let token = |id: u32| {
        let i = id as usize;
        &text[if i == 0 { 0 } else { ends[i - 1] as usize }..ends[i] as usize]
    };
    sorted.sort_unstable_by(|&a, &b| token(a).cmp(token(b)));
    // A string twice under two ids: the crate's map would keep one of them.
    if sorted.windows(2).any(|w| token(w[0]) == token(w[1])) {
        return None;
    }
    Some((text, ends, sorted))
}

impl<'de> Deserialize<'de> for CompactBpe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CompactBpe;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a BPE model")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CompactBpe, A::Error> {
                let declined = || de::Error::custom(DECLINED);
                let (mut vocab, mut merges) = (None, None);
                let (mut unk_token, mut fuse_unk, mut byte_fallback, mut ignore_merges) =
                    (None, false, false, false);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => {
                            if map.next_value::<String>()? != "BPE" {
                                return Err(declined());
                            }
                        }
                        "dropout" => {
                            if map.next_value::<Option<f32>>()?.is_some_and(|p| p != 0.0) {
                                return Err(declined());
                            }
                        }
                        "continuing_subword_prefix" | "end_of_word_suffix" => {
                            if map.next_value::<Option<String>>()?.is_some() {
                                return Err(declined());
                            }
                        }
                        "unk_token" => unk_token = map.next_value()?,
                        "fuse_unk" => fuse_unk = map.next_value::<Option<bool>>()?.unwrap_or(false),
                        "byte_fallback" => {
                            byte_fallback = map.next_value::<Option<bool>>()?.unwrap_or(false)
                        }
                        "ignore_merges" => {
                            ignore_merges = map.next_value::<Option<bool>>()?.unwrap_or(false)
                        }
                        "vocab" => vocab = Some(map.next_value::<VocabEntries>()?.0),
                        "merges" => merges = Some(map.next_value::<Vec<MergeEntry>>()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                let (vocab, merges) = vocab.zip(merges).ok_or_else(declined)?;
                let (text, ends, sorted) = layout(vocab).ok_or_else(declined)?;
                // The crate reads a list of one form only, and skips "#version" lines in the
                // legacy one.
                let legacy = matches!(merges.first(), Some(MergeEntry::Legacy(_)));
                if merges
                    .iter()
                    .any(|e| matches!(e, MergeEntry::Legacy(_)) != legacy)
                {
                    return Err(declined());
                }
                let n = merges.len();
                let merges = merges
                    .iter()
                    .filter(|e| !matches!(e, MergeEntry::Legacy(s) if s.starts_with("#version")));
                // A hash index for the three lookups of each merge while loading (a binary
                // search each added 0.25 s to loading LLaMA-3's 280k merges); dropped once loaded.
                let index: HashMap<&str, u32> = (0..ends.len())
                    .map(|i| {
                        let start = if i == 0 { 0 } else { ends[i - 1] as usize };
                        (&text[start..ends[i] as usize], i as u32)
                    })
                    .collect();
                let mut pairs: HashMap<Pair, u32, BuildHasherDefault<PairHasher>> =
                    HashMap::with_capacity_and_hasher(n, Default::default());
                let mut merged = Vec::with_capacity(n);
                let mut joined = String::new();
                for (rank, e) in merges.enumerate() {
                    let (a, b) = e.parts().ok_or_else(declined)?;
                    joined.clear();
                    joined.push_str(a);
                    joined.push_str(b);
                    let ids = (index.get(a), index.get(b), index.get(joined.as_str()));
                    let (Some(&a), Some(&b), Some(&new_id)) = ids else {
                        return Err(declined());
                    };
                    // A pair listed twice keeps its last rank, as the crate's map does.
                    pairs.insert(Pair(a, b), rank as u32);
                    merged.push(new_id);
                }
                drop(index);
                let m = CompactBpe {
                    text,
                    ends,
                    sorted,
                    merges: pairs,
                    merged,
                    unk_token,
                    fuse_unk,
                    byte_fallback,
                    ignore_merges,
                };
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}
