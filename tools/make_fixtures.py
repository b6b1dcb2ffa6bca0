#!/usr/bin/env python3
"""Writes the tiny BitNet checkpoints under tests/fixtures/ and their reference outputs.

Each fixture is a Hugging Face model folder in one of the formats the engine loads, plus
reference.json / reference.safetensors computed by transformers (BitNetForCausalLM /
LlamaForCausalLM with its bitnet quantizer) in float32 on CPU. CI never runs this.

Exact command (from the repository root):

    pip install torch==2.15.0 transformers==5.23.0 accelerate tokenizers safetensors
    TORCHDYNAMO_DISABLE=1 python3 tools/make_fixtures.py

Running time: about a minute on a 2-core machine.
"""

import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"

# The chat template of microsoft/bitnet-b1.58-2B-4T (tokenizer_config.json).
BITNET_2B4T_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]

TRAIN_TEXT = """
The quick brown fox jumps over the lazy dog. A small model reads the text it is given and
learns to continue it. Once upon a time there was a little engine that ran on very few bits.
It counted minus one, zero and plus one, and it was fast. The weather today is sunny with a
chance of rain in the evening. She opened the door, looked at the garden and smiled.
Numbers like 12, 345 and 6789 appear in code: for i in range(10): print(i * 2).
Les mots français, 日本語の文章, and emoji 🙂 are bytes too.
""" * 4

PROMPTS = [
    "The quick brown fox",
    "Once upon a time there was",
    "for i in range(10): print(",
]
SCORE_TEXT = "She opened the door and looked at the little engine. It was fast and sunny."
GREEDY_STEPS = 12


def make_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAIN_TEXT], trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    return tok


def ternarize(w: torch.Tensor):
    """absmean, exactly as transformers' WeightQuant: T = clamp(round(W * (1/mean|W|)), -1, 1)."""
    scale = 1.0 / w.abs().mean().clamp(min=1e-5)
    t = (w * scale).round().clamp(-1, 1)
    return t, (1.0 / scale)


def pack(t: torch.Tensor) -> torch.Tensor:
    """HF packed layout: bits 2i..2i+1 of packed row r hold row i*(rows/4)+r, code = value+1."""
    rows = t.shape[0]
    assert rows % 4 == 0
    slab = rows // 4
    codes = (t + 1).to(torch.uint8)
    packed = torch.zeros((slab, t.shape[1]), dtype=torch.uint8)
    for i in range(4):
        packed |= codes[i * slab:(i + 1) * slab] << (2 * i)
    return packed


LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def random_weights(spec, vocab):
    g = torch.Generator().manual_seed(spec["seed"])
    h, ffn, L = spec["hidden"], spec["ffn"], spec["layers"]
    heads, kv, hd = spec["heads"], spec["kv_heads"], spec["head_dim"]
    shapes = {
        "self_attn.q_proj": (heads * hd, h), "self_attn.k_proj": (kv * hd, h),
        "self_attn.v_proj": (kv * hd, h), "self_attn.o_proj": (h, heads * hd),
        "mlp.gate_proj": (ffn, h), "mlp.up_proj": (ffn, h), "mlp.down_proj": (h, ffn),
    }
    w = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=g),
         "model.norm.weight": 1.0 + 0.1 * torch.randn(h, generator=g)}
    if not spec["tied"]:
        w["lm_head.weight"] = torch.randn(vocab, h, generator=g) * 0.5
    for i in range(L):
        p = f"model.layers.{i}"
        w[f"{p}.input_layernorm.weight"] = 1.0 + 0.1 * torch.randn(h, generator=g)
        w[f"{p}.post_attention_layernorm.weight"] = 1.0 + 0.1 * torch.randn(h, generator=g)
        if spec["family"] == "bitnet":
            w[f"{p}.self_attn.attn_sub_norm.weight"] = 1.0 + 0.1 * torch.randn(h, generator=g)
            w[f"{p}.mlp.ffn_sub_norm.weight"] = 1.0 + 0.1 * torch.randn(ffn, generator=g)
        for name in LINEARS:
            rows, cols = shapes[name]
            w[f"{p}.{name}.weight"] = torch.randn(rows, cols, generator=g) * (0.5 + torch.rand(1, generator=g))
    return w


def encode_linears(weights, spec):
    """Turns latent linear weights into the fixture's on-disk format."""
    fmt, cls = spec["format"], spec.get("linear_class", "bitlinear")
    dtype = torch.bfloat16 if spec.get("bf16") else torch.float32
    out = {}
    for name, w in weights.items():
        is_linear = any(name.endswith(f"{l}.weight") for l in LINEARS)
        if not is_linear or fmt == "latent":
            out[name] = w.to(dtype).contiguous()
            continue
        t, gamma = ternarize(w)
        # Store the scale in the checkpoint's dtype; both engines read back the same number.
        scale = gamma if cls == "autobitlinear" else 1.0 / gamma
        scale = scale.reshape(1).to(spec.get("scale_dtype", dtype))
        out[name] = pack(t) if fmt == "packed" else t.to(dtype).contiguous()
        out[name.replace(".weight", ".weight_scale")] = scale
    return out


def config_for(spec, vocab, tok):
    c = {
        "architectures": ["BitNetForCausalLM" if spec["family"] == "bitnet" else "LlamaForCausalLM"],
        "model_type": spec["family"],
        "hidden_size": spec["hidden"], "intermediate_size": spec["ffn"],
        "num_hidden_layers": spec["layers"], "num_attention_heads": spec["heads"],
        "num_key_value_heads": spec["kv_heads"], "head_dim": spec["head_dim"],
        "vocab_size": vocab, "max_position_embeddings": 256, "rms_norm_eps": spec.get("eps", 1e-5),
        "hidden_act": "relu2" if spec["family"] == "bitnet" else "silu",
        "tie_word_embeddings": spec["tied"], "attention_bias": False,
        "bos_token_id": tok.token_to_id("<|begin_of_text|>"),
        "eos_token_id": tok.token_to_id("<|end_of_text|>"),
        "torch_dtype": "bfloat16" if spec.get("bf16") else "float32",
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": spec.get("linear_class", "bitlinear"),
            "quantization_mode": "online" if spec["format"] == "latent" else "offline",
        },
    }
    if "rope_parameters" in spec:
        c["rope_parameters"] = spec["rope_parameters"]
    else:
        c["rope_theta"] = spec.get("rope_theta", 10000.0)
    if "rope_scaling" in spec:
        c["rope_scaling"] = spec["rope_scaling"]
    if spec["family"] == "llama":
        c["mlp_bias"] = False
    return c


SPECS = [
    # 2B4T format: packed uint8 + bf16 weight_scale (multiplied), tied, GQA 6/2, dims not ÷32.
    dict(name="bitnet_packed_auto", family="bitnet", format="packed", linear_class="autobitlinear",
         scale_dtype=torch.bfloat16, hidden=72, ffn=100, layers=2, heads=6, kv_heads=2, head_dim=12,
         tied=True, seed=1, rope_theta=500000.0),
    # transformers BitLinear: weight_scale = 1/γ (divided), untied head, multi-query attention.
    dict(name="bitnet_packed_bitlinear", family="bitnet", format="packed", linear_class="bitlinear",
         hidden=48, ffn=76, layers=2, heads=4, kv_heads=1, head_dim=12, tied=False, seed=2),
    # bf16 ternary values + weight_scale, everything bf16.
    dict(name="bitnet_ternary_bf16", family="bitnet", format="ternary", linear_class="autobitlinear",
         bf16=True, hidden=40, ffn=68, layers=2, heads=4, kv_heads=2, head_dim=10, tied=True, seed=3),
    # Latent f32 weights, ternarised at load; rope_theta inside rope_parameters (transformers 5).
    dict(name="bitnet_latent_f32", family="bitnet", format="latent", linear_class="autobitlinear",
         hidden=56, ffn=84, layers=2, heads=4, kv_heads=4, head_dim=14, tied=True, seed=4,
         rope_parameters={"rope_type": "default", "rope_theta": 250000.0}),
    # Latent bf16 master weights (the -bf16 repository's format).
    dict(name="bitnet_latent_bf16", family="bitnet", format="latent", linear_class="autobitlinear",
         bf16=True, hidden=40, ffn=60, layers=2, heads=2, kv_heads=1, head_dim=20, tied=False, seed=5),
    # LLaMA block with bitnet quantization (Llama3-8B-1.58 style), llama3 rope scaling, sharded.
    dict(name="llama_packed_sharded", family="llama", format="packed", linear_class="bitlinear",
         hidden=64, ffn=88, layers=3, heads=8, kv_heads=2, head_dim=8, tied=False, seed=6,
         rope_theta=500000.0, shards=2,
         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
]


def save_weights(d: Path, tensors, shards: int):
    if shards <= 1:
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(d / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def reference(d: Path, spec, tok_fast, out_dir: Path = None):
    out_dir = out_dir or d
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    # Quantized linears keep the checkpoint's dtype (bf16 fixtures); the reference runs in f32.
    for m in model.modules():
        for name, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if p.dtype == torch.bfloat16:
                p.data = p.data.float()
    kinds = {type(m).__name__ for m in model.modules()}
    assert kinds & {"BitLinear", "AutoBitLinear"}, f"{spec['name']}: no BitLinear in {kinds}"
    tensors, prompts = {}, []
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tok_fast(text)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0]
            tensors[f"logits_{i}"] = logits.contiguous()
            seq, greedy, gaps = list(ids), [], []
            for _ in range(GREEDY_STEPS):
                last = model(torch.tensor([seq])).logits[0, -1]
                top = torch.topk(last, 2)
                greedy.append(int(top.indices[0]))
                gaps.append(float(top.values[0] - top.values[1]))
                seq.append(greedy[-1])
            prompts.append({"text": text, "ids": ids, "greedy": greedy, "gaps": gaps})
        ids = tok_fast(SCORE_TEXT)["input_ids"]
        logits = model(torch.tensor([ids])).logits[0]
        nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "  Hello there! "},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "日本語で？"}]
    chat = tok_fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    save_file(tensors, str(out_dir / "reference.safetensors"))
    ref = {"prompts": prompts, "score": {"text": SCORE_TEXT, "ids": ids, "nll": nll.tolist()},
           "chat": {"messages": messages, "add_generation_prompt": True, "text": chat},
           "generator": "tools/make_fixtures.py", "torch": torch.__version__}
    (out_dir / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False))


def main():
    torch.manual_seed(0)
    tok = make_tokenizer(400)
    vocab = tok.get_vocab_size()
    for spec in SPECS:
        d = OUT / spec["name"]
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        tok.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps({
            "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
            "model_max_length": 256, "chat_template": BITNET_2B4T_CHAT_TEMPLATE}, indent=1))
        (d / "generation_config.json").write_text(json.dumps({
            "bos_token_id": tok.token_to_id("<|begin_of_text|>"),
            "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]}, indent=1))
        (d / "config.json").write_text(json.dumps(config_for(spec, vocab, tok), indent=1))
        save_weights(d, encode_linears(random_weights(spec, vocab), spec), spec.get("shards", 1))
        tok_fast = AutoTokenizer.from_pretrained(d)
        reference(d, spec, tok_fast)
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{spec['name']}: {size / 1024:.0f} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
