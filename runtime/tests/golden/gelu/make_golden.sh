#!/usr/bin/env bash
# Builds gelu_table_golden.c against the ggml of a llama.cpp CMake build (its static libraries)
# and writes OUT (a JSON file) beside this script:
#   runtime/tests/golden/gelu/make_golden.sh LLAMA_CPP_DIR BUILD_DIR OUT
# Made with the llama.cpp vendored in llama-cpp-python 0.3.36 (-DGGML_NATIVE=ON, an AVX-512 machine);
#   an AVX2-only build (-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON) gives the same table.
set -euo pipefail
LLAMA=${1:?usage: make_golden.sh LLAMA_CPP_DIR BUILD_DIR OUT}
BUILD=${2:?usage: make_golden.sh LLAMA_CPP_DIR BUILD_DIR OUT}
OUT=${3:?usage: make_golden.sh LLAMA_CPP_DIR BUILD_DIR OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
case "$OUT" in /*) ;; *) OUT="$HERE/$OUT" ;; esac
lib() { find "$BUILD" -name "$1" | head -n 1; }
gcc -O2 -I"$LLAMA/ggml/include" "$HERE/gelu_table_golden.c" -o "$TMP/golden" \
    "$(lib libggml.a)" "$(lib libggml-cpu.a)" "$(lib libggml-base.a)" -lstdc++ -lgomp -lpthread -lm
"$TMP/golden" "$OUT"
ls -l "$OUT"
