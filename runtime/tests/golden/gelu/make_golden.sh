#!/usr/bin/env bash
# Builds gelu_table_golden.c against the ggml of a llama.cpp CMake build and writes OUT (a JSON
# file) beside this script:
#   runtime/tests/golden/gelu/make_golden.sh LLAMA_CPP_DIR BUILD_DIR OUT
# Made with the llama.cpp vendored in llama-cpp-python 0.3.36 (-DGGML_NATIVE=ON, an AVX-512
# machine); an AVX2-only build (-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON) gives the same
# table.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
exec "$HERE/../run_ggml_harness.sh" "$HERE/gelu_table_golden.c" "$@"
