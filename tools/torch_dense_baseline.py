#!/usr/bin/env python3
"""The dense bf16 baseline of docs/CUDA.md: a model of the BitNet b1.58 2B4T shape (30 layers,
hidden 2560, FFN 6912, 20 heads / 5 KV heads, vocabulary 128256, tied head, ReLU² GLU with
sub-norms) with random bf16 weights, run with PyTorch on the GPU: prefill and greedy decode
tokens/s, eager and with the decode step captured in a CUDA graph. Run on the GPU machine (CI
never runs it):

    python3 tools/torch_dense_baseline.py --prompt 512 --gen 128

Prints one JSON line per mode.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

L, H, FFN, HEADS, KV, D, VOCAB = 30, 2560, 6912, 20, 5, 128, 128256


def rms(x, w):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype) * w


class Dense:
    def __init__(self, ctx, dev):
        g = torch.Generator(device=dev).manual_seed(0)
        r = lambda *s: (torch.randn(*s, device=dev, generator=g, dtype=torch.bfloat16) * 0.02)
        self.embed = r(VOCAB, H)
        self.layers = [dict(q=r(HEADS * D, H), k=r(KV * D, H), v=r(KV * D, H), o=r(H, HEADS * D),
                            gate=r(FFN, H), up=r(FFN, H), down=r(H, FFN),
                            n1=torch.ones(H, device=dev, dtype=torch.bfloat16),
                            n2=torch.ones(H, device=dev, dtype=torch.bfloat16),
                            sa=torch.ones(HEADS * D, device=dev, dtype=torch.bfloat16),
                            sf=torch.ones(FFN, device=dev, dtype=torch.bfloat16)) for _ in range(L)]
        self.norm = torch.ones(H, device=dev, dtype=torch.bfloat16)
        self.kc = torch.zeros(L, KV, ctx, D, device=dev, dtype=torch.bfloat16)
        self.vc = torch.zeros_like(self.kc)
        inv = 1.0 / 500000.0 ** (torch.arange(0, D, 2, device=dev).float() / D)
        f = torch.outer(torch.arange(ctx, device=dev).float(), inv)
        self.cos, self.sin = torch.cat([f, f], -1).cos().bfloat16(), torch.cat([f, f], -1).sin().bfloat16()
        self.ctx = ctx

    def rope(self, x, pos):
        c, s = self.cos[pos][None, :, None, :], self.sin[pos][None, :, None, :]
        h = x.shape[-1] // 2
        return x * c + torch.cat([-x[..., h:], x[..., :h]], -1) * s

    def forward(self, ids, pos):
        """ids [n], pos [n] (positions); returns the logits of the last token."""
        n = ids.shape[0]
        x = self.embed[ids][None]
        mask = torch.arange(self.ctx, device=ids.device)[None, :] <= pos[:, None]
        for i, l in enumerate(self.layers):
            y = rms(x, l["n1"])
            q = F.linear(y, l["q"]).view(1, n, HEADS, D)
            k = F.linear(y, l["k"]).view(1, n, KV, D)
            v = F.linear(y, l["v"]).view(1, n, KV, D)
            q, k = self.rope(q, pos), self.rope(k, pos)
            self.kc[i].index_copy_(1, pos, k[0].transpose(0, 1))
            self.vc[i].index_copy_(1, pos, v[0].transpose(0, 1))
            a = F.scaled_dot_product_attention(q.transpose(1, 2), self.kc[i][None], self.vc[i][None],
                                               attn_mask=mask[None, None], enable_gqa=True)
            x = x + F.linear(rms(a.transpose(1, 2).reshape(1, n, -1), l["sa"]), l["o"])
            y = rms(x, l["n2"])
            m = F.relu(F.linear(y, l["gate"])).square() * F.linear(y, l["up"])
            x = x + F.linear(rms(m, l["sf"]), l["down"])
        return F.linear(rms(x[:, -1], self.norm), self.embed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    a = ap.parse_args()
    dev = torch.device("cuda")
    m = Dense(a.prompt + a.gen + 1, dev)
    ids = torch.randint(0, VOCAB, (a.prompt,), device=dev)
    weight_bytes = sum(t.numel() * 2 for l in m.layers for t in l.values()) + m.embed.numel() * 2
    with torch.no_grad():
        m.forward(ids[:8], torch.arange(8, device=dev))  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        logits = m.forward(ids, torch.arange(a.prompt, device=dev))
        torch.cuda.synchronize()
        prefill = a.prompt / (time.perf_counter() - t)

        tok = logits.argmax(-1)
        t = time.perf_counter()
        for i in range(a.gen):
            tok = m.forward(tok, torch.tensor([a.prompt + i], device=dev)).argmax(-1)
        torch.cuda.synchronize()
        eager = a.gen / (time.perf_counter() - t)

        # The decode step in a CUDA graph: static token and position buffers.
        s_tok = tok.clone()
        s_pos = torch.tensor([a.prompt], device=dev)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                m.forward(s_tok, s_pos)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            s_out = m.forward(s_tok, s_pos).argmax(-1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(a.gen):
            s_pos.fill_(a.prompt + i)
            graph.replay()
            s_tok.copy_(s_out)
        torch.cuda.synchronize()
        graphed = a.gen / (time.perf_counter() - t)
    for mode, dec in (("eager", eager), ("cuda_graph", graphed)):
        print(json.dumps({"baseline": "torch bf16 dense, 2B4T shape", "mode": mode,
                          "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                          "prompt_tokens": a.prompt, "gen_tokens": a.gen,
                          "prefill_tok_s": round(prefill, 1), "decode_tok_s": round(dec, 1),
                          "weight_bytes": weight_bytes,
                          "decode_gb_s": round(dec * weight_bytes / 1e9, 1)}))


if __name__ == "__main__":
    main()
