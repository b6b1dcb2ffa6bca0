#!/usr/bin/env python3
"""Writes a BitNet b1.58 model with exactly the 2B4T architecture and random ternary weights,
in the published Hugging Face format (packed uint8 + bf16 weight_scale, bf16 embedding and norms,
tied head, autobitlinear/offline), for benchmarks. Streams tensor by tensor: little RAM needed.

Exact command (from the repository root; ~1.2 GB written, about a minute):

    bash scripts/fetch_llama3_tokenizer.sh
    pip install numpy
    python3 tools/make_random_bitnet.py --out /tmp/bitnet-2b4t-random

Smaller variants of the same block for quick runs: --layers 4, --hidden 1024 --ffn 2752 --heads 8 --kv-heads 2.
"""

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def bf16_bytes(x: np.ndarray) -> bytes:
    u = x.astype(np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
    return rounded.astype(np.uint16).tobytes()


def packed_ternary(rng, rows, cols) -> bytes:
    codes = rng.integers(0, 3, size=(4, rows // 4, cols), dtype=np.uint8)
    packed = codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)
    return packed.tobytes()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=2560)
    ap.add_argument("--ffn", type=int, default=6912)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--kv-heads", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    h, f, hd = a.hidden, a.ffn, a.hidden // a.heads
    kv = a.kv_heads * hd

    # (name, dtype, shape, producer) in file order.
    plan = [("model.embed_tokens.weight", "BF16", [a.vocab, h],
             lambda: b"".join(bf16_bytes(rng.standard_normal((min(8192, a.vocab - i), h)) * 0.02)
                              for i in range(0, a.vocab, 8192)))]
    for i in range(a.layers):
        p = f"model.layers.{i}"
        for name, rows, cols in [("self_attn.q_proj", h, h), ("self_attn.k_proj", kv, h),
                                 ("self_attn.v_proj", kv, h), ("self_attn.o_proj", h, h),
                                 ("mlp.gate_proj", f, h), ("mlp.up_proj", f, h), ("mlp.down_proj", h, f)]:
            plan.append((f"{p}.{name}.weight", "U8", [rows // 4, cols],
                         lambda r=rows, c=cols: packed_ternary(rng, r, c)))
            plan.append((f"{p}.{name}.weight_scale", "BF16", [1],
                         lambda: bf16_bytes(np.array([rng.uniform(0.5, 2.0)]))))
        for name, n in [("input_layernorm", h), ("post_attention_layernorm", h),
                        ("self_attn.attn_sub_norm", h), ("mlp.ffn_sub_norm", f)]:
            plan.append((f"{p}.{name}.weight", "BF16", [n], lambda n=n: bf16_bytes(1 + 0.1 * rng.standard_normal(n))))
    plan.append(("model.norm.weight", "BF16", [h], lambda: bf16_bytes(1 + 0.1 * rng.standard_normal(h))))

    size = {"BF16": 2, "U8": 1}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, shape, _ in plan:
        n = size[dt] * int(np.prod(shape))
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    hjson = json.dumps(header).encode()
    hjson += b" " * (-len(hjson) % 8)
    with open(out / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(hjson)))
        fh.write(hjson)
        for name, dt, shape, make in plan:
            data = make()
            assert len(data) == header[name]["data_offsets"][1] - header[name]["data_offsets"][0], name
            fh.write(data)

    config = {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
        "hidden_size": h, "intermediate_size": f, "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"},
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000,
                                                            "eos_token_id": [128001, 128009]}))
    tok = ROOT / ".cache" / "llama3-tokenizer"
    shutil.copy(tok / "tokenizer.json", out / "tokenizer.json")
    cfg = json.loads((tok / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    print(f"wrote {out} ({offset / 2**30:.2f} GiB of tensors)")


if __name__ == "__main__":
    main()
