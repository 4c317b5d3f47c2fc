#!/usr/bin/env bash
# The memory planner against measured peak resident set for each model family, on random
# models of ~30M parameters (hidden 512, 8 layers, vocab 8192) that transformers made for
# that architecture (tools/make_family_bench_models.py, under models/bench-<family>/; made
# here when missing). The tiny test fixtures cannot show this: their peak is the process.
# Random weights: memory only (each has an 8192-token tokenizer.json trained on Shakespeare).
#
#   bash bench/memory_validate_families.sh [BUILD_DIR] [FAMILY ...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
shift || true
Q="$BUILD/qlora"
DATA="${QLORA_DATA_DIR:-$ROOT/../shared/data}"
TEXT="$DATA/text/tinyshakespeare.txt"
THREADS="${THREADS:-$(nproc)}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
[[ -x "$Q" ]] || { echo "build qlora first: $Q" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
FAMILIES=("$@")
[[ ${#FAMILIES[@]} -gt 0 ]] || FAMILIES=(llama qwen3 gemma2 phi3 gpt2 gpt_neox opt_350m bloom falcon)
for f in "${FAMILIES[@]}"; do
  [[ -f "$ROOT/models/bench-$f/tokenizer.json" ]] || "$ROOT/.refenv/bin/python" "$ROOT/tools/make_family_bench_models.py" "$f" >&2
done

source "$ROOT/bench/memory_rows.sh"

for f in "${FAMILIES[@]}"; do
  A="-m $ROOT/models/bench-$f"
  row "$f" train "$A" "--seq-len 256 --batch-size 1 --lora-r 16 --gradient-checkpointing" ""
  row "$f" train "$A" "--seq-len 256 --batch-size 2 --lora-r 16 --no-gradient-checkpointing" ""
  row "$f" train "$A" "--seq-len 128 --batch-size 1 --lora-r 16 --quant none --gradient-checkpointing" ""
  row "$f" generate "$A" "-p Once -n 64" ""
done
