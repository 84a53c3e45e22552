#!/usr/bin/env bash
# LoRA overhead beside llama.cpp's --lora, and the merged-GGUF check, on the jargon adapter.
#
#   bench/lora_vs_llamacpp.sh /path/to/llama.cpp/build/bin [threads]
#
# 1. Decode speed (128 tokens, greedy) of the base and with the gemma jargon adapter (r 8, all
#    seven projections): lora-run on the fly (PEFT folder) vs llama.cpp `--lora` (the same
#    adapter converted to GGUF by convert_lora_to_gguf.py, in the fixtures), as ratios.
# 2. `lora-run merge` writes a merged GGUF; llama.cpp loads it and its greedy tokens are
#    compared with lora-run's on-the-fly tokens for the fixture prompts (16 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: bench/lora_vs_llamacpp.sh LLAMA_CPP_BIN_DIR [threads]}
THREADS=${2:-2}
MODELS=$(python3 models/fetch --dir)
FIX=../shared/fixtures
cargo build --release -p lora-run >/dev/null
LR=target/release/lora-run
M=$MODELS/gemma-3-270m-q4_k_m.gguf

lr_tps() { "$LR" bench -m "$M" -t "$THREADS" -p 0 -n 128 -r 3 "$@" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["tg_tokens_per_s"])'; }
ll_tps() { "$BIN/llama-completion" -m "$M" -t "$THREADS" -p "The engine room reported" -n 128 --temp 0 --ignore-eos -no-cnv --no-warmup "$@" 2>&1 >/dev/null |
    python3 -c 'import re,sys; t=sys.stdin.read(); print(re.findall(r"eval time.*?([0-9.]+) tokens per second", t)[-1])'; }

best() { python3 -c "import sys; print(max(map(float, sys.argv[1:])))" "$@"; }
a=(); b=(); c=(); d=()
for _ in 1 2 3; do
    a+=("$(lr_tps)"); b+=("$(lr_tps -a $FIX/adapters/gemma3-270m-jargon)")
    c+=("$(ll_tps)"); d+=("$(ll_tps --lora $FIX/adapters/gemma3-270m-jargon.gguf)")
done
python3 - "$(best "${a[@]}")" "$(best "${b[@]}")" "$(best "${c[@]}")" "$(best "${d[@]}")" <<'PY'
import sys
lb, la, cb, ca = map(float, sys.argv[1:5])
print(f"decode tg128, gemma + jargon r8 all 7 projections:")
print(f"  lora-run  base {lb:.1f} tok/s, on the fly {la:.1f} tok/s = {la/lb:.3f}x of its base")
print(f"  llama.cpp base {cb:.1f} tok/s, --lora     {ca:.1f} tok/s = {ca/cb:.3f}x of its base")
print(f"  lora-run with adapter / llama.cpp with adapter = {la/ca:.2f}x")
PY

OUT=$(mktemp -d)/merged.gguf
"$LR" merge -m "$M" -a "$FIX/adapters/gemma3-270m-jargon" -o "$OUT" --type f16 2>&1 | tail -1
for p in "The capital of France is" "The engine room reported" "Arr, tell me about the sea" "def add(a, b):"; do
    ours=$("$LR" -m "$M" -a "$FIX/adapters/gemma3-270m-jargon" -p "$p" -n 16 --temp 0 -t "$THREADS" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')
    theirs=$("$BIN/llama-completion" -m "$OUT" -p "$p" -n 16 --temp 0 -t "$THREADS" -no-cnv --no-warmup 2>/dev/null | python3 -c "import sys; t=sys.stdin.read(); p=sys.argv[1]; print(t[t.index(p)+len(p):] if p in t else t)" "$p")
    if [ "$ours" == "${theirs%$'\n'}" ]; then echo "merged GGUF in llama.cpp, \"$p\": same 16 greedy tokens"; else echo "merged GGUF in llama.cpp, \"$p\": DIFFERENT"; echo "  lora-run:  $ours"; echo "  llama.cpp: $theirs"; fi
done
rm -f "$OUT"
