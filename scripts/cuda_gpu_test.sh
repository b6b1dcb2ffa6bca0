#!/usr/bin/env bash
# The GPU run of the CUDA backend, in two halves (the GPU machines have no cargo):
#
#   bash scripts/cuda_gpu_test.sh build   # here: test binaries with the fatbin (nvcc) and with
#                                         # NVRTC, stripped, into .gpu/ (git-ignored)
#   bash scripts/cuda_gpu_test.sh run     # on the GPU machine, from the repository root, with .gpu/
#   bash scripts/cuda_gpu_test.sh bench   # there too, with .cache/llama3-tokenizer/: the 2B4T-shaped
#                                         # random model, cuda_bench and the PyTorch bf16 baseline
#
# `run` fails unless a GPU is found (BIT_TTT_REQUIRE_CUDA=1) and every kernel equals the CPU
# oracle. The fixtures are read from the path the binaries were built at, so `run` links the
# repository there when it differs.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
build)
  mkdir -p .gpu
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
  nvcc=$(bash scripts/fetch_nvcc.sh)
  for variant in fatbin nvrtc; do
    if [ "$variant" = fatbin ]; then export NVCC="$nvcc"; else unset NVCC; fi
    bin=$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
      | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])')
    cp "$bin" ".gpu/cuda-test-$variant"
    strip ".gpu/cuda-test-$variant"
  done
  NVCC="$nvcc" cargo build --release --features cuda --example cuda_bench
  cp target/release/examples/cuda_bench .gpu/cuda_bench
  strip .gpu/cuda_bench
  bash scripts/fetch_llama3_tokenizer.sh >/dev/null
  echo "$PWD" >.gpu/built-at
  ls -la .gpu
  ;;
run)
  built_at=$(cat .gpu/built-at)
  if [ "$built_at" != "$PWD" ] && [ ! -e "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -s "$PWD" "$built_at"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  BIT_TTT_REQUIRE_CUDA=1 .gpu/cuda-test-fatbin --nocapture --test-threads 1
  nvrtc=$(find / -name 'libnvrtc.so*' -not -path '/proc/*' 2>/dev/null | grep -v builtins | head -n 1 || true)
  [ -n "$nvrtc" ] || { echo "libnvrtc not found on this machine" >&2; exit 1; }
  LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}" BIT_TTT_REQUIRE_CUDA=1 \
    .gpu/cuda-test-nvrtc --nocapture --test-threads 1
  ;;
bench)
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
  model=/tmp/bitnet-2b4t-random
  [ -f "$model/config.json" ] || python3 tools/make_random_bitnet.py --out "$model" >/dev/null
  .gpu/cuda_bench "$model" 512 128
  .gpu/cuda_bench "$model" 128 256
  python3 tools/torch_dense_baseline.py --prompt 512 --gen 128
  ;;
*)
  echo "usage: $0 build|run|bench" >&2
  exit 2
  ;;
esac
