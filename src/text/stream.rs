//! Streaming detokenisation. Tokens do not map to whole characters (a byte-level BPE token can
//! hold half of a UTF-8 sequence), so text is released only once it is complete: each step
//! decodes a short window and emits what grew, holding back while the tail is a replacement
//! character produced by an unfinished sequence.

use super::tokenizer::{TokenId, Tokenizer};
use crate::error::Result;

/// Turns a stream of token ids into a stream of whole-character text pieces.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    tokens: Vec<TokenId>,
    /// Start of the window decoded for context (keeps leading-space rules right).
    prefix: usize,
    /// Tokens before this index have been emitted.
    read: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> Result<String> {
        self.tokens.push(id);
        let before = tok.decode(&self.tokens[self.prefix..self.read], true)?;
        let now = tok.decode(&self.tokens[self.prefix..], true)?;
        match now.get(before.len()..) {
            Some(piece) if !piece.is_empty() && !now.ends_with('\u{FFFD}') => {
                let piece = piece.to_string();
                self.prefix = self.read;
                self.read = self.tokens.len();
                Ok(piece)
            }
            _ => Ok(String::new()),
        }
    }

    /// Whatever is still held back (an unfinished sequence decodes to U+FFFD here).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let before = tok.decode(&self.tokens[self.prefix..self.read], true)?;
        let now = tok.decode(&self.tokens[self.prefix..], true)?;
        self.prefix = self.tokens.len();
        self.read = self.tokens.len();
        Ok(now.get(before.len()..).unwrap_or_default().to_string())
    }
}
