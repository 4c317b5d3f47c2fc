#!/usr/bin/env bash
# Paged optimizer under a memory limit: the same fine-tune twice, in a memory cgroup of the
# same size, once with the optimizer state in ordinary memory (adamw_torch) and once paged
# (paged_adamw_32bit: the same arithmetic, state in a file-backed mapping). Without swap,
# anonymous memory over the limit can only end in the OOM killer; the paged state's pages
# belong to the page cache, so the kernel writes them to their file and drops them instead.
#
#   bash bench/paged_optimizer_demo.sh [LIMIT_MB] [BUILD_DIR]
#
# LIMIT_MB (default 450) must lie between what the two runs need. SmolLM2-135M (Q4_1 GGUF,
# NF4 + double quant) with LoRA r 64 on every Linear has 19.5M trainable parameters, so
# 149 MiB of 32-bit AdamW state; without it the run needs ~370 MB of anonymous memory,
# with it ~520 MB. Needs root (or a
# delegated memory cgroup): it creates a child of this process's memory cgroup (cgroup v1
# memory.limit_in_bytes, or cgroup v2 memory.max), runs each command inside it, and removes
# it afterwards. `ulimit -v` would not do: it counts file mappings too, so it cannot tell
# the two runs apart.
#
# Without the model it falls back to build/report_paged_optimizer (synthetic parameters).
set -uo pipefail
cd "$(dirname "$0")/.."
LIMIT_MB=${1:-450}
BUILD=${2:-build}
MODEL=${QLORA_DEMO_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${QLORA_DEMO_DATA:-../shared/data/text/tinyshakespeare.txt}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qlora-paged-demo-XXXXXX")
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

# --- a memory cgroup of LIMIT_MB, child of ours ---------------------------------------
CG=""
if [[ -f /sys/fs/cgroup/cgroup.controllers ]] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  # cgroup v2 (unified): our group is the "0::" line.
  rel=$(sed -n 's/^0:://p' /proc/self/cgroup)
  CG=/sys/fs/cgroup${rel%/}/qlora-paged-demo-$$
  LIMIT_FILE=memory.max
elif [[ -d /sys/fs/cgroup/memory ]]; then
  # cgroup v1: the memory controller's own hierarchy.
  rel=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
  CG=/sys/fs/cgroup/memory${rel%/}/qlora-paged-demo-$$
  LIMIT_FILE=memory.limit_in_bytes
fi
if [[ -z "$CG" ]] || ! mkdir "$CG" 2>/dev/null; then
  echo "paged_optimizer_demo: cannot create a memory cgroup${CG:+ at $CG} (needs root or a delegated cgroup)" >&2
  exit 1
fi
cleanup() {
  rmdir "$CG" 2>/dev/null
  [[ -n "${QLORA_DEMO_KEEP:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT
echo $((LIMIT_MB * 1024 * 1024)) > "$CG/$LIMIT_FILE"
# cgroup v1 with swap accounting: forbid swap too, so only file pages can leave memory.
[[ -f "$CG/memory.memsw.limit_in_bytes" ]] && echo $((LIMIT_MB * 1024 * 1024)) > "$CG/memory.memsw.limit_in_bytes"

# Runs "$@" inside the cgroup, sampling its resident anonymous and file-backed memory
# (/proc/PID/status RssAnon, RssFile) every 50 ms; prints how it ended.
run_limited() {
  local name=$1
  shift
  local t0=$SECONDS
  # The command runs as a grandchild, so that its death by SIGKILL is reported to a subshell
  # (whose "Killed" notice lands in the log) rather than printed by this script.
  (
    bash -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@" &
    echo $! > "$WORK/$name.pid"
    wait $!
  ) > "$WORK/$name.log" 2>&1 &
  local outer=$! pid="" anon=0 file=0 a f
  while [[ ! -s "$WORK/$name.pid" ]] && kill -0 "$outer" 2>/dev/null; do sleep 0.01; done
  pid=$(cat "$WORK/$name.pid")
  while kill -0 "$pid" 2>/dev/null; do
    read -r a f < <(awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} END {print a + 0, f + 0}' "/proc/$pid/status" 2>/dev/null)
    ((${a:-0} > anon)) && anon=$a
    ((${f:-0} > file)) && file=$f
    sleep 0.05
  done
  wait "$outer"
  local rc=$? secs=$((SECONDS - t0)) how
  if ((rc == 137)); then
    how="KILLED by SIGKILL (the OOM killer of the ${LIMIT_MB} MB cgroup)"
  elif ((rc == 0)); then
    how="finished"
  else
    how="failed with exit status $rc"
  fi
  printf '%-18s %s after %ss; peak resident: anonymous %d MB, file-backed %d MB\n' "$name:" "$how" "$secs" \
    $((anon / 1024)) $((file / 1024))
  # The last lines it printed (progress bars redraw with \r: keep the final state of each line).
  tr '\r' '\n' < "$WORK/$name.log" | grep -v -e '^\s*$' -e 'cgroup.procs' -e '^adapter: ' | tail -n 2 | cut -c1-150 | sed 's/^/    /'
  if ((rc == 137)); then
    dmesg 2>/dev/null | grep -E "Killed process $pid " | tail -n 1 | sed 's/^\[[^]]*\] /    kernel: /'
  fi
  return 0
}

echo "memory cgroup $CG, limit $LIMIT_MB MB (swap on this machine: $(awk '/SwapTotal/ {print $2 / 1024 " MB"}' /proc/meminfo))"
if [[ -f "$MODEL" && -x "$BUILD/qlora" ]]; then
  echo "workload: qlora train $MODEL, NF4 + double quant, LoRA r 64 all-linear, 5 steps of 1 x 32 tokens"
  TRAIN=("$BUILD/qlora" train --model "$MODEL" --data "$DATA" --quant nf4 --double-quant --lora-r 64 --gradient-checkpointing
         --lora-alpha 16 --target all-linear --max-steps 5 --batch-size 1 --seq-len 32)
  for optim in adamw_torch paged_adamw_32bit; do
    run_limited "$optim" "${TRAIN[@]}" --out "$WORK/out-$optim" --overwrite-output-dir --optim "$optim" --paged-dir "$WORK/paged"
    [[ -f "$WORK/out-$optim/adapter_model.safetensors" ]] && echo "    adapter written: out-$optim/adapter_model.safetensors"
  done
else
  # Parameters + gradients take 8 bytes per parameter, the state 8 more: LIMIT_MB / 14
  # million parameters need ~57% of the limit without the state and ~114% with it.
  PM=$((LIMIT_MB / 14))
  echo "workload: $BUILD/report_paged_optimizer, ${PM}M float32 parameters with gradients, 5 AdamW steps"
  for optim in adamw_torch paged_adamw_32bit; do
    run_limited "$optim" "$BUILD/report_paged_optimizer" --optim "$optim" --params-m "$PM" --steps 5 \
      --paged-dir "$WORK/paged"
  done
fi
