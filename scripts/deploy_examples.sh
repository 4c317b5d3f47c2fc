#!/usr/bin/env bash
# Taking a fine-tune where people use it: the README's "Take the fine-tune elsewhere"
# commands, runnable as they are (tests/docs run this script; keep the two in step).
# Defaults: the main job's model and adapter. Override with MODEL=, ADAPTER=, OUT=, QLORA=.
set -euo pipefail
cd "$(dirname "$0")/.."
QLORA=${QLORA:-build/qlora}
M=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
A=${ADAPTER:-out/smollm2-categories}
OUT=${OUT:-out}
Q=(--quant nf4 --double-quant)   # the base quantization the adapter was trained on
mkdir -p "$OUT"

# llama.cpp / Ollama: one merged GGUF ...
"$QLORA" merge --model "$M" "${Q[@]}" --adapter "$A" --out "$OUT/merged-q8_0.gguf" --gguf-type q8_0 --overwrite
# ... or the base GGUF plus the adapter alone
"$QLORA" export-adapter "$A" --model "$M" "${Q[@]}" --out "$OUT/adapter.gguf" --overwrite
#   llama-cli -m out/merged-q8_0.gguf -cnv        or   llama-cli -m BASE.gguf --lora out/adapter.gguf -cnv
#   Ollama:  printf 'FROM ./merged-q8_0.gguf\n' > out/Modelfile && ollama create my-model -f out/Modelfile

# transformers / vLLM: a Hugging Face directory
"$QLORA" merge --model "$M" "${Q[@]}" --adapter "$A" --out "$OUT/merged-hf" --dtype bf16 --overwrite
#   AutoModelForCausalLM.from_pretrained("out/merged-hf")      or   vllm serve out/merged-hf

# the merged GGUF runs here too
"$QLORA" generate --model "$OUT/merged-q8_0.gguf" --quant none --chat --prompt "Say hello." -n 12 --temperature 0 --quiet

# An OpenAI-compatible server with the adapter unmerged, as model "tuned" (Ctrl-C stops it):
#   qlora serve --model MODEL --quant nf4 --double-quant --adapter tuned=ADAPTER --port 8080
#   curl http://127.0.0.1:8080/v1/chat/completions -d '{"model": "tuned", "messages": [{"role": "user", "content": "Hi"}]}'
if [[ "${DEPLOY_EXAMPLES_SERVE:-1}" == 1 ]]; then
  "$QLORA" serve --model "$M" "${Q[@]}" --adapter tuned="$A" --port 0 --quiet 2> "$OUT/serve.log" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  port=""
  for _ in $(seq 1 100); do
    port=$(grep -o '127.0.0.1:[0-9]*' "$OUT/serve.log" 2>/dev/null | head -1 | cut -d: -f2 || true)
    [[ -n "$port" ]] && break
    sleep 0.1
  done
  [[ -n "$port" ]] || { echo "serve did not start: $(cat "$OUT/serve.log")" >&2; exit 1; }
  curl -sf "http://127.0.0.1:$port/v1/chat/completions" \
    -d '{"model": "tuned", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}'
  echo
  kill -TERM $pid
  wait $pid
  trap - EXIT
fi
echo "deploy examples: OK"
