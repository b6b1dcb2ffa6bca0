#!/usr/bin/env bash
# Installs nvcc from NVIDIA's PyPI wheels into .cache/nvcc-13.0/ (no GPU or driver needed) and
# prints the path of the nvcc binary. Pinned to CUDA 13.0, the version of the GPU test machines'
# driver (580), so the PTX and cubins it emits load there. Used by scripts/test.sh for the `cuda`
# feature build; safe to run again (cached).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/nvcc-13.0
nvcc="$dest/nvidia/cu13/bin/nvcc"
if [ ! -x "$nvcc" ]; then
  python3 -m pip install --quiet --no-deps --target "$dest" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
fi
if [ ! -x "$nvcc" ]; then
  nvcc=$(find "$dest" -name nvcc -type f -perm -u+x | head -n 1)
fi
[ -x "$nvcc" ] || { echo "nvcc not found under $dest" >&2; exit 1; }
echo "$PWD/$nvcc"
