#!/usr/bin/env bash
# Batched decoding (several sequences at once, as a server with parallel slots decodes them):
# `qlora generate --parallel N` next to llama.cpp's batched decoding (one llama_decode of N
# tokens with N sequence ids, through llama-cpp-python: tools/bench_llamacpp.py --parallel),
# in one run, back to back, on the same prompt (~128 tokens), greedy, every sequence
# decoding N_GEN - 1 tokens after its prompt, end-of-generation ignored.
#   qlora:     NF4 from the Q4_1 GGUF, fp32 compute (bitsandbytes' exact products), the
#              GGUF's Q8_0 head kept 8-bit, and the same with --int8-activations (llama.cpp's
#              kind of product); its "generation: ... tokens/s over all N sequences" (the
#              batched steps' wall clock, sampling included).
#   llama.cpp: the same Q4_1 file, and its requantized Q4_0 with run-time repacking (its
#              fastest CPU path: int8 dot products); wall clock of its decode loop, greedy
#              argmax of each sequence included.
# Prints a markdown table of aggregate decode tokens/s and the ratios.
#
#   bench/bench_batched_decode.sh                     # PARALLEL="1 4 8" THREADS="1 2" REPS=3
#
# Needs: .refenv with llama-cpp-python (bench/RESULTS.md says how), the default model
# (scripts/fetch_model.sh), build/qlora.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
QLORA=${QLORA:-$BUILD_DIR/qlora}
PY=${PY:-.refenv/bin/python}
MODEL_Q41=${MODEL_Q41:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
MODEL_Q40=${MODEL_Q40:-models/SmolLM2-135M-Instruct.Q4_0.gguf}
N_GEN=${N_GEN:-128}
REPS=${REPS:-3}
THREADS=${THREADS:-"1 2"}
PARALLEL=${PARALLEL:-"1 4 8"}
OUT=${OUT:-$(mktemp -d /tmp/bench_batched.XXXXXX)}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$OUT"

[[ -f $MODEL_Q41 ]] || { echo "missing $MODEL_Q41: run scripts/fetch_model.sh" >&2; exit 1; }
"$PY" -c "import llama_cpp" 2>/dev/null || { echo "llama-cpp-python missing in $PY (bench/RESULTS.md)" >&2; exit 1; }
[[ -x $QLORA ]] || cmake --build "$BUILD_DIR" -j2 --target qlora
if [[ ! -f $MODEL_Q40 ]]; then
  "$PY" tools/bench_llamacpp.py --requantize-q4_0 "$MODEL_Q41" "$MODEL_Q40" >"$OUT/requantize.json"
fi
PROMPT=$("$PY" tools/bench_llamacpp.py --print-prompt)
echo "# results in $OUT; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
uptime >"$OUT/load_before.txt"

# Both sides wait for work the same way: passive, with the short spin (GOMP_SPINCOUNT=3000)
# that qlora's decoding commands set for themselves (base/openmp_wait.h). llama-cpp-python's
# ggml runs its threads on libgomp too: under passive waiting alone its 2-thread decoding fell
# to 48-56 tok/s, below its own 1-thread speed.
LLAMA_ENV=(env GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-3000}")
echo "# llama.cpp" >&2
# shellcheck disable=SC2086
"${LLAMA_ENV[@]}" "$PY" tools/bench_llamacpp.py --model "$MODEL_Q41" --threads $THREADS --parallel $PARALLEL -n "$N_GEN" \
  --reps "$REPS" >"$OUT/llama_q4_1.json"
# shellcheck disable=SC2086
"${LLAMA_ENV[@]}" "$PY" tools/bench_llamacpp.py --model "$MODEL_Q40" --threads $THREADS --parallel $PARALLEL -n "$N_GEN" \
  --reps "$REPS" >"$OUT/llama_q4_0.json"

echo "# qlora generate --parallel (exact, and --int8-activations)" >&2
for t in $THREADS; do
  for r in $(seq 0 "$REPS"); do  # run 0 is a warm-up, like the llama.cpp side
    for n in $PARALLEL; do
      for mode in exact i8; do
        flag=(); [[ $mode == i8 ]] && flag=(--int8-activations)
        "$QLORA" generate --model "$MODEL_Q41" --quant nf4 --compute-dtype fp32 --threads "$t" --parallel "$n" \
          "${flag[@]}" --ignore-eos --temperature 0 -n "$N_GEN" --prompt "$PROMPT" --no-echo \
          >"$OUT/qlora_${mode}_p${n}_t${t}_r${r}.out" 2>"$OUT/qlora_${mode}_p${n}_t${t}_r${r}.err"
      done
    done
  done
done
uptime >"$OUT/load_after.txt"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$PY" - "$OUT" "$REPS" "$THREADS" "$PARALLEL" <<'EOF'
import json, re, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
threads = [int(t) for t in sys.argv[3].split()]
parallel = [int(n) for n in sys.argv[4].split()]
llama = {}
for name, f in (("Q4_1", "llama_q4_1"), ("Q4_0", "llama_q4_0")):
    for r in json.load(open(f"{out}/{f}.json"))["results"]:
        llama[(name, r["threads"], r["parallel"])] = r["decode_tps"]
qlora = {}
for mode in ("exact", "i8"):
    for t in threads:
        for n in parallel:
            v = []
            for r in range(1, reps + 1):
                s = open(f"{out}/qlora_{mode}_p{n}_t{t}_r{r}.err").read()
                m = (re.search(r"\(([\d.]+) tokens/s over all", s)
                     or re.search(r"decode steps in [\d.]+ s \(([\d.]+) tokens/s\)", s))
                v.append(float(m.group(1)))
            qlora[(mode, t, n)] = (statistics.median(v), v)
print("| threads | sequences | qlora exact tok/s | qlora --int8-activations | llama.cpp same Q4_1 file | llama.cpp Q4_0 repacked "
      "| exact vs Q4_1 | exact vs Q4_0 | int8 vs Q4_0 |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in threads:
    for n in parallel:
        q, runs = qlora[("exact", t, n)]
        i, iruns = qlora[("i8", t, n)]
        a, b = llama[("Q4_1", t, n)], llama[("Q4_0", t, n)]
        print(f"| {t} | {n} | {q:.1f} ({', '.join(f'{x:.0f}' for x in runs)}) | {i:.1f} ({', '.join(f'{x:.0f}' for x in iruns)}) "
              f"| {a:.1f} | {b:.1f} | {q / a:.2f}x | {q / b:.2f}x | {i / b:.2f}x |")
print()
for mode in ("exact", "i8"):
    for t in threads:
        base = qlora[(mode, t, parallel[0])][0]
        print(f"qlora {mode}, {t} thread(s): " + ", ".join(f"{n} sequences {qlora[(mode, t, n)][0] / base:.2f}x" for n in parallel)
              + f" the rate of {parallel[0]}")
for t in threads:
    base = llama[("Q4_0", t, parallel[0])]
    print(f"llama.cpp Q4_0, {t} thread(s): " + ", ".join(f"{n} sequences {llama[('Q4_0', t, n)] / base:.2f}x" for n in parallel))
EOF
