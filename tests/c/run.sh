#!/usr/bin/env bash
# Builds and runs the C ABI checks against target/debug/libbit_ttt.so (cargo build first):
# header compiles as C99/C11/C++17 (pedantic, included twice), exported symbols are exactly the
# bit_ttt_* functions, tests/c/test_api.c under ASan+UBSan and under valgrind, the C++ wrapper
# test, and the C/C++ examples.
set -euo pipefail
cd "$(dirname "$0")/../.."
lib=target/debug
out=target/c
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
model=tests/fixtures/bitnet_packed_auto
other=tests/fixtures/bitnet_latent_f32
warn=(-Wall -Wextra -Werror -pedantic)
link=(-Iinclude -L"$lib" -lbit_ttt -Wl,-rpath,"$PWD/$lib")

echo "-- header: C99, C11, C++17, included twice"
printf '#include "bit_ttt.h"\n#include "bit_ttt.h"\nint main(void) { return bit_ttt_abi_version() == BIT_TTT_ABI_VERSION ? 0 : 1; }\n' > "$out/twice.c"
for std in c99 c11; do cc -std=$std "${warn[@]}" "$out/twice.c" "${link[@]}" -o "$out/twice_$std"; "$out/twice_$std"; done
cp "$out/twice.c" "$out/twice.cpp"
c++ -std=c++17 "${warn[@]}" "$out/twice.cpp" "${link[@]}" -o "$out/twice_cpp"; "$out/twice_cpp"

echo "-- exported symbols"
others=$(nm -D --defined-only "$lib/libbit_ttt.so" | awk '{print $3}' | grep -v '^bit_ttt_' || true)
if [ -n "$others" ]; then echo "symbols other than bit_ttt_*:"; echo "$others"; exit 1; fi
declared=$(grep -oE '\bbit_ttt_[a-z_0-9]+\(' include/bit_ttt.h | tr -d '(' | sort -u)
exported=$(nm -D --defined-only "$lib/libbit_ttt.so" | awk '{print $3}' | sort -u)
if [ "$declared" != "$exported" ]; then
  echo "header and library disagree:"; diff <(echo "$declared") <(echo "$exported"); exit 1
fi
echo "$(echo "$exported" | wc -l) functions, all bit_ttt_*"

echo "-- test_api under AddressSanitizer + UBSan"
cc -std=c11 "${warn[@]}" -g -fsanitize=address,undefined -fno-omit-frame-pointer tests/c/test_api.c \
  "${link[@]}" -lpthread -o "$out/test_api_asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  "$out/test_api_asan" "$model" "$other" "$scratch/asan"

echo "-- test_api under valgrind"
cc -std=c11 "${warn[@]}" -g tests/c/test_api.c "${link[@]}" -lpthread -o "$out/test_api"
valgrind --quiet --fair-sched=yes --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
  --show-leak-kinds=definite,indirect "$out/test_api" "$model" "$other" "$scratch/valgrind"

echo "-- C++ wrapper test under AddressSanitizer + UBSan"
c++ -std=c++17 "${warn[@]}" -g -fsanitize=address,undefined -Ibindings/cpp tests/cpp/test_wrapper.cpp \
  "${link[@]}" -o "$out/test_wrapper"
ASAN_OPTIONS=detect_leaks=1 "$out/test_wrapper" "$model"

echo "-- examples"
cc -std=c11 "${warn[@]}" examples/c/chat.c "${link[@]}" -o "$out/chat_c"
c++ -std=c++17 "${warn[@]}" -Ibindings/cpp examples/cpp/chat.cpp "${link[@]}" -o "$out/chat_cpp"
for ex in chat_c chat_cpp; do
  reply=$(printf 'Hello there\n\n' | "$out/$ex" "$model")
  echo "$reply" | tail -n 2
  echo "$reply" | grep -q 'tokens/s' || { echo "$ex did not answer"; exit 1; }
done
echo "C ABI checks passed"
