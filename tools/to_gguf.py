#!/usr/bin/env python3
"""Writes a BitNet b1.58 Hugging Face folder as an F16 GGUF file that llama.cpp (`--arch bitnet`) or
ik_llama.cpp (`--arch bitnet-25`) can quantise with their own `llama-quantize` (TQ2_0 / TQ1_0,
IQ2_BN / IQ1_BN) and time with their own `llama-bench`. Used only for the side-by-side benchmark
in docs/BENCHMARKS.md: neither engine's converter reads the published packed-uint8 2B4T format.

Each ternary projection is written as value × weight_scale (so every row holds 0 and ±scale, which
both engines' ternary quantisers recover exactly); embeddings and norms as F16. The head is tied,
as in 2B4T. RoPE weights are not permuted and llama.cpp's `bitnet` graph uses SiLU where 2B4T uses
ReLU²: the file is for timing, not for text (the benchmark model has random weights anyway).

Exact command (from the repository root; ~4.8 GB written, ~2 minutes):

    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf==0.19.0 numpy
    /tmp/gguf-venv/bin/python tools/to_gguf.py --model /tmp/bitnet-2b4t-random --arch bitnet-25 --out /tmp/2b-ik-f16.gguf
"""

import argparse
import json
import struct
from pathlib import Path

import gguf
import numpy as np


def read_safetensors(path: Path):
    """name -> (dtype, shape, memmapped bytes), without torch."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    n = struct.unpack("<Q", bytes(raw[:8]))[0]
    header = json.loads(bytes(raw[8:8 + n]))
    header.pop("__metadata__", None)
    base = 8 + n
    return {k: (v["dtype"], v["shape"], raw[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
            for k, v in header.items()}


def to_f32(dtype: str, shape, data) -> np.ndarray:
    if dtype == "BF16":
        return (np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if dtype == "F16":
        return np.frombuffer(data, dtype=np.float16).astype(np.float32).reshape(shape)
    if dtype == "F32":
        return np.frombuffer(data, dtype=np.float32).reshape(shape)
    raise SystemExit(f"unsupported dtype {dtype}")


def unpack_ternary(packed: np.ndarray) -> np.ndarray:
    """HF packed layout: bits 2i..2i+1 of packed row r hold row i*(rows/4)+r, code = value+1."""
    return np.concatenate([((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)], axis=0)


LINEARS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
         "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="Hugging Face BitNet folder (packed uint8 or float weights)")
    ap.add_argument("--arch", required=True, choices=["bitnet", "bitnet-25"])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    folder = Path(a.model)
    cfg = json.loads((folder / "config.json").read_text())
    tensors = read_safetensors(folder / "model.safetensors")
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])

    w = gguf.GGUFWriter(a.out, a.arch)
    w.add_name("bitnet-b1.58-2b4t-shaped")
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(h)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(h // heads)
    w.add_rope_freq_base(cfg.get("rope_theta", 500000.0))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    special = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    vocab.update(special)
    n_vocab = cfg["vocab_size"]
    names = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, i in vocab.items():
        if i < n_vocab:
            names[i] = text
            types[i] = gguf.TokenType.CONTROL if text in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(names)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.get("bos_token_id", 128000))
    eos = cfg.get("eos_token_id", 128001)
    w.add_eos_token_id(eos[0] if isinstance(eos, list) else eos)

    def plain(name):
        return to_f32(*tensors[name]).astype(np.float16)

    w.add_tensor("token_embd.weight", plain("model.embed_tokens.weight"))
    w.add_tensor("output_norm.weight", plain("model.norm.weight").astype(np.float32))
    for i in range(layers):
        p = f"model.layers.{i}"
        for hf, gg in NORMS.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", plain(f"{p}.{hf}.weight").astype(np.float32))
        for hf, gg in LINEARS.items():
            dtype, shape, data = tensors[f"{p}.{hf}.weight"]
            if dtype == "U8":
                q = unpack_ternary(np.frombuffer(data, dtype=np.uint8).reshape(shape))
                scale = float(to_f32(*tensors[f"{p}.{hf}.weight_scale"]).reshape(-1)[0])
                value = (q.astype(np.float32) * scale).astype(np.float16)
            else:
                value = to_f32(dtype, shape, data).astype(np.float16)
            w.add_tensor(f"blk.{i}.{gg}.weight", value)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
