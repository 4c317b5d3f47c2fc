#!/usr/bin/env bash
# The measurement row shared by bench/memory_validate.sh and
# bench/memory_validate_families.sh (sourced; needs Q, TEXT, THREADS, OUT set):
#   row NAME train|generate "MODEL_ARGS" "OPTIONS" "EXTRA_MEMORY_ARGS"
# prints one markdown row: the planner's prediction (resident, nothing evicted), the
# measured peak resident set (/usr/bin/time %M), and their ratio.
echo "| model | command | options | predicted MiB | measured MiB | predicted/measured |"
echo "|---|---|---|---:|---:|---:|"

# measure NAME MODEL_ARGS -- TRAIN_OR_GEN_ARGS
row() {
  local name="$1" mode="$2" model_args="$3" opts="$4" extra_mem="$5"
  local rss pred
  if [[ "$mode" == train ]]; then
    rss=$( { /usr/bin/time -f "MAXRSS %M" "$Q" train $model_args $opts --data "$TEXT" --out "$OUT/a" --overwrite-output-dir \
               --max-steps 2 --threads "$THREADS" -q >/dev/null; } 2>&1 | awk '/^MAXRSS/ {print $2}')
    pred=$("$Q" memory $model_args $opts --mode train --data "$TEXT" --threads "$THREADS" $extra_mem --json |
           python3 -c 'import json,sys; print(json.load(sys.stdin)["resident_if_not_evicted_bytes"])')
  else
    local log="$OUT/gen.log"
    /usr/bin/time -f "MAXRSS %M" "$Q" generate $model_args $opts --temperature 0 --threads "$THREADS" \
        >/dev/null 2>"$log"
    rss=$(awk '/^MAXRSS/ {print $2}' "$log")
    local p; p=$(sed -n 's/^prompt: \([0-9]*\) tokens.*/\1/p' "$log")
    # generate's -n and --prompt map onto the planner's -n and --prompt-len.
    local n; n=$(echo "$opts" | sed -n 's/.*-n \([0-9]*\).*/\1/p')
    local gopts; gopts=$(echo "$opts" | sed 's/--prompt "[^"]*"//; s/-p [^ ]*//; s/-n [0-9]*//')
    pred=$("$Q" memory $model_args $gopts --mode generate --prompt-len "$p" -n "$n" --threads "$THREADS" $extra_mem --json |
           python3 -c 'import json,sys; print(json.load(sys.stdin)["resident_if_not_evicted_bytes"])')
  fi
  python3 - "$name" "$mode" "$opts" "$pred" "$rss" <<'EOF'
import sys
name, mode, opts, pred, rss = sys.argv[1:]
p = int(pred) / 2**20; m = int(rss) / 1024
print(f"| {name} | {mode} | `{opts.strip()}` | {p:.1f} | {m:.1f} | {p/m:.3f} |")
EOF
}

