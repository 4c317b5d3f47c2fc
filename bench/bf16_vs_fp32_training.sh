#!/usr/bin/env bash
# bf16 compute against fp32 compute on real fine-tunes (issue 14: "bf16 compute matches fp32
# quality, loss within 1% over a real run"): SmolLM2-135M-Instruct, NF4 + double quant, LoRA
# r 16 all-linear, the same seed and data for every configuration, on either
#   RUN=task  the main job's run (the category task of scripts/make_task_data.py, packed, one
#             epoch of 21 steps), then each adapter's held-out answer loss and exact-match score;
#   RUN=text  STEPS (default 80) steps of batch 2 x 256 tokens of Tiny Shakespeare, lr 2e-4,
#             with 2% of it held out (the trainer's eval loss at the end).
# CONFIGS lists the runs, each DTYPE[:SIMD] (default "fp32 bf16 bf16:avx2"): --compute-dtype
# DTYPE with QLORA_SIMD=SIMD. On this CPU bf16 compute multiplies on whatever model/gemm_bf16.h
# picks (the run prints it): AMX tiles, AVX-512 BF16 dot products (where the input gradient
# is rounded to bf16, as bitsandbytes' bf16 backward does), or, capped to avx2, the float32
# GEMM on the same bf16-rounded operands with a float32 gradient: so "bf16 vs bf16:avx2"
# isolates what the dot products and the rounded gradient change.
#
#   bash bench/bf16_vs_fp32_training.sh               # RUN=task
#   RUN=text bash bench/bf16_vs_fp32_training.sh
#
# Loss per step is noisy (each step is a different batch): the comparison is on the mean
# training loss over windows of 10 steps, and on the held-out loss.
# Environment: QLORA (default build/qlora), MODEL (the default GGUF), OUT (work directory),
# TEXT (Tiny Shakespeare). OMP_WAIT_POLICY=passive.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QLORA="${QLORA:-$ROOT/build/qlora}"
MODEL="${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
OUT="${OUT:-$(mktemp -d /tmp/bf16_vs_fp32.XXXXXX)}"
CONFIGS="${CONFIGS:-fp32 bf16 bf16:avx2}"
RUN="${RUN:-task}"
STEPS="${STEPS:-80}"
TEXT="${TEXT:-$ROOT/../shared/data/text/tinyshakespeare.txt}"
export OMP_WAIT_POLICY=passive
[[ -x $QLORA ]] || { echo "missing $QLORA: bash scripts/build.sh" >&2; exit 1; }
[[ -f $MODEL ]] || { echo "missing $MODEL: bash scripts/fetch_model.sh" >&2; exit 1; }
TASK="$OUT/task-data"
python3 scripts/make_task_data.py "$TASK" > /dev/null
echo "# results in $OUT; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

for cfg in $CONFIGS; do
  dt=${cfg%%:*}
  simd=""
  [[ $cfg == *:* ]] && simd=${cfg#*:}
  name=${cfg/:/-}
  Q=(--model "$MODEL" --quant nf4 --double-quant --compute-dtype "$dt")
  if [[ $RUN == task ]]; then
    data=(--data "$TASK/train.jsonl" --eval-data "$TASK/heldout.jsonl" --packing --epochs 1 --lr 2e-3 --warmup-ratio 0.1)
  else
    data=(--data "$TEXT" --eval-split 0.02 --max-steps "$STEPS" --lr 2e-4)
  fi
  echo "+ ${simd:+QLORA_SIMD=$simd }qlora train ${Q[*]} ${data[*]}" >&2
  env ${simd:+QLORA_SIMD=$simd} "$QLORA" train "${Q[@]}" "${data[@]}" --out "$OUT/$name" --overwrite-output-dir \
    --seq-len 256 --batch-size 2 --lora-r 16 --lora-alpha 32 --target all-linear > "$OUT/$name.train.log" 2>&1 ||
    { tail -n 20 "$OUT/$name.train.log" >&2; exit 1; }
  if [[ $RUN == task ]]; then
    env ${simd:+QLORA_SIMD=$simd} "$QLORA" eval "${Q[@]}" --adapter "$OUT/$name" --data "$TASK/heldout.jsonl" \
      --generate --max-new-tokens 16 --json --quiet > "$OUT/$name.eval.json" 2> "$OUT/$name.eval.log" ||
      { tail -n 20 "$OUT/$name.eval.log" >&2; exit 1; }
  fi
done

python3 - "$OUT" "$RUN" $CONFIGS <<'PY'
import json, os, sys
out, run, cfgs = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = {}
for cfg in cfgs:
    name = cfg.replace(":", "-")
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    steps = [r for r in rows if "loss" in r and "eval_loss" not in r]
    evals = [r for r in rows if "eval_loss" in r]
    r = dict(losses=[s["loss"] for s in steps],
             tps=sum(s["tokens_per_s"] for s in steps[1:]) / max(1, len(steps) - 1),
             heldout=evals[-1]["eval_loss"] if evals else float("nan"), score="")
    if run == "task":
        ev = json.load(open(f"{out}/{name}.eval.json"))
        r["heldout"], r["score"] = ev["loss"], f"{ev['exact_match']}/{ev['answered']}"
    runs[cfg] = r
print(f"| compute (QLORA_SIMD) | steps | mean loss, first 10 | mean loss, last 10 | held-out loss | exact match | train tok/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for cfg, r in runs.items():
    l = r["losses"]
    print(f"| {cfg} | {len(l)} | {sum(l[:10]) / 10:.4f} | {sum(l[-10:]) / 10:.4f} | {r['heldout']:.4f} | "
          f"{r['score']} | {r['tps']:.1f} |")
base = runs.get("fp32")
for cfg, r in runs.items():
    if base is None or cfg == "fp32":
        continue
    n = min(len(base["losses"]), len(r["losses"]))
    gaps = []
    for w in range(0, n - n % 10, 10):
        a, b = sum(base["losses"][w:w + 10]) / 10, sum(r["losses"][w:w + 10]) / 10
        gaps.append((b - a) / a)
    print(f"\n- {cfg} vs fp32: 10-step mean training loss within {max(abs(g) for g in gaps) * 100:.2f}% over "
          f"{len(gaps)} windows (" + ", ".join(f"{g * 100:+.2f}%" for g in gaps) + f"); held-out loss "
          f"{(r['heldout'] - base['heldout']) / base['heldout'] * 100:+.2f}%")
PY
