#!/usr/bin/env python3
"""Sweeps `bit-ttt adapt-bench` over adapt settings and prints the markdown table of docs/ADAPT.md.

Exact command (from the repository root, after `cargo build --release -p bit-ttt-cli`):

    python3 tools/adapt_sweep.py --docs models/sample/heldout --max-docs 8 > .cache/sweep.md

Each row is one adapt-bench run (split-half protocol, see docs/ADAPT.md) on the shipped sample
model; settings not named in a row are the CLI defaults. Running time on the 2-core Zen 4 machine:
about 30-90 s per row.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (label, extra adapt-bench arguments)
GRID = [
    ("lr 1e-3 (old default)", ["--lr", "1e-3"]),
    ("lr 3e-3", ["--lr", "3e-3"]),
    ("lr 1e-2", ["--lr", "1e-2"]),
    ("lr 3e-2", ["--lr", "3e-2"]),
    ("lr 1e-2, 4 epochs", ["--lr", "1e-2", "--epochs", "4"]),
    ("lr 1e-2, 1 epoch", ["--lr", "1e-2", "--epochs", "1"]),
    ("lr 1e-2, layers 4", ["--lr", "1e-2", "--layers", "4"]),
    ("lr 1e-2, all 8 layers", ["--lr", "1e-2", "--layers", "8"]),
    ("lr 1e-2, rank 4", ["--lr", "1e-2", "--rank", "4", "--alpha", "4"]),
    ("lr 1e-2, rank 64", ["--lr", "1e-2", "--rank", "64", "--alpha", "64"]),
    ("lr 1e-2, chunk 256", ["--lr", "1e-2", "--chunk", "256"]),
    ("lr 1e-2, chunk 128", ["--lr", "1e-2", "--chunk", "128"]),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", default=str(ROOT / "models/sample/heldout"))
    p.add_argument("--max-docs", type=int, default=8)
    p.add_argument("--bin", default=str(ROOT / "target/release/bit-ttt"))
    p.add_argument("--only", help="comma-separated row numbers (1-based)")
    p.add_argument("--extra", nargs="*", default=[], help="label=args rows to add, args space-separated")
    args = p.parse_args()
    grid = list(GRID)
    for e in args.extra:
        label, rest = e.split("=", 1)
        grid.append((label, rest.split()))
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        grid = [g for i, g in enumerate(grid, 1) if i in keep]
    print("| settings | bits before | bits after | change | cross-doc | cost × prefill | wall s |")
    print("|---|---|---|---|---|---|---|")
    for label, extra in grid:
        t0 = time.time()
        cmd = [args.bin, "adapt-bench", "--docs", args.docs, "--max-docs", str(args.max_docs),
               "--json", *extra]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {label} | failed: {out.stderr.strip()[-200:]} |||||", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        change = (r["bits_after"] / r["bits_before"] - 1) * 100
        print(f"| {label} | {r['bits_before']:.4f} | {r['bits_after']:.4f} | {change:+.2f} % "
              f"| {r['cross_doc_delta']:+.4f} | {r['cost_ratio']:.2f} | {time.time() - t0:.0f} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
