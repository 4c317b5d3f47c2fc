#!/usr/bin/env bash
# Every GPU check in one run, for the device machine (one call of the device tool):
#   bash scripts/device_pack.sh       (here: builds, packs, strips and compresses into .devcarry/)
#   then, there, from the project root with carry [".devcarry"]:  bash scripts/device_check.sh
# Logs go to $OUT (the device tool brings them back): nvidia-smi, each test's output, the
# benchmark's JSON lines. Exits non-zero when a test failed.
set -uo pipefail
OUT=${OUT:-/tmp/qlora-device-out}
mkdir -p "$OUT"
# Programs and big libraries travel xz-compressed (the carried tree is at most 64 MiB): unpack
# them (Python's lzma: the image may lack the xz tool).
for f in .devcarry/lib/*.xz .devcarry/bin/*.xz; do
  [ -e "$f" ] && python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3],'wb'))" "$f" && rm -f "$f"
done
chmod +x .devcarry/bin/* 2>/dev/null || true
source .devcarry/env.sh
export QLORA_CLI=$PWD/.devcarry/bin/qlora OMP_WAIT_POLICY=passive
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia-smi.csv" 2>&1
cat "$OUT/nvidia-smi.csv"
rc=0
for t in test_cuda_kernels test_cuda_train_kernels test_cuda_family_kernels test_cuda_backend test_cuda_runner test_cuda_train; do
  timeout 240 "$t" --gtest_color=no 2>&1 | tee "$OUT/$t.log" | grep -E '^\[ +(OK|FAILED|SKIPPED|PASSED) |cuda vs cpu|cuda train|\[ cuda \]|Failure|Expected|expected|got |Which is|error' | head -80
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "$t FAILED"; rc=1; }
done
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout 300 bench_cuda_kernels ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_cuda_kernels.jsonl"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
fi

# Hugging Face models with random weights made here (.devcarry/smol: SmolLM2-135M's
# config.json and tokenizer files): the CUDA forward against the CPU on that shape, a
# GPU-trained adapter loaded by PEFT, and decode/training speed next to Hugging Face's.
if [ -d .devcarry/smol ]; then
  export PYTHONUNBUFFERED=1
  S=/tmp/smol-random TL=/tmp/tinyllama-random
  python3 bench/cuda/hf_random_model.py .devcarry/smol $S --dtype float32 2>&1 | tail -1 | tee -a "$OUT/hf.log"
  gen=(generate --prompt "Once upon a time" -n 128 --temperature 0 --double-quant --compute-dtype bf16 --device cuda)
  if [ "${HF_PARTS:-all}" = all ]; then
  QLORA_CUDA_HF_MODEL=$S timeout 300 test_cuda_runner --gtest_filter='*HfModel*' 2>&1 | grep -E 'cuda vs cpu|OK|FAILED' | tee -a "$OUT/hf.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  train=(train --model $S --data .devcarry/data/text/tinyshakespeare.txt --seq-len 256 --batch-size 4 --lora-r 16
         --double-quant --compute-dtype bf16 --overwrite-output-dir)
  timeout 300 qlora "${train[@]}" --out /tmp/ad-gpu --max-steps 10 --device cuda 2>&1 | grep -E 'trained|device|error' | tee -a "$OUT/hf.log"
  timeout 300 qlora "${train[@]}" --out /tmp/ad-cpu --max-steps 2 2>&1 | grep -E 'trained|error' | sed 's/^/cpu 16 cores: /' | tee -a "$OUT/hf.log"
  fi
  timeout 300 qlora "${gen[@]}" --model $S 2>&1 >/dev/null | grep -E 'tokens/s|device|error' | tee -a "$OUT/hf.log"
  [ "${HF_PARTS:-all}" = all ] && timeout 300 python3 bench/cuda/hf_compare.py $S /tmp/ad-gpu 128 2>&1 | grep -E '^\{|Error|error' | tee -a "$OUT/hf.log"
  python3 bench/cuda/hf_random_model.py .devcarry/smol $TL --hidden 2048 --layers 22 --ffn 5632 --heads 32 --kv-heads 4 2>&1 | tail -1 | tee -a "$OUT/hf.log"
  timeout 300 qlora "${gen[@]}" --model $TL 2>&1 >/dev/null | grep -E 'tokens/s|device|loaded|error' | tee -a "$OUT/hf.log"
  QLORA_CUDA_GRAPHS=0 timeout 300 qlora "${gen[@]}" --model $TL 2>&1 >/dev/null | grep -E 'generation|error' | sed 's/^/no graphs: /' | tee -a "$OUT/hf.log"
  # The same model through the block interpreter on the CUDA backend (every family's engine).
  QLORA_CUDA_ENGINE=backend timeout 300 qlora "${gen[@]}" --model $TL 2>&1 >/dev/null | grep -E 'generation|GPU memory|error' | sed 's/^/backend engine: /' | tee -a "$OUT/hf.log"
  QLORA_CUDA_ENGINE=backend qlora memory --model $TL --device cuda --mode generate --prompt-len 5 -n 128 --double-quant --compute-dtype bf16 2>&1 | tail -1 | sed 's/^/backend engine plan generate 1.1B: /' | tee -a "$OUT/hf.log"
  [ "${HF_PARTS:-all}" = all ] && QLORA_CUDA_ENGINE=backend timeout 300 qlora "${train[@]}" --out /tmp/ad-be --max-steps 10 --device cuda 2>&1 | grep -E 'trained|GPU memory|error' | sed 's/^/backend engine train 135M: /' | tee -a "$OUT/hf.log"
  QLORA_CUDA_ENGINE=backend qlora memory --model $S --device cuda --mode train --seq-len 256 --batch-size 4 --lora-r 16 --double-quant --compute-dtype bf16 2>&1 | tail -1 | sed 's/^/backend engine plan train 135M: /' | tee -a "$OUT/hf.log"
  timeout 300 qlora "${gen[@]/bf16/fp32}" --model $TL 2>&1 >/dev/null | grep -E 'generation|error' | sed 's/^/fp32: /' | tee -a "$OUT/hf.log"
  [ "${HF_PARTS:-all}" = all ] && timeout 300 python3 bench/cuda/hf_compare.py $TL - 128 2>&1 | grep -E '^\{|Error|error' | tee -a "$OUT/hf.log"
  # The memory planner's GPU engine against the measured peak (CUDA context + buffers).
  timeout 300 qlora "${gen[@]}" --model $TL 2>&1 >/dev/null | grep -E 'prompt:|GPU memory|error' | sed 's/^/generate 1.1B: /' | tee -a "$OUT/hf.log"
  qlora memory --model $TL --device cuda --mode generate --prompt-len 5 -n 128 --double-quant --compute-dtype bf16 2>&1 | tail -1 | sed 's/^/plan generate 1.1B: /' | tee -a "$OUT/hf.log"
  timeout 300 qlora train --model $S --data .devcarry/data/text/tinyshakespeare.txt --seq-len 256 --batch-size 4 --lora-r 16 \
    --double-quant --compute-dtype bf16 --overwrite-output-dir --out /tmp/ad-mem --max-steps 3 --device cuda 2>&1 | grep -E 'GPU memory|error' | sed 's/^/train 135M: /' | tee -a "$OUT/hf.log"
  qlora memory --model $S --device cuda --mode train --seq-len 256 --batch-size 4 --lora-r 16 --double-quant --compute-dtype bf16 2>&1 | tail -1 | sed 's/^/plan train 135M: /' | tee -a "$OUT/hf.log"
  timeout 300 qlora train --model $TL --data .devcarry/data/text/tinyshakespeare.txt --seq-len 1024 --batch-size 1 --lora-r 16 \
    --double-quant --compute-dtype bf16 --overwrite-output-dir --out /tmp/ad-mem2 --max-steps 3 --device cuda 2>&1 | grep -E 'GPU memory|trained|error' | sed 's/^/train 1.1B: /' | tee -a "$OUT/hf.log"
  qlora memory --model $TL --device cuda --mode train --seq-len 1024 --batch-size 1 --lora-r 16 --double-quant --compute-dtype bf16 2>&1 | tail -1 | sed 's/^/plan train 1.1B: /' | tee -a "$OUT/hf.log"
fi
exit $rc
