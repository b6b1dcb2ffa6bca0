#!/usr/bin/env python3
"""Writes tests/data/llama3_tokenizer.json: what Python `tokenizers` and transformers produce with
the real LLaMA-3 tokenizer (BitNet b1.58 2B4T's), for the Rust tests to match.

Exact command (from the repository root):

    bash scripts/fetch_llama3_tokenizer.sh
    pip install tokenizers==0.23.3 transformers==5.23.0
    python3 tools/make_tokenizer_expectations.py
"""

import json
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from make_fixtures import BITNET_2B4T_CHAT_TEMPLATE

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / ".cache" / "llama3-tokenizer"

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  \n\nand\ttabs",
    "日本語のテキストも正しく分割されますか？東京は晴れです。",
    "Emoji: 🙂👍🏽🚀 and a family 👨‍👩‍👧 and flags 🇯🇵",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "Numbers 1234567 3.14159 -42 and 'quotes' \"double\" don't won't I'm",
    "<|begin_of_text|>special <|eot_id|> tokens in text",
]

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "  What is BitNet? "},
    {"role": "assistant", "content": "A ternary LLM."},
    {"role": "user", "content": "日本語で説明して 🙂"},
]


def main():
    tok = Tokenizer.from_file(str(SRC / "tokenizer.json"))
    encodings = [{"text": t, "ids": tok.encode(t, add_special_tokens=True).ids} for t in TEXTS]
    fast = PreTrainedTokenizerFast(tokenizer_file=str(SRC / "tokenizer.json"),
                                   bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    chat = fast.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True,
                                    chat_template=BITNET_2B4T_CHAT_TEMPLATE)
    chat_ids = fast.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True,
                                        chat_template=BITNET_2B4T_CHAT_TEMPLATE, return_dict=False)
    out = {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "encodings": encodings,
           "chat": {"template": BITNET_2B4T_CHAT_TEMPLATE, "messages": MESSAGES, "add_generation_prompt": True,
                    "text": chat, "ids": list(chat_ids)}}
    (ROOT / "tests" / "data" / "llama3_tokenizer.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
