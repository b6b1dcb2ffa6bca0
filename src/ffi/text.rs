//! Tokenizer and chat template.

use std::ffi::c_char;

use super::boundary::{call, handle};
use super::model::bit_ttt_model;
use super::status::*;
use super::strings::{bit_ttt_string, items_out, slice_in, str_in, string_in, text_out};
use crate::ChatMessage;

/// One chat message for bit_ttt_chat_apply_template.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bit_ttt_chat_message {
    /// "system", "user", "assistant", ...
    pub role: bit_ttt_string,
    pub content: bit_ttt_string,
}

/// Token ids of `text`. `add_special` non-zero adds what the tokenizer adds by default (BOS).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_tokenize(
    model: *const bit_ttt_model,
    text: *const c_char,
    text_len: usize,
    add_special: u8,
    tokens: *mut i32,
    cap: usize,
    out_len: *mut usize,
) -> bit_ttt_status {
    call(|| {
        let m = &handle(model, "model")?.model;
        let text = str_in(text, text_len, "text")?;
        let ids: Vec<i32> = m
            .tokenize(text, add_special != 0)?
            .into_iter()
            .map(|t| t as i32)
            .collect();
        items_out(&ids, tokens, cap, out_len)
    })
}

/// Text of token ids (special tokens left out).
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_detokenize(
    model: *const bit_ttt_model,
    tokens: *const i32,
    n_tokens: usize,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> bit_ttt_status {
    call(|| {
        let m = &handle(model, "model")?.model;
        let ids = slice_in(tokens, n_tokens, "tokens")?
            .iter()
            .map(|&t| {
                u32::try_from(t).map_err(|_| FfiError::invalid(format!("token id {t} is negative")))
            })
            .collect::<FfiResult<Vec<_>>>()?;
        text_out(&m.detokenize(&ids)?, buf, cap, out_len)
    })
}

/// Renders the model's chat template for `messages`; `add_generation_prompt` non-zero ends with
/// the assistant's turn opening.
#[unsafe(no_mangle)]
pub extern "C" fn bit_ttt_chat_apply_template(
    model: *const bit_ttt_model,
    messages: *const bit_ttt_chat_message,
    n_messages: usize,
    add_generation_prompt: u8,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> bit_ttt_status {
    call(|| {
        let m = &handle(model, "model")?.model;
        let msgs = slice_in(messages, n_messages, "messages")?
            .iter()
            .map(|msg| {
                Ok(ChatMessage::new(
                    string_in(&msg.role, "role")?,
                    string_in(&msg.content, "content")?,
                ))
            })
            .collect::<FfiResult<Vec<_>>>()?;
        text_out(
            &m.apply_chat_template(&msgs, add_generation_prompt != 0)?,
            buf,
            cap,
            out_len,
        )
    })
}
