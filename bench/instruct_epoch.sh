#!/usr/bin/env bash
# One epoch of QLoRA on instruction-data.json: eval loss before and after, next to the same run
# in transformers + PEFT on float32 full-precision weights (the "16-bit LoRA" baseline as close as
# the CPU allows) — bench/RESULTS.md, issue item A ("QLoRA should come within a few percent").
#
#   bench/instruct_epoch.sh                                   # the full run (both stacks, 1 epoch)
#   QLORA_BENCH_FRACTION=0.02 QLORA_BENCH_MAX_STEPS=3 bench/instruct_epoch.sh   # smoke test
#
# Stacks (STACKS, default "qlora py-fp32"):
#   qlora       qlora train --quant nf4 --double-quant (fp32 compute): QLoRA
#   py-fp32     tools/bench_train_python.py epoch --stack fp32: transformers + PEFT, float32 weights
#   py-nf4      tools/bench_train_python.py epoch --stack bnb-nf4: QLoRA in Python (bitsandbytes NF4 +
#               double quant, fp32 compute) — the same method as the qlora row, a parity check
#   qlora-fp32  qlora train --quant none: qlora's LoRA on float32 weights, the twin of py-fp32
# all with identical settings: the first 90% of the records train (--eval-split 0.1 holds out the
# last 10%), QLoRA's Alpaca prompt, loss on response + EOS only, one sequence per example (no
# packing), seq-len 512, LoRA r 16 / alpha 16 / dropout 0.05 on all-linear, batch 4, grad accum 1,
# AdamW lr 5e-4 constant_with_warmup, warmup ratio 0.03, max_grad_norm 0.3, seed 42, 1 epoch
# (ceil(n_train / 4) steps; the last step's batch is filled from a reshuffle on both sides).
# Eval loss = sum of token losses over all held-out target tokens / their number, on both sides.
# The step-0 ("before") losses of qlora and py-nf4 agree to 4+ decimals (same NF4 weights), as do
# those of qlora-fp32 and py-fp32; nf4 and fp32 "before" differ by the 4-bit quantization error.
#
# With CROSS_EVAL=1 (default) each Python run's adapter is also evaluated by `qlora eval` (one
# more eval pass each), which must give that run's "after" loss: a check that both sides score alike.
#
# Environment: QLORA_BENCH_FRACTION (use only the first fraction of the records, default 1),
# QLORA_BENCH_MAX_STEPS (stop after that many steps; the lr schedule follows it, as --max-steps),
# STACKS, THREADS (default: all cores), DATA, MODEL, QLORA (binary, default build/qlora), PY
# (default .refenv/bin/python), OUT (work directory, default mktemp -d; logs, metrics, adapters).
# The hyperparameters can be changed through BATCH, GRAD_ACCUM, LR, SEQ, SCHED, WARMUP, MAX_GRAD_NORM,
# SEED, EPOCHS, LORA_R, LORA_ALPHA, LORA_DROPOUT (both stacks get the same values).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QLORA="${QLORA:-$ROOT/build/qlora}"
PY="${PY:-$ROOT/.refenv/bin/python}"
MODEL="${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${DATA:-$ROOT/../shared/data/text/instruction-data.json}"
FRACTION="${QLORA_BENCH_FRACTION:-1}"
MAX_STEPS="${QLORA_BENCH_MAX_STEPS:-0}"
STACKS="${STACKS:-qlora py-fp32}"
THREADS="${THREADS:-$(nproc)}"
BATCH="${BATCH:-4}" GRAD_ACCUM="${GRAD_ACCUM:-1}" LR="${LR:-5e-4}" SEQ="${SEQ:-512}"
SCHED="${SCHED:-constant_with_warmup}" WARMUP="${WARMUP:-0.03}" MAX_GRAD_NORM="${MAX_GRAD_NORM:-0.3}"
SEED="${SEED:-42}" EPOCHS="${EPOCHS:-1}" LORA_R="${LORA_R:-16}" LORA_ALPHA="${LORA_ALPHA:-16}"
LORA_DROPOUT="${LORA_DROPOUT:-0.05}"
OUT="${OUT:-$(mktemp -d /tmp/instruct_epoch.XXXXXX)}"
export OMP_WAIT_POLICY=passive

[[ -x "$QLORA" ]] || { echo "$QLORA: not built (cmake --build build --target qlora)" >&2; exit 1; }
[[ -x "$PY" ]] || { echo "$PY: no reference environment (tools/setup_refenv.sh)" >&2; exit 1; }
[[ -f "$MODEL" ]] || { echo "$MODEL: missing (scripts/fetch_model.sh)" >&2; exit 1; }
[[ -f "$DATA" ]] || { echo "$DATA: missing" >&2; exit 1; }
mkdir -p "$OUT"

# A fraction of the records: the first ceil(fraction * n), written to $OUT (both stacks read it,
# and each holds out the last 10% of it).
if [[ "$FRACTION" != "1" ]]; then
  SUB="$OUT/data-$FRACTION.json"
  "$PY" - "$DATA" "$FRACTION" "$SUB" <<'EOF'
import json, math, sys
recs = json.load(open(sys.argv[1], encoding="utf-8"))
k = max(1, math.ceil(float(sys.argv[2]) * len(recs)))
json.dump(recs[:k], open(sys.argv[3], "w", encoding="utf-8"), ensure_ascii=False)
print(f"QLORA_BENCH_FRACTION={sys.argv[2]}: the first {k} of {len(recs)} records -> {sys.argv[3]}", file=sys.stderr)
EOF
  DATA="$SUB"
fi

TIME=()
if [[ -x /usr/bin/time ]]; then TIME=(/usr/bin/time -o "$OUT/time.txt" -f "%M %e"); fi
STEPS_ARGS=(--epochs "$EPOCHS")
(( MAX_STEPS > 0 )) && STEPS_ARGS+=(--max-steps "$MAX_STEPS")
HP=(--seq-len "$SEQ" --batch-size "$BATCH" --grad-accum "$GRAD_ACCUM" --lr "$LR" --lr-scheduler "$SCHED"
    --warmup-ratio "$WARMUP" --max-grad-norm "$MAX_GRAD_NORM" --seed "$SEED" --lora-r "$LORA_R"
    --lora-alpha "$LORA_ALPHA" --lora-dropout "$LORA_DROPOUT" "${STEPS_ARGS[@]}")

ROWS=()  # JSON lines: {"stack", "before", "after", "steps", "tokens_per_s", "peak_rss_bytes", "wall_s"}

run_qlora() {  # name quant-args...
  local name=$1; shift
  local dir="$OUT/$name"
  rm -rf "$dir"
  local cmd=("$QLORA" train --model "$MODEL" "$@" --compute-dtype fp32 --data "$DATA" --data-format alpaca
             --eval-split 0.1 --target all-linear --gradient-checkpointing "${HP[@]}" -t "$THREADS" --out "$dir")
  echo "+ ${cmd[*]}" >&2
  local t0=$SECONDS
  "${TIME[@]}" "${cmd[@]}" > "$OUT/$name.log" 2>&1 || { tail -n 30 "$OUT/$name.log" >&2; exit 1; }
  local wall=$((SECONDS - t0)) peak_kb=""
  if [[ -f "$OUT/time.txt" ]]; then read -r peak_kb _ < <(tail -n 1 "$OUT/time.txt"); rm -f "$OUT/time.txt"; fi
  ROWS+=("$("$PY" - "$name" "$dir/metrics.jsonl" "$OUT/$name.log" "$peak_kb" "$wall" <<'EOF'
import json, re, sys
name, metrics, logf, peak_kb, wall = sys.argv[1:6]
lines = [json.loads(l) for l in open(metrics)]
evals = [l for l in lines if "eval_loss" in l]
steps = [l for l in lines if "tokens_per_s" in l]
peak = int(peak_kb) * 1024 if peak_kb else None
if peak is None:  # its own "peak memory (RSS): N MB" line
    m = re.search(r"peak memory \(RSS\): ([0-9.]+) (B|kB|MB|GB)", open(logf, errors="replace").read())
    peak = int(float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)]) if m else None
print(json.dumps({"stack": name, "before": evals[0]["eval_loss"], "after": evals[-1]["eval_loss"],
                  "eval_tokens": evals[0]["eval_tokens"], "steps": steps[-1]["step"],
                  "train_tokens": sum(s["tokens"] for s in steps),
                  "tokens_per_s": sum(s["tokens"] for s in steps) / steps[-1]["elapsed_s"],
                  "train_s": steps[-1]["elapsed_s"], "peak_rss_bytes": peak, "wall_s": float(wall)}))
EOF
)")
  echo "  $name: $(tail -c 300 <<< "${ROWS[-1]}")" >&2
}

run_python() {  # name stack
  local name=$1 stack=$2
  local cmd=("$PY" tools/bench_train_python.py epoch --stack "$stack" --data "$DATA" --eval-split 0.1 "${HP[@]}"
             --threads "$THREADS" --metrics "$OUT/$name.metrics.jsonl" --save-adapter "$OUT/$name-adapter")
  echo "+ OMP_NUM_THREADS=$THREADS ${cmd[*]}" >&2
  rm -f "$OUT/$name.metrics.jsonl"
  local t0=$SECONDS
  OMP_NUM_THREADS=$THREADS "${TIME[@]}" "${cmd[@]}" > "$OUT/$name.json" 2> "$OUT/$name.log" \
    || { tail -n 30 "$OUT/$name.log" >&2; exit 1; }
  local wall=$((SECONDS - t0)) peak_kb=""
  if [[ -f "$OUT/time.txt" ]]; then read -r peak_kb _ < <(tail -n 1 "$OUT/time.txt"); rm -f "$OUT/time.txt"; fi
  ROWS+=("$("$PY" - "$name" "$OUT/$name.json" "$peak_kb" "$wall" <<'EOF'
import json, sys
name, path, peak_kb, wall = sys.argv[1:5]
j = json.loads(open(path).read().strip().splitlines()[-1])
print(json.dumps({"stack": name, "before": j["eval_loss_before"], "after": j["eval_loss_after"],
                  "eval_tokens": j["eval_tokens"], "steps": j["steps"], "train_tokens": j["train_tokens"],
                  "tokens_per_s": j["tokens_per_s"], "train_s": j["train_s"],
                  "peak_rss_bytes": int(peak_kb) * 1024 if peak_kb else j["peak_rss_bytes"], "wall_s": float(wall)}))
EOF
)")
  echo "  $name: $(tail -c 300 <<< "${ROWS[-1]}")" >&2
}

for s in $STACKS; do
  case "$s" in
    qlora) run_qlora qlora --quant nf4 --double-quant ;;
    qlora-fp32) run_qlora qlora-fp32 --quant none ;;
    py-fp32) run_python py-fp32 fp32 ;;
    py-nf4) run_python py-nf4 bnb-nf4 ;;
    *) echo "unknown stack $s (qlora, qlora-fp32, py-fp32, py-nf4)" >&2; exit 1 ;;
  esac
done

# Cross-check: qlora's own eval of each Python run's saved PEFT adapter (same base weights), which
# must reproduce that run's "after" loss if both sides compute the same thing.
CROSS=()
if [[ "${CROSS_EVAL:-1}" == 1 ]]; then
  for s in $STACKS; do
    case "$s" in py-fp32) q=(--quant none) ;; py-nf4) q=(--quant nf4 --double-quant) ;; *) continue ;; esac
    [[ -d "$OUT/$s-adapter" ]] || continue
    loss=$("$QLORA" eval --model "$MODEL" "${q[@]}" --compute-dtype fp32 --adapter "$OUT/$s-adapter" --data "$DATA" \
             --data-format alpaca --eval-split 0.1 --seq-len "$SEQ" -t "$THREADS" --json -q |
           "$PY" -c 'import json, sys; print(json.loads(sys.stdin.read())["loss"])')
    CROSS+=("$s: qlora eval of its adapter gives $loss")
  done
fi

echo
echo "SmolLM2-135M-Instruct on $(basename "$DATA") (last 10% held out), LoRA r $LORA_R/alpha $LORA_ALPHA all-linear," \
     "batch $BATCH x accum $GRAD_ACCUM, lr $LR $SCHED, warmup $WARMUP, max_grad_norm $MAX_GRAD_NORM, seq $SEQ," \
     "seed $SEED, $( ((MAX_STEPS > 0)) && echo "max-steps $MAX_STEPS" || echo "$EPOCHS epoch(s)"), $THREADS threads;" \
     "$(date -u +%Y-%m-%dT%H:%MZ); logs in $OUT"
echo
printf '%s\n' "${ROWS[@]}" > "$OUT/rows.jsonl"
"$PY" - "$OUT/rows.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
label = {"qlora": "qlora.cpp QLoRA (NF4 + double quant)", "qlora-fp32": "qlora.cpp LoRA, fp32 weights",
         "py-fp32": "transformers + PEFT LoRA, fp32 weights (16-bit baseline)",
         "py-nf4": "transformers + PEFT + bnb QLoRA (NF4 + double quant)"}
mib = lambda b: f"{b / 2**20:.0f} MiB" if b else "?"
pct = lambda a, b: f"{100 * (a - b) / b:+.2f}%"
print("| stack | eval loss before | eval loss after | change | steps | train tokens/s | peak RSS | wall s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {label.get(r['stack'], r['stack'])} | {r['before']:.4f} | {r['after']:.4f} | "
          f"{r['after'] - r['before']:+.4f} | {r['steps']} | {r['tokens_per_s']:.1f} | {mib(r['peak_rss_bytes'])} | "
          f"{r['wall_s']:.0f} |")
by = {r["stack"]: r for r in rows}
print()
if rows:
    print(f"eval tokens: {rows[0]['eval_tokens']}")
base = by.get("py-fp32")
for name in ("qlora", "py-nf4", "qlora-fp32"):
    if base and name in by:
        q = by[name]
        print(f"{name} vs py-fp32: after the epoch {q['after']:.4f} vs {base['after']:.4f} = {pct(q['after'], base['after'])} "
              f"(before: {q['before']:.4f} vs {base['before']:.4f} = {pct(q['before'], base['before'])})")
if "qlora" in by and "py-nf4" in by:
    a, b = by["qlora"], by["py-nf4"]
    print(f"qlora vs py-nf4 (the same method): before {a['before']:.4f} vs {b['before']:.4f}, "
          f"after {a['after']:.4f} vs {b['after']:.4f} = {pct(a['after'], b['after'])}")
EOF
for c in "${CROSS[@]}"; do echo "$c"; done
