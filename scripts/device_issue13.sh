#!/usr/bin/env bash
# Issue 13's side-by-side measurements in ONE device call (the GPU machine has 15 minutes per
# session): qlora.cpp against transformers + PEFT + bitsandbytes on Llama shapes with random
# weights (say so wherever these numbers go), JSON lines into $OUT/issue13.jsonl.
#
# Here, before the call:
#   bash scripts/build_cuda.sh
#   bash ../shared/device/pack.sh build-cuda qlora; strip .devcarry/bin/*; xz -T2 .devcarry/lib/libdnnl.so.2
#   mkdir -p .devcarry/data/text; cp ../shared/data/text/tinyshakespeare.txt .devcarry/data/text/
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2   # (the device README)
# Then: device tool, carry [".devcarry", ".whl"], command `bash scripts/device_issue13.sh`.
#   PARTS="train decode scale" (default all) picks what runs; STEPS (default 6) timed steps.
set -uo pipefail
OUT=${OUT:-/tmp/qlora-device-out}
mkdir -p "$OUT"
J="$OUT/issue13.jsonl"
for f in .devcarry/lib/*.xz; do
  [ -e "$f" ] && python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3],'wb'))" "$f" && rm -f "$f"
done
source .devcarry/env.sh
export OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site
fi
PARTS=${PARTS:-"train decode scale"}
STEPS=${STEPS:-6}
DATA=.devcarry/data/text/tinyshakespeare.txt
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/nvidia-smi.csv"

# Steady-state tokens/s of a qlora run: the steps after the first two, from metrics.jsonl.
steady() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
a, b = rows[1], rows[-1]
tok = sum(r["tokens"] for r in rows[2:])
print(json.dumps({"bench": "qlora_train", "label": sys.argv[2], "steps_timed": len(rows) - 2,
                  "tok_per_s": round(tok / (b["elapsed_s"] - a["elapsed_s"]), 1),
                  "gpu_peak_gib": round(max(r.get("gpu_peak_bytes", 0) for r in rows) / 2**30, 3),
                  "rss_gib": round(max(r["rss_bytes"] for r in rows) / 2**30, 3), "random_weights": True}))
EOF
}

qtrain() {  # label model batch seq [extra args...]
  local label=$1 model=$2 b=$3 s=$4
  shift 4
  local dir=/tmp/q13-$label
  timeout 400 qlora train --model "$model" --data $DATA --out $dir --overwrite-output-dir --max-steps $((STEPS + 2)) \
    --batch-size $b --seq-len $s --lora-r 16 --lora-alpha 32 --target all-linear --double-quant --compute-dtype bf16 \
    --optim paged_adamw_32bit --gradient-checkpointing --device cuda "$@" > "$OUT/$label.log" 2>&1
  local rc=$?
  grep -E 'GPU memory|error|plan' "$OUT/$label.log" | tail -3
  if [ $rc -eq 0 ]; then steady $dir "$label" | tee -a "$J"; else echo "{\"bench\": \"qlora_train\", \"label\": \"$label\", \"rc\": $rc}" | tee -a "$J"; fi
  qlora memory --model "$model" --device cuda --mode train --batch-size $b --seq-len $s --lora-r 16 --double-quant \
    --compute-dtype bf16 --optim paged_adamw_32bit 2>&1 | tail -1 | sed "s/^/plan $label: /" | tee -a "$OUT/plans.log"
}

ptrain() {  # mode shape batch seq
  timeout 400 python3 tools/bench_qlora_python.py --mode $1 --shape $2 --batch $3 --seq $4 --steps $STEPS 2>"$OUT/py-$1-$2-$3x$4.err" |
    tee -a "$J"
}

if [[ " $PARTS " == *" train "* ]]; then
  for bs in "1 512" "1 2048" "8 512"; do
    set -- $bs
    qtrain "7b-${1}x${2}" random:llama-7b $1 $2
    ptrain qlora llama-7b $1 $2
  done
  ptrain lora16 llama-7b 1 512
  qtrain "135m-4x256" random:smollm2-135m 4 256
  ptrain qlora smollm2-135m 4 256
fi

if [[ " $PARTS " == *" decode "* ]]; then
  timeout 300 qlora generate --model random:llama-7b --double-quant --compute-dtype bf16 --prompt "Once upon a time" \
    -n 128 --temperature 0 --device cuda 2>&1 >/dev/null | grep -E 'prompt:|generation|GPU memory|error' | tee "$OUT/decode-7b.log"
  python3 - "$OUT/decode-7b.log" <<'EOF' | tee -a "$J"
import json, re, sys
t = open(sys.argv[1]).read()
m = re.search(r"generation: (\d+) tokens.*\(([\d.]+) tokens/s\)", t)
print(json.dumps({"bench": "qlora_generate", "shape": "llama-7b", "weights": "nf4+dq",
                  "tok_per_s": float(m.group(2)) if m else None, "random_weights": True}))
EOF
  timeout 300 python3 tools/bench_qlora_python.py --mode generate --shape llama-7b -n 128 2>/dev/null | tee -a "$J"
  timeout 300 python3 tools/bench_qlora_python.py --mode generate --shape llama-7b -n 128 --bf16-weights 2>/dev/null | tee -a "$J"
fi

if [[ " $PARTS " == *" scale "* ]]; then
  # The QLoRA announcement's promise: 65B on one 48 GB GPU, 33B on 24 GB.
  qtrain "65b-1x512-48GB" random:llama-65b 1 512 --max-memory 48GB
  qtrain "33b-1x512-24GB" random:llama-33b 1 512 --max-memory 24GB
fi
echo done
