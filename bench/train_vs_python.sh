#!/usr/bin/env bash
# Training throughput and peak memory: qlora.cpp next to transformers + PEFT on the same model,
# sequence length, batch and thread count, in the same run (bench/RESULTS.md, issue item B).
#
#   bench/train_vs_python.sh                 # SmolLM2-135M, batch 2, seq 256, r 16 all-linear, 6 steps, 2 and 1 threads
#   STEPS=3 SEQ=64 BATCH=1 THREADS="1" bench/train_vs_python.sh   # a quick smoke run
#   MODEL=models/bench-olmoe PY_MODEL_DIR=models/bench-olmoe LORA_DROPOUT=0 QLORA_COMPUTE=bf16 PY_COMPUTE=bf16 \
#     STACKS="qlora py-nf4" THREADS=2 STEPS=4 bench/train_vs_python.sh   # an MoE model (tools/make_family_bench_models.py)
#
# Every configuration runs, one after the other:
#   qlora     `qlora train --quant nf4 --double-quant` (fp32 compute, gradient checkpointing on,
#             AdamW) on Tiny Shakespeare cut into seq-len chunks, --max-steps STEPS
#   qlora-default  the same without a checkpointing flag: qlora's default (auto: off when the
#             run fits without it), the row says which it chose
#   py-nf4    tools/bench_train_python.py speed --stack bnb-nf4: transformers + bitsandbytes NF4
#             (double quant, fp32 compute) + PEFT, gradient checkpointing, AdamW: QLoRA in Python
#   py-fp32   tools/bench_train_python.py speed --stack fp32: the same on float32 weights
# with the same data (Tiny Shakespeare tokenized the same way, BATCH x SEQ tokens per step), LoRA
# r 16 / alpha 16 / dropout 0.05 on all-linear (210 modules, 4.88 M trainable parameters on both
# sides), lr 2e-4 constant_with_warmup, max_grad_norm 0.3, seed 42.
# tokens/s excludes step 1 (warm-up) on both sides: tokens of steps 2..N / time of steps 2..N
# (qlora: from its metrics.jsonl elapsed_s; Python: per-step timers around the same work).
# Peak RSS: the whole process's maximum resident set (getrusage ru_maxrss, as /usr/bin/time -v
# "Maximum resident set size" reports it, including model loading and, for Python, the torch /
# transformers libraries); "train RSS" is the largest RSS sampled right after a training step
# (qlora metrics.jsonl rss_bytes; Python /proc/self/statm), i.e. the steady state of training.
# CPU s is user+sys CPU time of the whole process (loading included) from /usr/bin/time, a
# check on how much of the 2 shared cores each side actually got.
#
# Environment: QLORA (binary, default build/qlora), PY (default .refenv/bin/python), MODEL (GGUF),
# TEXT (training text), STEPS (6), SEQ (256), BATCH (2), THREADS ("2 1"), STACKS ("qlora qlora-default py-nf4
# py-fp32"), GRADIENT_CHECKPOINTING (1; 0 turns it off on every side), OUT (work directory,
# default a fresh mktemp -d; logs and metrics stay there).
# OMP_WAIT_POLICY=passive is set for every run (idle OpenMP threads must not spin on a shared box).
set -euo pipefail
# qlora's compute dtype (fp32; QLORA_COMPUTE=bf16 on CPUs with AMX tiles or AVX-512 BF16, where train picks it)
QLORA_COMPUTE=${QLORA_COMPUTE:-fp32}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QLORA="${QLORA:-$ROOT/build/qlora}"
PY="${PY:-$ROOT/.refenv/bin/python}"
MODEL="${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
TEXT="${TEXT:-$ROOT/../shared/data/text/tinyshakespeare.txt}"
STEPS="${STEPS:-6}"
SEQ="${SEQ:-256}"
BATCH="${BATCH:-2}"
THREADS="${THREADS:-2 1}"
STACKS="${STACKS:-qlora qlora-default py-nf4 py-fp32}"
OUT="${OUT:-$(mktemp -d /tmp/train_vs_python.XXXXXX)}"
export OMP_WAIT_POLICY=passive

[[ -x "$QLORA" ]] || { echo "$QLORA: not built (cmake --build build --target qlora)" >&2; exit 1; }
[[ -x "$PY" ]] || { echo "$PY: no reference environment (tools/setup_refenv.sh)" >&2; exit 1; }
[[ -e "$MODEL" ]] || { echo "$MODEL: missing (scripts/fetch_model.sh)" >&2; exit 1; }
[[ -f "$TEXT" ]] || { echo "$TEXT: missing" >&2; exit 1; }
(( STEPS >= 2 )) || { echo "STEPS must be >= 2 (step 1 is excluded as warm-up)" >&2; exit 1; }
mkdir -p "$OUT"

TIME=()
if [[ -x /usr/bin/time ]]; then TIME=(/usr/bin/time -o "$OUT/time.txt" -f "%M %e %U %S"); fi

# Reads /usr/bin/time's line: sets MAXRSS_KB, WALL, CPU (user+sys); empty without /usr/bin/time.
read_time() {
  MAXRSS_KB="" WALL="" CPU=""
  [[ -f "$OUT/time.txt" ]] || return 0
  read -r MAXRSS_KB WALL U S < <(tail -n 1 "$OUT/time.txt")
  CPU=$(awk -v u="$U" -v s="$S" 'BEGIN { printf "%.1f", u + s }')
  rm -f "$OUT/time.txt"
}

ROWS=()  # "threads|stack|tok/s|peak bytes|train rss bytes|cpu s|wall s"
COMMON_LORA=(--lora-r 16 --lora-alpha 16 --lora-dropout "${LORA_DROPOUT:-0.05}")
# TARGET_PARAMETERS=gate_up_proj,down_proj: LoRA on MoE experts too, on both sides (PEFT's target_parameters)
[[ -n "${TARGET_PARAMETERS:-}" ]] && COMMON_LORA+=(--target-parameters "$TARGET_PARAMETERS")
# TARGET=q_proj,k_proj,v_proj,o_proj: other target modules than all-linear, on both sides (Llama 4:
# PEFT 0.21's all-linear fails on its router)
TARGET="${TARGET:-all-linear}"
# PY_MODEL_DIR: the Python side's Hugging Face directory when MODEL is not the SmolLM2 GGUF
# (MODEL itself, for a directory); PY_COMPUTE: bitsandbytes' compute dtype for py-nf4.
PY_MODEL_ARGS=()
[[ -n "${PY_MODEL_DIR:-}" ]] && PY_MODEL_ARGS=(--model-dir "$PY_MODEL_DIR")
# qlora gets the setting explicitly (its own default is auto: off when the run fits without
# it); the stack qlora-default passes neither flag. Python checkpoints unless told not to.
QLORA_GC_ARGS=(--gradient-checkpointing)
PY_GC_ARGS=()
if [[ "${GRADIENT_CHECKPOINTING:-1}" == 0 ]]; then
  QLORA_GC_ARGS=(--no-gradient-checkpointing)
  PY_GC_ARGS=(--no-gradient-checkpointing)
fi

run_qlora() {  # threads, label, checkpointing flags...
  local t=$1 label=$2; shift 2
  local dir="$OUT/$label-t$t"
  rm -rf "$dir"
  local cmd=("$QLORA" train --model "$MODEL" --quant nf4 --double-quant --compute-dtype "$QLORA_COMPUTE" --data "$TEXT"
             --seq-len "$SEQ" --batch-size "$BATCH" --max-steps "$STEPS" "${COMMON_LORA[@]}" --target "$TARGET"
             --lr 2e-4 --lr-scheduler constant_with_warmup --warmup-ratio 0.03 --max-grad-norm 0.3 --seed 42
             "$@" -t "$t" --out "$dir")
  echo "+ ${cmd[*]}" >&2
  "${TIME[@]}" "${cmd[@]}" > "$OUT/$label-t$t.log" 2>&1 || { cat "$OUT/$label-t$t.log" >&2; exit 1; }
  read_time
  # tokens/s without step 1; peak RSS from its own "peak memory (RSS)" line when /usr/bin/time is absent.
  local stats
  stats=$("$PY" - "$dir/metrics.jsonl" "$OUT/$label-t$t.log" <<'EOF'
import json, re, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
first, last = steps[0], steps[-1]
tok = sum(s["tokens"] for s in steps[1:])
tps = tok / (last["elapsed_s"] - first["elapsed_s"])
rss = max(s["rss_bytes"] for s in steps)
peak = ""
m = re.search(r"peak memory \(RSS\): ([0-9.]+) (B|kB|KB|KiB|MB|MiB|GB|GiB)", open(sys.argv[2], errors="replace").read())
if m:
    mult = {"B": 1, "kB": 1e3, "KB": 1e3, "KiB": 1024, "MB": 1e6, "MiB": 2**20, "GB": 1e9, "GiB": 2**30}[m.group(2)]
    peak = str(int(float(m.group(1)) * mult))
print(f"{tps:.2f} {rss} {peak} {len(steps)}")
EOF
)
  local tps rss peak n
  read -r tps rss peak n <<< "$stats"
  [[ "$n" == "$STEPS" ]] || { echo "qlora: $n steps in metrics.jsonl, expected $STEPS" >&2; exit 1; }
  [[ -n "$MAXRSS_KB" ]] && peak=$((MAXRSS_KB * 1024))
  local name="qlora (nf4 + double quant)"
  [[ $label == qlora-default ]] && name="qlora (nf4 + double quant), default checkpointing: $(grep -o 'gradient checkpointing: [a-z]*' "$OUT/$label-t$t.log" | head -1 | cut -d' ' -f3) (auto)"
  ROWS+=("$t|$name|$tps|$peak|$rss|${CPU:-?}|${WALL:-?}")
  echo "  $name, $t threads: $tps tokens/s, peak RSS $peak B" >&2
}

run_python() {
  local t=$1 stack=$2 name=$3
  local cmd=("$PY" tools/bench_train_python.py speed --stack "$stack" "${PY_MODEL_ARGS[@]}" --batch-size "$BATCH" --seq-len "$SEQ"
             --steps "$STEPS" "${COMMON_LORA[@]}" --lr 2e-4 --lr-scheduler constant_with_warmup --warmup-ratio 0.03
             --max-grad-norm 0.3 --seed 42 "${PY_GC_ARGS[@]}" --threads "$t" --text "$TEXT" --target-modules "$TARGET")
  [[ $stack == bnb-nf4 ]] && cmd+=(--compute-dtype "${PY_COMPUTE:-fp32}")
  echo "+ OMP_NUM_THREADS=$t ${cmd[*]}" >&2
  OMP_NUM_THREADS=$t "${TIME[@]}" "${cmd[@]}" > "$OUT/$stack-t$t.json" 2> "$OUT/$stack-t$t.log" \
    || { cat "$OUT/$stack-t$t.log" >&2; exit 1; }
  read_time
  local tps peak rss
  read -r tps peak rss < <("$PY" -c '
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(j["tokens_per_s"], j["peak_rss_bytes"], j["step_rss_max_bytes"])' "$OUT/$stack-t$t.json")
  [[ -n "$MAXRSS_KB" ]] && peak=$((MAXRSS_KB * 1024))
  ROWS+=("$t|$name|$tps|$peak|$rss|${CPU:-?}|${WALL:-?}")
  echo "  $name, $t threads: $tps tokens/s, peak RSS $peak B" >&2
}

for t in $THREADS; do
  for s in $STACKS; do
    case "$s" in
      qlora) run_qlora "$t" qlora "${QLORA_GC_ARGS[@]}" ;;
      qlora-default) run_qlora "$t" qlora-default ;;
      py-nf4) run_python "$t" bnb-nf4 "transformers + PEFT + bnb NF4 (QLoRA)" ;;
      py-fp32) run_python "$t" fp32 "transformers + PEFT, fp32 weights" ;;
      *) echo "unknown stack $s (qlora, qlora-default, py-nf4, py-fp32)" >&2; exit 1 ;;
    esac
  done
done

echo
echo "$(basename "$MODEL"), batch $BATCH x seq $SEQ ($((BATCH * SEQ)) tokens/step), LoRA r 16 all-linear, dropout ${LORA_DROPOUT:-0.05}," \
     "$STEPS steps (tokens/s over steps 2..$STEPS), gradient checkpointing ${GRADIENT_CHECKPOINTING:-1}, compute: qlora $QLORA_COMPUTE, bnb ${PY_COMPUTE:-fp32}; $(date -u +%Y-%m-%dT%H:%MZ)," \
     "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); logs in $OUT"
echo
printf '%s\n' "${ROWS[@]}" | "$PY" -c '
import sys
rows = [l.rstrip("\n").split("|") for l in sys.stdin if l.strip()]
mib = lambda b: f"{int(b) / 2**20:.0f} MiB" if b not in ("", "?") else "?"
print("| threads | stack | tokens/s | peak RSS | train RSS | CPU s | wall s | qlora tokens/s ÷ this | qlora peak RSS ÷ this |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for t, name, tps, peak, rss, cpu, wall in rows:
    q = next((r for r in rows if r[0] == t and r[1].startswith("qlora")), None)
    if q and not name.startswith("qlora"):
        speed = f"{float(q[2]) / float(tps):.2f}×"
        mem = f"{int(q[3]) / int(peak):.2f}×" if q[3] and peak else "?"
    else:
        speed = mem = ""
    print(f"| {t} | {name} | {float(tps):.1f} | {mib(peak)} | {mib(rss)} | {cpu} | {wall} | {speed} | {mem} |")
# Every qlora row against every Python row of the same thread count.
print()
for t, name, tps, peak, rss, cpu, wall in rows:
    if not name.startswith("qlora"):
        continue
    for t2, name2, tps2, peak2, *_ in rows:
        if t2 == t and not name2.startswith("qlora"):
            mem = f"{int(peak) / int(peak2):.2f}x" if peak and peak2 else "?"
            print(f"- {t} threads: {name} / {name2}: {float(tps) / float(tps2):.2f}x tokens/s, {mem} peak RSS")
'
