//! Text in and out: the tokenizer, the chat template, streaming detokenisation and stop strings.

pub mod bpe;
pub mod chat;
pub mod stop;
pub mod stream;
pub mod tokenizer;
