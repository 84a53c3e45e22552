#!/usr/bin/env bash
# Golden values for tests/tests/lora_merge_llamacpp.rs: llama.cpp's greedy text on a GGUF
# written by `lora-run merge` (the gemma jargon adapter baked in as F16).
#
#   tests/golden/merge_llamacpp/make_golden.sh /path/to/llama.cpp/build/bin
#
# llama.cpp: any build (here the tree vendored in llama-cpp-python 0.3.36, built with cmake);
# only `llama-completion` is used. Writes golden.json beside this script: the merged file's
# sha256 (the test rebuilds the file and checks it is the same one) and, per fixture prompt,
# the 16 greedy tokens' text llama.cpp printed after the prompt.
set -euo pipefail
BIN=${1:?usage: make_golden.sh LLAMA_CPP_BIN_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../../.."
MODELS=$(python3 models/fetch --dir)
cargo build --release -p lora-run >/dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
OUT=$TMP/merged.gguf
target/release/lora-run merge -m "$MODELS/gemma-3-270m-q4_k_m.gguf" \
    -a ../shared/fixtures/adapters/gemma3-270m-jargon -o "$OUT" --type f16 >&2
SHA=$(sha256sum "$OUT" | cut -d' ' -f1)
for p in "The capital of France is" "The engine room reported" "Arr, tell me about the sea" "def add(a, b):"; do
    "$BIN/llama-completion" -m "$OUT" -p "$p" -n 16 --temp 0 -t 2 -no-cnv --no-warmup 2>/dev/null >"$TMP/out.txt"
    python3 - "$p" "$TMP/out.txt" >>"$TMP/lines.jsonl" <<'PY'
import json, sys
p, text = sys.argv[1], open(sys.argv[2], encoding="utf-8").read()
assert p in text, text
print(json.dumps({"prompt": p, "llamacpp_text": text[text.index(p) + len(p):]}))
PY
done
python3 - "$SHA" "$TMP/lines.jsonl" >"$HERE/golden.json" <<'PY'
import json, sys
sha, lines = sys.argv[1], [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
print(json.dumps({
    "made_by": "tests/golden/merge_llamacpp/make_golden.sh with llama.cpp from llama-cpp-python 0.3.36 (llama-completion, --temp 0, 16 tokens, 2 threads)",
    "merge": "lora-run merge -m gemma-3-270m-q4_k_m.gguf -a ../shared/fixtures/adapters/gemma3-270m-jargon -o merged.gguf --type f16",
    "merged_sha256": sha,
    "prompts": lines,
}, indent=1, ensure_ascii=False))
PY
echo "wrote $HERE/golden.json" >&2
