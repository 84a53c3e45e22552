#!/usr/bin/env bash
# Builds flash_attn_golden.c against the ggml of a llama.cpp CMake build and writes OUT (a JSON
# file) beside this script:
#   runtime/tests/golden/flash_attn/make_golden.sh LLAMA_CPP_DIR BUILD_DIR OUT
# Made with the llama.cpp vendored in llama-cpp-python 0.3.36 on an AVX-512 VNNI machine:
#   golden_avx512.json from a -DGGML_NATIVE=ON build,
#   golden_avx2.json from -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF (-DGGML_FMA=ON
#   -DGGML_F16C=ON).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
exec "$HERE/../run_ggml_harness.sh" "$HERE/flash_attn_golden.c" "$@"
