#!/usr/bin/env bash
# Predicted (qlora memory) vs measured peak resident set (ru_maxrss via /usr/bin/time -f %M)
# of `qlora train` and `qlora generate` on the real models, over a grid of options.
# Prints a markdown table: predicted, measured, ratio predicted/measured (goal: within 10%).
# The prediction compared is the resident set with nothing evicted (the planner's peak plus
# any paged optimizer state, which stays resident when there is no memory pressure).
#
#   bash bench/memory_validate.sh [BUILD_DIR]      (default build/; needs qlora built)
#
# Runs one measurement at a time, each short (train: --max-steps 2 on Tiny Shakespeare).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
Q="$BUILD/qlora"
DATA="${QLORA_DATA_DIR:-$ROOT/../shared/data}"
STORIES="$DATA/stories260K/stories260K.bin"
TOK="$DATA/stories260K/tok512.bin"
SMOL="$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$DATA/text/tinyshakespeare.txt"
THREADS="${THREADS:-$(nproc)}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
[[ -x "$Q" ]] || { echo "build qlora first: $Q" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

echo "| model | command | options | predicted MiB | measured MiB | predicted/measured |"
echo "|---|---|---|---:|---:|---:|"

# measure NAME MODEL_ARGS -- TRAIN_OR_GEN_ARGS
row() {
  local name="$1" mode="$2" model_args="$3" opts="$4" extra_mem="$5"
  local rss pred
  if [[ "$mode" == train ]]; then
    rss=$( { /usr/bin/time -f "MAXRSS %M" "$Q" train $model_args $opts --data "$TEXT" --out "$OUT/a" --overwrite-output-dir \
               --max-steps 2 --threads "$THREADS" -q >/dev/null; } 2>&1 | awk '/^MAXRSS/ {print $2}')
    pred=$("$Q" memory $model_args $opts --mode train --data "$TEXT" --threads "$THREADS" $extra_mem --json |
           python3 -c 'import json,sys; print(json.load(sys.stdin)["resident_if_not_evicted_bytes"])')
  else
    local log="$OUT/gen.log"
    /usr/bin/time -f "MAXRSS %M" "$Q" generate $model_args $opts --temperature 0 --threads "$THREADS" \
        >/dev/null 2>"$log"
    rss=$(awk '/^MAXRSS/ {print $2}' "$log")
    local p; p=$(sed -n 's/^prompt: \([0-9]*\) tokens.*/\1/p' "$log")
    # generate's -n and --prompt map onto the planner's -n and --prompt-len.
    local n; n=$(echo "$opts" | sed -n 's/.*-n \([0-9]*\).*/\1/p')
    local gopts; gopts=$(echo "$opts" | sed 's/--prompt "[^"]*"//; s/-p [^ ]*//; s/-n [0-9]*//')
    pred=$("$Q" memory $model_args $gopts --mode generate --prompt-len "$p" -n "$n" --threads "$THREADS" $extra_mem --json |
           python3 -c 'import json,sys; print(json.load(sys.stdin)["resident_if_not_evicted_bytes"])')
  fi
  python3 - "$name" "$mode" "$opts" "$pred" "$rss" <<'EOF'
import sys
name, mode, opts, pred, rss = sys.argv[1:]
p = int(pred) / 2**20; m = int(rss) / 1024
print(f"| {name} | {mode} | `{opts.strip()}` | {p:.1f} | {m:.1f} | {p/m:.3f} |")
EOF
}

S="-m $STORIES --tokenizer $TOK"
M="-m $SMOL"
# stories260K (5 layers, hidden 64, context 512): dominated by the process baseline.
row stories260K train "$S" "--seq-len 256 --batch-size 1 --lora-r 8" ""
row stories260K train "$S" "--seq-len 512 --batch-size 4 --lora-r 64 --no-gradient-checkpointing" ""
row stories260K train "$S" "--seq-len 512 --batch-size 1 --lora-r 16 --quant none" ""
row stories260K generate "$S" "-p Once -n 256" ""
row stories260K generate "$S" "-p Once -n 32 --quant none" ""
# SmolLM2-135M (30 layers, hidden 576, vocab 49152).
row SmolLM2-135M train "$M" "--seq-len 64 --batch-size 1 --lora-r 8" ""
row SmolLM2-135M train "$M" "--seq-len 256 --batch-size 1 --lora-r 16" ""
row SmolLM2-135M train "$M" "--seq-len 256 --batch-size 2 --lora-r 16 --no-gradient-checkpointing" ""
row SmolLM2-135M train "$M" "--seq-len 512 --batch-size 1 --lora-r 64 --no-gradient-checkpointing" ""
row SmolLM2-135M train "$M" "--seq-len 512 --batch-size 1 --lora-r 64" ""
row SmolLM2-135M train "$M" "--seq-len 128 --batch-size 1 --lora-r 16 --quant none" ""
row SmolLM2-135M train "$M" "--seq-len 128 --batch-size 1 --lora-r 16 --double-quant --target q_proj,v_proj" ""
row SmolLM2-135M train "$M" "--seq-len 128 --batch-size 1 --lora-r 64 --optim adamw_8bit" ""
row SmolLM2-135M train "$M" "--seq-len 128 --batch-size 1 --lora-r 64 --optim paged_adamw_32bit" ""
row SmolLM2-135M train "$M" "--seq-len 128 --batch-size 1 --lora-r 16 --quant int8" ""
row SmolLM2-135M generate "$M" "-p Once -n 32" ""
row SmolLM2-135M generate "$M" "-p Once -n 512 --double-quant" ""
row SmolLM2-135M generate "$M" "-p Once -n 64 --quant none" ""
row SmolLM2-135M generate "$M" "-p Once -n 64 --quant none --compute-dtype bf16" ""
row SmolLM2-135M generate "$M" "-p Once -n 64 --quant int8" ""
# SmolLM2-135M as a Hugging Face directory (float32 model.safetensors + tokenizer.json).
H="-m $ROOT/models/smollm2-hf"
row SmolLM2-135M-hf train "$H" "--seq-len 128 --batch-size 1 --lora-r 16" ""
row SmolLM2-135M-hf generate "$H" "-p Once -n 16" ""
