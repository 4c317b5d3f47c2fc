#!/usr/bin/env bash
# Hugging Face's published QLoRA memory table (LLaMA-7B/13B on T4s) with the planner's
# verdict next to each row, and the QLoRA paper's 33B-on-24GB / 65B-on-48GB cases with margins.
#   bash bench/memory_table.sh [BUILD_DIR]     (default build/)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
"$BUILD/qlora" memory --table
echo
echo "Breakdowns of the headline cases:"
"$BUILD/qlora" memory --params 33B --engine pytorch-cuda --quant nf4 --double-quant --compute-dtype bf16 \
  --lora-r 64 --target all-linear --lora-dtype bf16 --seq-len 512 --optim paged_adamw_32bit --gpu-memory 24GiB
echo
"$BUILD/qlora" memory --params 65B --engine pytorch-cuda --quant nf4 --double-quant --compute-dtype bf16 \
  --lora-r 64 --target all-linear --lora-dtype bf16 --seq-len 512 --optim paged_adamw_32bit --gpu-memory 48GiB
