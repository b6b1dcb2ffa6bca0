#!/usr/bin/env bash
# Builds the C# bindings, their tests and samples with Mono's C# compiler (language 7.2) and runs
# the tests with mono against target/release/libbit_ttt.so. Used by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/csharp
mkdir -p "$out"
mcs -langversion:7.2 -warnaserror -out:"$out/tests.exe" bindings/csharp/BitTtt.cs tests/csharp/Tests.cs
mcs -langversion:7.2 -warnaserror -out:"$out/chat.exe" bindings/csharp/BitTtt.cs examples/csharp/Chat.cs
mcs -langversion:7.2 -warnaserror -target:library -out:"$out/unity-sample.dll" \
  bindings/csharp/BitTtt.cs examples/csharp/unity/BitTttChat.cs tests/csharp/UnityStub.cs
export LD_LIBRARY_PATH="$PWD/target/release${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mono "$out/tests.exe" models/sample tests/fixtures/bitnet_packed_auto
printf 'Hello there\n/learn The keeper is called Amos.\n/quit\n' | mono "$out/chat.exe" models/sample >/dev/null
echo "C# bindings: tests and samples pass"
