#!/usr/bin/env bash
# `qlora serve` under concurrent clients, one slot against several: CLIENTS clients each send
# REQUESTS completions (greedy, ignore_eos, MAX_TOKENS tokens) one after another, all clients
# at once (tools/bench_serve_load.py), against `qlora serve --parallel P` for each P in
# PARALLEL, on the default model (NF4). Prints one JSON line per P: completion tokens/s over
# the run, requests/s, median and worst latency; then a two-turn chat (prompt caching).
#
#   bench/bench_serve_parallel.sh                  # PARALLEL="1 4" CLIENTS=4 REQUESTS=4 MAX_TOKENS=64
set -euo pipefail
cd "$(dirname "$0")/.."
QLORA=${QLORA:-build/qlora}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PARALLEL=${PARALLEL:-"1 4"}
CLIENTS=${CLIENTS:-4}
REQUESTS=${REQUESTS:-4}
MAX_TOKENS=${MAX_TOKENS:-64}
PORT=${PORT:-18431}
THREADS=${THREADS:-2}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
[[ -f $MODEL ]] || { echo "missing $MODEL: run scripts/fetch_model.sh" >&2; exit 1; }
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for p in $PARALLEL; do
  "$QLORA" serve --model "$MODEL" --quant nf4 --double-quant --threads "$THREADS" --parallel "$p" --port "$PORT" \
    --quiet 2>/dev/null &
  pid=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  # one warm-up request, then the measured load
  python3 tools/bench_serve_load.py --url "http://127.0.0.1:$PORT" --clients 1 --requests 1 --max-tokens 8 >/dev/null
  printf '{"parallel": %s, "threads": %s, "result": %s}\n' "$p" "$THREADS" \
    "$(python3 tools/bench_serve_load.py --url "http://127.0.0.1:$PORT" --clients "$CLIENTS" --requests "$REQUESTS" \
       --max-tokens "$MAX_TOKENS")"
  kill -TERM "$pid"
  wait "$pid" || true
done
# A two-turn chat about ~500 tokens of text (the bench prompt four times): the second turn
# resends the first, and the slot's kept keys and values spare its prompt pass.
TEXT=$(mktemp)
for _ in 1 2 3 4; do printf '%s ' "$(.refenv/bin/python tools/bench_llamacpp.py --print-prompt 2>/dev/null ||
  echo 'The history of the printing press begins in the fifteenth century.')"; done >"$TEXT"
"$QLORA" serve --model "$MODEL" --quant nf4 --double-quant --threads "$THREADS" --port "$PORT" --quiet 2>/dev/null &
pid=$!
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
printf '{"two_turn_chat": %s}\n' "$(python3 tools/bench_serve_load.py --url "http://127.0.0.1:$PORT" --two-turn-chat "$TEXT")"
kill -TERM "$pid"
wait "$pid" || true
rm -f "$TEXT"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
