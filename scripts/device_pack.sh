#!/usr/bin/env bash
# Prepares .devcarry/ for one call of the device tool that runs scripts/device_check.sh on a
# lent GPU machine (carry [".devcarry"]; the carried tree may be at most 64 MiB):
#   1. builds the CUDA programs (scripts/build_cuda.sh, into build-cuda/);
#   2. packs them with ../shared/device/pack.sh (programs, the libraries the device image
#      lacks, stories260K);
#   3. strips the programs and compresses them and oneDNN with xz: the eight programs link
#      the whole engine statically and came to 57 MiB stripped (2026-12-05), past the limit
#      with the libraries; device_check.sh unpacks every .xz before it starts;
#   4. adds Tiny Shakespeare and SmolLM2-135M's config.json and tokenizer files (.devcarry/smol:
#      the Hugging Face models with random weights that device_check.sh makes there take their
#      shape and tokenizer from it). SMOLLM2_HF_DIR names a Hugging Face directory of the
#      default model to take them from; without it, one is made here with a one-step adapter
#      and `qlora merge` (a minute; only its small files travel).
# Then, with the device tool: command "bash scripts/device_check.sh", carry [".devcarry"].
#   bash scripts/device_pack.sh
#   SMOLLM2_HF_DIR=/path/to/hf-dir bash scripts/device_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
shared=$root/../shared
[ -x "$shared/device/pack.sh" ] || [ -f "$shared/device/pack.sh" ] ||
  { echo "device_pack: $shared/device/pack.sh not found (the project must sit next to shared/)" >&2; exit 1; }
programs=(qlora test_cuda_kernels test_cuda_train_kernels test_cuda_family_kernels test_cuda_backend
          test_cuda_runner test_cuda_train bench_cuda_kernels)

echo "[device_pack] 1/4 building the CUDA programs" >&2
bash scripts/build_cuda.sh

echo "[device_pack] 2/4 packing" >&2
bash "$shared/device/pack.sh" build-cuda "${programs[@]}" >/dev/null 2>&1 || true  # stops at its size check
[ -f .devcarry/env.sh ] && [ -f .devcarry/bin/qlora ] || { echo "device_pack: pack.sh did not produce .devcarry/" >&2; exit 1; }

echo "[device_pack] 3/4 strip + xz" >&2
strip .devcarry/bin/*
xz -T"$(nproc)" -6 .devcarry/bin/* .devcarry/lib/libdnnl.so.*

echo "[device_pack] 4/4 data and SmolLM2's config/tokenizer" >&2
mkdir -p .devcarry/data/text .devcarry/smol
cp "$shared/data/text/tinyshakespeare.txt" .devcarry/data/text/
hf=${SMOLLM2_HF_DIR:-}
if [ -z "$hf" ]; then
  model=models/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f "$model" ] || bash scripts/fetch_model.sh
  tmp=$(mktemp -d /tmp/device_pack.XXXXXX)
  OMP_WAIT_POLICY=passive build-cuda/qlora train --model "$model" --data "$shared/data/text/tinyshakespeare.txt" \
    --max-steps 1 --seq-len 32 --batch-size 1 --quiet --out "$tmp/adapter" >/dev/null
  OMP_WAIT_POLICY=passive build-cuda/qlora merge --model "$model" --adapter "$tmp/adapter" --out "$tmp/hf" --quiet >/dev/null
  hf=$tmp/hf
fi
for f in config.json tokenizer.json tokenizer_config.json generation_config.json; do
  [ -f "$hf/$f" ] && cp "$hf/$f" .devcarry/smol/
done
[ -f .devcarry/smol/config.json ] || { echo "device_pack: no config.json in $hf" >&2; exit 1; }

size=$(du -sm .devcarry | cut -f1)
echo "[device_pack] .devcarry/: ${size} MiB (the device tool carries at most 64)" >&2
[ "$size" -le 64 ] || { echo "device_pack: too big to travel" >&2; exit 1; }
