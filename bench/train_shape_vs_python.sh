#!/usr/bin/env bash
# QLoRA training speed and peak memory on a RANDOM-weight Llama shape (tinyllama-1.1b by
# default): qlora.cpp next to transformers + PEFT + bitsandbytes, in the same run, on the CPU.
# Random weights because models of these shapes are not files here; loss values mean nothing,
# only tokens/s and memory do.
#
#   bench/train_shape_vs_python.sh                               # tinyllama-1.1b, batch 1 x 256, 2 threads
#   SHAPE=smollm2-135m BATCH=2 SEQ=256 bench/train_shape_vs_python.sh
#   QLORA_COMPUTE="fp32 bf16" PY_DTYPES=bf16 bench/train_shape_vs_python.sh   # both qlora dtypes vs the bf16 QLoRA recipe
#
# Rows, one after the other:
#   qlora ckpt-DT  qlora train --model random:SHAPE --quant nf4 --double-quant --compute-dtype DT (each of QLORA_COMPUTE)
#                  --gradient-checkpointing, LoRA r 16 alpha 32 dropout 0.05 all-linear, AdamW
#   qlora default-DT  the same with no checkpointing flag (auto: off when the run fits without it)
#   python DTYPE   tools/bench_qlora_python.py --device cpu --mode qlora --compute-dtype DTYPE: the
#                  QLoRA recipe (NF4 + double quant, prepare_model_for_kbit_training, gradient
#                  checkpointing, the same LoRA), random weights built in that dtype
# tokens/s: qlora over steps 2..STEPS from metrics.jsonl; Python the median of STEPS-1 timed
# steps after one warm-up. Peak: the process's maximum RSS (qlora: /usr/bin/time or its own
# report; Python: ru_maxrss, which includes building the random model in DTYPE).
# OMP_WAIT_POLICY=passive on every run.
set -euo pipefail
# qlora's compute dtypes, each run in turn (QLORA_COMPUTE="fp32 bf16": both, side by side)
QLORA_COMPUTE=${QLORA_COMPUTE:-fp32}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QLORA="${QLORA:-$ROOT/build/qlora}"
PY="${PY:-$ROOT/.refenv/bin/python}"
TEXT="${TEXT:-$ROOT/../shared/data/text/tinyshakespeare.txt}"
SHAPE="${SHAPE:-tinyllama-1.1b}"
BATCH="${BATCH:-1}"
SEQ="${SEQ:-256}"
STEPS="${STEPS:-4}"
THREADS="${THREADS:-2}"
PY_DTYPES="${PY_DTYPES:-fp32}"
OUT="${OUT:-$(mktemp -d /tmp/train_shape.XXXXXX)}"
export OMP_WAIT_POLICY=passive
mkdir -p "$OUT"
[[ -x $QLORA ]] || { echo "missing $QLORA: bash scripts/build.sh" >&2; exit 1; }
"$PY" -c "import bitsandbytes, peft, transformers" 2>/dev/null || { echo "Python stack missing: bash tools/setup_refenv.sh" >&2; exit 1; }
echo "# results in $OUT; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

ROWS=()  # label|tok/s|peak bytes
run_qlora() {  # label, compute dtype, flags...
  local label=$1; shift
  local dir="$OUT/$label"
  rm -rf "$dir"
  local qc=$1; shift
  local cmd=("$QLORA" train --model "random:$SHAPE" --quant nf4 --double-quant --compute-dtype "$qc" --data "$TEXT"
             --seq-len "$SEQ" --batch-size "$BATCH" --max-steps "$STEPS" --lora-r 16 --lora-alpha 32
             --lora-dropout 0.05 --target all-linear --lr 2e-4 -t "$THREADS" --out "$dir" "$@")
  echo "+ ${cmd[*]}" >&2
  "${cmd[@]}" > "$OUT/$label.log" 2>&1 || { tail -n 20 "$OUT/$label.log" >&2; exit 1; }
  local row
  row=$("$PY" - "$dir/metrics.jsonl" "$OUT/$label.log" <<'PYEOF'
import json, re, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
tps = sum(s["tokens"] for s in steps[1:]) / (steps[-1]["elapsed_s"] - steps[0]["elapsed_s"])
log = open(sys.argv[2], errors="replace").read()
m = re.search(r"peak memory \(RSS\): ([0-9.]+) (MB|GB)", log)
peak = int(float(m.group(1)) * (1e6 if m.group(2) == "MB" else 1e9)) if m else 0
g = re.search(r"gradient checkpointing: (\w+)", log)
print(f"{tps:.2f}|{peak}|{g.group(1) if g else ''}")
PYEOF
)
  local tps=${row%%|*} rest=${row#*|}
  local peak=${rest%%|*} auto=${rest#*|}
  [[ -n $auto ]] && label="$label (auto: $auto)"
  ROWS+=("qlora $label|$tps|$peak")
  echo "  qlora $label: $tps tok/s, peak $peak B" >&2
}
run_python() {  # dtype
  local dt=$1
  local cmd=("$PY" tools/bench_qlora_python.py --shape "$SHAPE" --device cpu --mode qlora --batch "$BATCH"
             --seq "$SEQ" --warmup 1 --steps $((STEPS - 1)) --compute-dtype "$dt")
  echo "+ OMP_NUM_THREADS=$THREADS ${cmd[*]}" >&2
  OMP_NUM_THREADS=$THREADS "${cmd[@]}" > "$OUT/python-$dt.json" 2> "$OUT/python-$dt.log" \
    || { tail -n 20 "$OUT/python-$dt.log" >&2; exit 1; }
  local row
  row=$("$PY" -c 'import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(str(j["tok_per_s"]) + "|" + str(int(j["peak_gib"] * 2**30)))' "$OUT/python-$dt.json")
  ROWS+=("transformers + PEFT + bnb QLoRA, $dt compute|$row")
  echo "  python $dt: $row" >&2
}

for qc in $QLORA_COMPUTE; do
  run_qlora "ckpt-$qc" "$qc" --gradient-checkpointing
  run_qlora "default-$qc" "$qc"
done
for dt in $PY_DTYPES; do run_python "$dt"; done

echo
echo "random:$SHAPE (random weights), batch $BATCH x seq $SEQ, LoRA r 16 all-linear, $THREADS threads, $STEPS steps;" \
     "$(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg); logs in $OUT"
echo
printf '%s\n' "${ROWS[@]}" | "$PY" -c '
import sys
rows = [l.rstrip("\n").split("|") for l in sys.stdin if l.strip()]
print("| stack | tokens/s | peak RSS |")
print("|---|---:|---:|")
for name, tps, peak in rows:
    print(f"| {name} | {float(tps):.1f} | {int(peak) / 2**30:.2f} GiB |")
print()
for name, tps, peak in rows:
    if name.startswith("qlora"):
        for n2, t2, p2 in rows:
            if not n2.startswith("qlora"):
                print(f"- {name} / {n2}: {float(tps) / float(t2):.2f}x tokens/s, {int(peak) / int(p2):.2f}x peak RSS")
'
