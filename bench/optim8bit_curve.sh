#!/usr/bin/env bash
# 8-bit AdamW against 32-bit AdamW on a real fine-tune: SmolLM2-135M-Instruct (NF4 + double
# quantization), the first 90% of instruction-data.json, LoRA r 16 on all linear layers,
# the same seed, data order and dropout masks for both; prints both loss curves (means
# over windows of steps), their largest gap, the eval losses and the optimizer state size.
# Usage: bench/optim8bit_curve.sh [STEPS=60] [BUILD=build]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-60}
BUILD=${2:-build}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=../shared/data/text/instruction-data.json
OUT=${TMPDIR:-/tmp}/qlora-optim8bit
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$OUT"
for optim in adamw_torch adamw_8bit; do
  "$BUILD/qlora" train --model "$MODEL" --quant nf4 --double-quant --data "$DATA" --eval-split 0.1 \
    --out "$OUT/$optim" --overwrite-output-dir --optim "$optim" --max-steps "$STEPS" --batch-size 4 --seq-len 512 \
    --lora-r 16 --lora-alpha 16 --target all-linear --lr 5e-4 --seed 7 2> "$OUT/$optim.log"
  grep "^optimizer:" "$OUT/$optim.log"
done
python3 - "$OUT" "$STEPS" <<'PY'
import json, sys
out, steps = sys.argv[1], int(sys.argv[2])
def read(o):
    tr, ev = {}, {}
    for l in open(f"{out}/{o}/metrics.jsonl"):
        j = json.loads(l)
        (ev if "eval_loss" in j else tr)[j["step"]] = j.get("eval_loss", j.get("loss"))
    return tr, ev
a, ea = read("adamw_torch")
b, eb = read("adamw_8bit")
w = max(1, steps // 10)
print("| steps | adamw_torch loss | adamw_8bit loss | difference |")
print("|---|---|---|---|")
for s in range(1, steps + 1, w):
    r = range(s, min(s + w, steps + 1))
    la = sum(a[i] for i in r) / len(r); lb = sum(b[i] for i in r) / len(r)
    print(f"| {r[0]}-{r[-1]} | {la:.4f} | {lb:.4f} | {lb - la:+.4f} |")
gap = max(abs(a[i] - b[i]) for i in a)
print(f"\nlargest per-step loss gap: {gap:.4f}")
print(f"eval loss at step {steps}: adamw_torch {ea[steps]:.4f}, adamw_8bit {eb[steps]:.4f} (before: {ea[0]:.4f})")
PY
