#!/usr/bin/env bash
# Two qlora binaries side by side in one run (old commit vs new), interleaved A B A B ... so
# that drift in the machine's speed falls on both: QLoRA training and decoding tokens/s on
# SmolLM2-135M (NF4 + double quant), as the engine-core issue's "no slowdown" check asks.
#   bench/compare_binaries.sh OLD_QLORA NEW_QLORA [ROUNDS=3]
# Prints one JSON line per run and a summary (medians, new / old). Needs
# models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_model.sh). Idle machine, please.
set -euo pipefail
OLD=$1 NEW=$2 ROUNDS=${3:-3}
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=../shared/data/text/tinyshakespeare.txt
export OMP_WAIT_POLICY=passive
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
run() {  # binary tag
  local bin=$1 tag=$2
  # training: 12 steps of 2 x 256 tokens, r 16 all-linear, bf16 compute; tokens/s of steps 3..12
  "$bin" train --model $MODEL --quant nf4 --double-quant --compute-dtype bf16 --data $DATA --out "$TMP/$tag" \
    --overwrite-output-dir --max-steps 12 --seq-len 256 --batch-size 2 --lora-r 16 --lora-alpha 32 -q >/dev/null 2>&1
  local train
  train=$(python3 -c "
import json,sys
r=[json.loads(l) for l in open('$TMP/$tag/metrics.jsonl')]
print(round(sum(x['tokens'] for x in r[2:])/(r[-1]['elapsed_s']-r[1]['elapsed_s']),1))")
  # decoding: 128 greedy tokens, fp32 compute (the default generate path)
  local dec ignore=()
  "$bin" generate --help 2>&1 | grep -q -- --ignore-eos && ignore=(--ignore-eos)  # (older binaries lack it)
  dec=$("$bin" generate --model $MODEL --quant nf4 --double-quant --prompt "Once upon a time" -n 128 --temperature 0 \
    "${ignore[@]}" 2>&1 >/dev/null | sed -n 's/.*decode steps in .* (\([0-9.]*\) tokens\/s).*/\1/p')
  echo "{\"binary\": \"$tag\", \"train_tok_per_s\": $train, \"decode_tok_per_s\": ${dec:-null}}"
}
for r in $(seq "$ROUNDS"); do
  run "$OLD" old | tee -a "$TMP/all.jsonl"
  run "$NEW" new | tee -a "$TMP/all.jsonl"
done
python3 - "$TMP/all.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
m = {}
for tag in ("old", "new"):
    for k in ("train_tok_per_s", "decode_tok_per_s"):
        vals = [r[k] for r in rows if r["binary"] == tag and r[k] is not None]
        m[(tag, k)] = statistics.median(vals) if vals else None
out = {k: {"old": m[("old", k)], "new": m[("new", k)],
           "new_over_old": round(m[("new", k)] / m[("old", k)], 3) if m[("old", k)] and m[("new", k)] else None}
       for k in ("train_tok_per_s", "decode_tok_per_s")}
print(json.dumps(out))
EOF
