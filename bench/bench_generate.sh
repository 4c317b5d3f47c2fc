#!/usr/bin/env bash
# Generation speed of `qlora generate` (fp32 compute) next to llama.cpp (through
# llama-cpp-python) on the same model, in one run, back to back:
#   1. memory bandwidth (build/bench_memcpy: memcpy of 256 MiB, and read-only sums of
#      16..256 MiB, 1 and 2 threads)
#   2. llama.cpp on the Q4_0 file (requantized from the Q4_1 one on first use) and on the
#      original Q4_1 file, 1 and 2 threads (tools/bench_llamacpp.py); Q4_0 once more with
#      llama.cpp's run-time weight repacking off
#   3. qlora generate --compute-dtype fp32 on the Q4_1 file, its linears kept as stored (the
#      default since session 29: 4-bit codes with an fp16 scale and minimum per 32 as in the file; with
#      REQUANT=1 re-quantized to NF4 blocks of 64 instead, --requantize-gguf), 1 and 2
#      threads, REPS runs each, with
#      the GGUF's Q8_0 token embedding / output head kept 8-bit (the default), widened
#      to fp32 (--dense-head, what qlora did before), and decoding on 8-bit activations
#      (--int8-activations, opt-in: llama.cpp's integer dot products, not bitsandbytes' numbers)
# then prints a markdown table: prompt and decode tokens/s, and the bandwidth bound on
# decoding = bandwidth / weight bytes read per decoded token (computed from the model's
# shapes and tensor types; KV-cache reads not included), with two bandwidths: memcpy of
# 256 MiB (DRAM), and a read-only pass over a buffer as large as the weights (the smallest
# measured size >= them), which is what decoding does and which a large L3 partly holds.
#
#   bench/bench_generate.sh                         # uses build/, models/
#   BUILD_DIR=build-benchgen REPS=7 bench/bench_generate.sh
#   QLORA=path/to/qlora MEMCPY=path/to/bench_memcpy OUT=/tmp/x bench/bench_generate.sh
#
# Needs: .refenv with llama-cpp-python (pip install llama-cpp-python, see bench/RESULTS.md),
# the default model (scripts/fetch_model.sh), and a build with benchmarks on.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
QLORA=${QLORA:-$BUILD_DIR/qlora}
MEMCPY=${MEMCPY:-$BUILD_DIR/bench_memcpy}
PY=${PY:-.refenv/bin/python}
MODEL_Q41=${MODEL_Q41:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
MODEL_Q40=${MODEL_Q40:-models/SmolLM2-135M-Instruct.Q4_0.gguf}
N_GEN=${N_GEN:-128}
REPS=${REPS:-5}
THREADS=${THREADS:-"1 2"}
OUT=${OUT:-$(mktemp -d /tmp/bench_generate.XXXXXX)}
mkdir -p "$OUT"

[[ -f $MODEL_Q41 ]] || { echo "missing $MODEL_Q41: run scripts/fetch_model.sh" >&2; exit 1; }
"$PY" -c "import llama_cpp" 2>/dev/null ||
  { echo "llama-cpp-python missing: CMAKE_ARGS=-DGGML_NATIVE=ON $PY -m pip install llama-cpp-python" >&2; exit 1; }
if [[ ! -x $QLORA || ! -x $MEMCPY ]]; then
  cmake --build "$BUILD_DIR" -j2 --target qlora bench_memcpy
fi
if [[ ! -f $MODEL_Q40 ]]; then
  echo "# requantizing $MODEL_Q41 -> $MODEL_Q40 (Q4_0)" >&2
  "$PY" tools/bench_llamacpp.py --requantize-q4_0 "$MODEL_Q41" "$MODEL_Q40" >"$OUT/requantize.json"
fi
PROMPT=$("$PY" tools/bench_llamacpp.py --print-prompt)

echo "# results in $OUT; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
uptime >"$OUT/load_before.txt"

echo "# 1/3 memory bandwidth" >&2
"$MEMCPY" --benchmark_filter='BM_Memcpy/256/|BM_Read/' --benchmark_min_time=0.5 \
  --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_format=json >"$OUT/memcpy.json" 2>"$OUT/memcpy.stderr"

echo "# 2/3 llama.cpp" >&2
# shellcheck disable=SC2086
"$PY" tools/bench_llamacpp.py --model "$MODEL_Q40" --threads $THREADS -n "$N_GEN" --reps "$REPS" >"$OUT/llama_q4_0.json"
# shellcheck disable=SC2086
"$PY" tools/bench_llamacpp.py --model "$MODEL_Q41" --threads $THREADS -n "$N_GEN" --reps "$REPS" >"$OUT/llama_q4_1.json"
# shellcheck disable=SC2086
"$PY" tools/bench_llamacpp.py --model "$MODEL_Q40" --threads $THREADS -n "$N_GEN" --reps "$REPS" --no-repack \
  >"$OUT/llama_q4_0_norepack.json"

echo "# 3/3 qlora generate" >&2
for t in $THREADS; do
  for r in $(seq 0 "$REPS"); do  # run 0 is a warm-up, like the llama.cpp side
    for head in q8 dense i8; do   # interleaved, so drift in the machine's speed falls on all
      flag=(); [[ $head == dense ]] && flag=(--dense-head); [[ $head == i8 ]] && flag=(--int8-activations)
      [[ ${REQUANT:-0} == 1 ]] && flag+=(--requantize-gguf)
      "$QLORA" generate --model "$MODEL_Q41" --compute-dtype fp32 --threads "$t" "${flag[@]}" \
        --temperature 0 -n "$N_GEN" --prompt "$PROMPT" --no-echo \
        >"$OUT/qlora_${head}_t${t}_r${r}.out" 2>"$OUT/qlora_${head}_t${t}_r${r}.err"
    done
  done
done
uptime >"$OUT/load_after.txt"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$PY" - "$OUT" "$MODEL_Q41" "$N_GEN" "$REPS" "$THREADS" <<'EOF'
import glob, json, re, statistics, sys
from gguf import GGUFReader

out, model_q41, n_gen, reps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), [int(t) for t in sys.argv[5].split()]
MB = 1e6

# --- bandwidth (GB/s = 1e9 B/s; memcpy counts bytes copied) -------------------------
bw = {}
for b in json.load(open(f"{out}/memcpy.json"))["benchmarks"]:
    if b.get("aggregate_name") != "median":
        continue
    kind, mib, t = re.match(r"BM_(\w+)/(\d+)/(\d+)", b["run_name"]).groups()
    if int(mib) == 256:
        bw[(kind, int(t))] = b["bytes_per_second"] / 1e9
    if kind == "Read":
        bw[("Read", int(mib), int(t))] = b["bytes_per_second"] / 1e9

def read_bw(nbytes, t):
    """Read-only bandwidth over the smallest measured buffer holding nbytes."""
    sizes = sorted(k[1] for k in bw if len(k) == 3 and k[2] == t)
    mib = next((m for m in sizes if m * 1048576 >= nbytes), sizes[-1])
    return bw[("Read", mib, t)], mib

# --- weight bytes per decoded token ------------------------------------------------
meta = GGUFReader(model_q41)
def kv(key):
    return int(meta.fields[key].contents())
C, NL, NH, NKV, F = (kv(f"llama.{k}") for k in ("embedding_length", "block_count", "attention.head_count",
                                                 "attention.head_count_kv", "feed_forward_length"))
V = len(meta.fields["tokenizer.ggml.tokens"].data)
tied = not any(t.name == "output.weight" for t in meta.tensors)
HS = C // NH
QD, KVD = NH * HS, NKV * HS
lin_params = NL * (C * QD + 2 * C * KVD + QD * C + 3 * C * F)
import os
requant = os.environ.get("REQUANT", "0") == "1"
cbytes = 4  # fp32 compute dtype
# NF4 blocks of 64 with an fp32 absmax each (REQUANT=1), or the Q4_1 blocks kept as stored:
# 4-bit codes with an fp16 scale and an fp16 minimum per 32 (as the file has them; fp32 before
# session 31)
WNAME = "NF4" if requant else "Q4_1 as stored"
qlora_bytes = {
    ("linear NF4 (4 bit + fp32 absmax/64)" if requant else "linear Q4_1 as stored (4 bit + fp16 scale and min /32)"):
        lin_params // 2 + (lin_params // 64 * 4 if requant else lin_params // 32 * 4),
    "lm_head fp32 (tied embedding, whole; --dense-head)": V * C * cbytes,
    "lm_head Q8_0 kept 8-bit (int8 + fp32 scale per 32; the default)": V * C + V * C // 32 * 4,
    "embedding row + norms fp32": C * cbytes + (2 * NL + 1) * C * 4,
}
head_key = {"q8": "lm_head Q8_0 kept 8-bit (int8 + fp32 scale per 32; the default)",
            "i8": "lm_head Q8_0 kept 8-bit (int8 + fp32 scale per 32; the default)",
            "dense": "lm_head fp32 (tied embedding, whole; --dense-head)"}
def qlora_bpt_of(head):
    return sum(v for k, v in qlora_bytes.items() if not k.startswith("lm_head") or k == head_key[head])
qlora_bpt = qlora_bpt_of("q8")
kv_bytes_mid = NL * 2 * KVD * 4  # per cached position, fp32 K and V

def load(name):
    return json.load(open(f"{out}/{name}.json"))
llama = {"Q4_0": load("llama_q4_0"), "Q4_1": load("llama_q4_1"), "Q4_0 no repack": load("llama_q4_0_norepack")}

# --- qlora runs --------------------------------------------------------------------
def parse(err):
    s = open(err).read()
    p = re.search(r"prompt: (\d+) tokens in ([\d.]+) s \(([\d.]+) tokens/s\)", s)
    g = re.search(r"generation: (\d+) tokens, (\d+) decode steps in ([\d.]+) s \(([\d.]+) tokens/s\), stop: (.*)", s)
    w = re.search(r"loaded in [\d.]+ s: .*, ([\d.]+) MiB", s)
    if not (p and g):
        raise SystemExit(f"cannot parse {err}:\n{s}")
    return {"prompt_tokens": int(p.group(1)), "prompt_tps": float(p.group(3)), "gen_tokens": int(g.group(1)),
            "decode_steps": int(g.group(2)), "decode_tps": float(g.group(4)), "stop": g.group(5).strip(),
            "weight_mib": float(w.group(1)) if w else None}
qlora = {}
for head, t in [(h, t) for h in ("q8", "dense", "i8") for t in threads]:
    runs = [parse(f"{out}/qlora_{head}_t{t}_r{r}.err") for r in range(1, reps + 1)]
    qlora[(head, t)] = {"prompt_tps": statistics.median(r["prompt_tps"] for r in runs),
                "decode_tps": statistics.median(r["decode_tps"] for r in runs),
                "decode_all": [r["decode_tps"] for r in runs], "prompt_all": [r["prompt_tps"] for r in runs],
                **{k: runs[0][k] for k in ("prompt_tokens", "gen_tokens", "decode_steps", "stop", "weight_mib")}}

# --- report ------------------------------------------------------------------------
def lres(q, t):
    return next(r for r in llama[q]["results"] if r["threads"] == t)
print(f"llama-cpp-python {llama['Q4_0']['llama_cpp_python']}; {llama['Q4_0']['system_info']}")
print()
print(f"Bandwidth, median of 5 (GB = 1e9 B): read-only by buffer size: " + "; ".join(
    f"{t} thread{'s' if t > 1 else ''}: " + ", ".join(f"{k[1]} MiB {v:.1f}" for k, v in sorted(bw.items()) if len(k) == 3 and k[2] == t)
    for t in threads))
print(f"256 MiB buffers: " + "; ".join(
    f"{t} thread{'s' if t > 1 else ''}: memcpy {bw[('Memcpy', t)]:.1f} GB/s copied, read-only {bw[('Read', t)]:.1f} GB/s"
    for t in threads))
print()
print("Weight bytes read per decoded token:")
for k, v in qlora_bytes.items():
    print(f"- qlora {WNAME}: {k}: {v / MB:.1f} MB")
for head in ("q8", "dense"):
    wm = qlora[(head, threads[0])]["weight_mib"]
    print(f"- qlora {WNAME} total, head {head}: {qlora_bpt_of(head) / MB:.1f} MB (qlora generate reports {wm} MiB = "
          f"{wm * 1048576 / MB:.1f} MB of weights held)")
for q in ("Q4_0", "Q4_1"):
    tt = llama[q]["tensor_types"]
    print(f"- llama.cpp {q}: {llama[q]['weight_bytes_per_token'] / MB:.1f} MB "
          f"(token_embd {tt['token_embd']}, output {tt['output']}, blocks {tt['blocks']})")
print(f"- KV cache reads (not in the bound): qlora fp32 {kv_bytes_mid / MB * 1e3:.1f} kB per cached position, "
      f"{kv_bytes_mid * (qlora[('q8', threads[0])]['prompt_tokens'] + n_gen // 2) / MB:.1f} MB at the mid-generation position")
print()
q0 = qlora[("q8", threads[0])]
pt = q0["prompt_tokens"]
print(f"Prompt {pt} tokens (llama.cpp tokenized {lres('Q4_0', threads[0])['prompt_tokens']}), {n_gen} generated "
      f"({q0['decode_steps']} single-token decode steps; qlora stop: {q0['stop']}), "
      f"greedy, median of {reps} runs after a warm-up.")
print()
print("| engine | weights | threads | prompt tok/s | decode tok/s | weight MB/token | bound: memcpy 256 MiB | decode / bound | bound: read, weights-sized | decode / bound | decode vs llama.cpp Q4_0 |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
rows = []
for t in threads:
    ref = lres("Q4_0", t)["decode_tps"]
    for q in ("Q4_0", "Q4_0 no repack", "Q4_1"):
        r = lres(q, t)
        b = llama[q]["weight_bytes_per_token"]
        rows.append(("llama.cpp", q, t, r["prompt_tps"], r["decode_tps"], b))
    rows.append(("qlora.cpp", f"{WNAME} + Q8_0 lm_head (default)", t, qlora[("q8", t)]["prompt_tps"],
                 qlora[("q8", t)]["decode_tps"], qlora_bpt_of("q8")))
    rows.append(("qlora.cpp", f"{WNAME} + fp32 lm_head (--dense-head)", t, qlora[("dense", t)]["prompt_tps"],
                 qlora[("dense", t)]["decode_tps"], qlora_bpt_of("dense")))
    rows.append(("qlora.cpp", f"{WNAME} + Q8_0 lm_head, int8 activations (--int8-activations)", t,
                 qlora[("i8", t)]["prompt_tps"], qlora[("i8", t)]["decode_tps"], qlora_bpt_of("i8")))
    for eng, w, tt, ptps, dtps, b in rows[-6:]:
        bound = bw[("Memcpy", tt)] * 1e9 / b
        rbw, rmib = read_bw(b, tt)
        rbound = rbw * 1e9 / b
        print(f"| {eng} | {w} | {tt} | {ptps:.0f} | {dtps:.1f} | {b / MB:.1f} | {bound:.1f} | {dtps / bound:.2f} | "
              f"{rbound:.1f} ({rmib} MiB) | {dtps / rbound:.2f} | {dtps / ref:.2f} |")
print()
print("qlora (Q8_0 head) prompt tok/s vs llama.cpp Q4_0: " + ", ".join(
    f"{t} thr {qlora[('q8', t)]['prompt_tps'] / lres('Q4_0', t)['prompt_tps']:.2f}" for t in threads) +
    "; vs Q4_1 (the same file): " + ", ".join(
    f"{t} thr {qlora[('q8', t)]['prompt_tps'] / lres('Q4_1', t)['prompt_tps']:.2f}" for t in threads))
print("qlora (Q8_0 head) decode vs llama.cpp: " + ", ".join(
    f"{t} thr {qlora[('q8', t)]['decode_tps'] / lres('Q4_1', t)['decode_tps']:.2f} of Q4_1 (the same file), "
    f"{qlora[('q8', t)]['decode_tps'] / lres('Q4_0', t)['decode_tps']:.2f} of Q4_0" for t in threads))
print("qlora --int8-activations decode vs llama.cpp: " + ", ".join(
    f"{t} thr {qlora[('i8', t)]['decode_tps'] / lres('Q4_1', t)['decode_tps']:.2f} of Q4_1 (the same file), "
    f"{qlora[('i8', t)]['decode_tps'] / lres('Q4_0', t)['decode_tps']:.2f} of Q4_0" for t in threads))
print("qlora decode, Q8_0 head over --dense-head: " + ", ".join(
    f"{t} thr {qlora[('q8', t)]['decode_tps'] / qlora[('dense', t)]['decode_tps']:.2f}" for t in threads))
print()
print("Per-run decode tok/s: " + "; ".join(
    [f"qlora {h} {t}t {qlora[(h, t)]['decode_all']}" for h in ("q8", "dense", "i8") for t in threads] +
    [f"llama {q} {r['threads']}t {r['decode_tps_all']}" for q in llama for r in llama[q]['results']]))
json.dump({"bandwidth_GBps": {"/".join(map(str, k)): v for k, v in bw.items()},
           "qlora": {f"{h}/{t}": v for (h, t), v in qlora.items()},
           "qlora_bytes_per_token": qlora_bpt, "llama": llama}, open(f"{out}/summary.json", "w"), indent=1)
EOF
