#!/usr/bin/env bash
# Builds a golden harness (a C program beside a make_golden.sh here) against the ggml of a
# llama.cpp CMake build (its static libraries), runs it, and writes OUT (a JSON file; a relative
# OUT is relative to the harness's folder):
#   runtime/tests/golden/run_ggml_harness.sh HARNESS.c LLAMA_CPP_DIR BUILD_DIR OUT
set -euo pipefail
SRC=${1:?usage: run_ggml_harness.sh HARNESS.c LLAMA_CPP_DIR BUILD_DIR OUT}
LLAMA=${2:?usage: run_ggml_harness.sh HARNESS.c LLAMA_CPP_DIR BUILD_DIR OUT}
BUILD=${3:?usage: run_ggml_harness.sh HARNESS.c LLAMA_CPP_DIR BUILD_DIR OUT}
OUT=${4:?usage: run_ggml_harness.sh HARNESS.c LLAMA_CPP_DIR BUILD_DIR OUT}
HERE=$(cd "$(dirname "$SRC")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
case "$OUT" in /*) ;; *) OUT="$HERE/$OUT" ;; esac
lib() { find "$BUILD" -name "$1" | head -n 1; }
gcc -O2 -I"$LLAMA/ggml/include" "$SRC" -o "$TMP/golden" \
    "$(lib libggml.a)" "$(lib libggml-cpu.a)" "$(lib libggml-base.a)" -lstdc++ -lgomp -lpthread -lm
"$TMP/golden" "$OUT"
ls -l "$OUT"
