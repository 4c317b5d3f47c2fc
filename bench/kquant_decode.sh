#!/usr/bin/env bash
# Decode tokens/s on GGUF K-quant files: llama.cpp, qlora with --no-int8-activations (float32
# activations: the exact products of the file's values) and qlora's default for a GGUF (8-bit
# activations, llama.cpp's own products), alternated round by round (bench/ab_decode.sh), 1 and
# 2 threads; then the default against --gguf-compact (Q6_K / Q5_K / Q5_1 as the file's blocks
# instead of Q8_0 of their values). The files are a random-weight llama (hidden 1024, 8 layers,
# ffn 2816: every row whole 256-value super-blocks) that llama.cpp's own quantizer turns into
# Q2_K / Q3_K_M / Q4_K_M / Q5_K_M / Q6_K (tools/make_random_kquant_gguf.py, made on first use),
# plus any GGUF given in EXTRA. Random weights: only speed means anything. Weights held: the
# "loaded" line of each mode.
#
#   bench/kquant_decode.sh                    # DIR=/tmp/kquant ROUNDS=3
#   EXTRA=/path/SmolLM2-135M-Instruct-Q4_K_M.gguf bench/kquant_decode.sh
#   COMPACT=0 bench/kquant_decode.sh          # skip the --gguf-compact comparison
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-/tmp/kquant}
ROUNDS=${ROUNDS:-3}
QLORA=${QLORA:-$PWD/build/qlora}
PY=${PY:-.refenv/bin/python}
TYPES=${TYPES:-"Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K"}
mkdir -p "$DIR"
[[ -f $DIR/random.Q6_K.gguf ]] || "$PY" tools/make_random_kquant_gguf.py "$DIR" > "$DIR.make.log" 2>&1
float="$DIR/qlora-float"
compact="$DIR/qlora-compact"
printf '#!/bin/sh\nexec %q "$@" --no-int8-activations\n' "$QLORA" > "$float"
printf '#!/bin/sh\nexec %q "$@" --gguf-compact\n' "$QLORA" > "$compact"
chmod +x "$float" "$compact"
export OMP_WAIT_POLICY=passive
files=()
for t in $TYPES; do files+=("$DIR/random.$t.gguf"); done
for f in ${EXTRA:-}; do files+=("$f"); done
for f in "${files[@]}"; do
  for mode in "" --gguf-compact; do
    echo "$(basename "$f") ${mode:-default}: $("$QLORA" generate -m "$f" -p hi -n 1 $mode 2>&1 | grep -oE 'loaded in .*MiB')"
  done
  for t in 1 2; do
    echo "== $(basename "$f"), $t thread(s), load $(cut -d' ' -f1-3 /proc/loadavg) (qlora-old: --no-int8-activations, qlora-new: default)"
    bash bench/ab_decode.sh "$float" "$QLORA" "$f" "$t" "$ROUNDS" 2>&1 | tail -3
    if [[ ${COMPACT:-1} == 1 ]]; then
      echo "== $(basename "$f"), $t thread(s), load $(cut -d' ' -f1-3 /proc/loadavg) (qlora-old: default, qlora-new: --gguf-compact)"
      bash bench/ab_decode.sh "$QLORA" "$compact" "$f" "$t" "$ROUNDS" 2>&1 | tail -2
    fi
  done
done
