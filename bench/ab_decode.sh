#!/usr/bin/env bash
# Decode tokens/s of llama.cpp (llama-cpp-python in .refenv) and two qlora binaries on the same
# GGUF, alternated round by round (llama.cpp, old, new) so a noisy host's drift falls on all
# three; prints each one's runs and median. Prompt: tools/bench_llamacpp.py's, 128 greedy tokens.
#   bench/ab_decode.sh OLD_QLORA NEW_QLORA [MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf] [THREADS=1] [ROUNDS=5] [qlora flags...]
set -euo pipefail
OLD=$1 NEW=$2 MODEL=${3:-models/SmolLM2-135M-Instruct.Q4_1.gguf} T=${4:-1} N=${5:-5}
shift $(( $# < 5 ? $# : 5 ))
cd "$(dirname "$0")/.."
PY=${PY:-.refenv/bin/python}
P="$("$PY" tools/bench_llamacpp.py --print-prompt)"
export OMP_WAIT_POLICY=passive
for _ in $(seq "$N"); do
  l=$("$PY" tools/bench_llamacpp.py --model "$MODEL" --threads "$T" -n 128 --reps 1 2>/dev/null |
      grep -oE '"decode_tps": [0-9.]+' | head -1 | grep -oE '[0-9.]+$')
  echo "llama.cpp $l"
  for tag in old new; do
    bin=$OLD; [[ $tag == new ]] && bin=$NEW
    r=$("$bin" generate -m "$MODEL" -p "$P" -n 128 --temperature 0 --ignore-eos -t "$T" --no-echo "$@" 2>&1 |
        grep -oE 'decode steps in [0-9.]+ s \([0-9.]+' | grep -oE '[0-9.]+$')
    echo "qlora-$tag $r"
  done
done | python3 -c "
import sys, collections
d = collections.defaultdict(list)
for l in sys.stdin:
    p = l.split()
    if len(p) == 2: d[p[0]].append(float(p[1]))
for k, v in d.items(): print(f'{k:10s} decode tok/s', [round(x, 1) for x in v], 'median', sorted(v)[len(v)//2])
"
