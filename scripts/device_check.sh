#!/usr/bin/env bash
# Every GPU check in one run, for the device machine (one call of the device tool):
#   bash ../shared/device/pack.sh build-cuda qlora test_cuda_kernels test_cuda_train_kernels test_cuda_runner test_cuda_train bench_cuda_kernels
#   strip .devcarry/bin/*; xz .devcarry/lib/libdnnl.so.2     (to fit the 64 MiB the tree may carry)
#   mkdir -p .devcarry/data/text; cp ../shared/data/text/tinyshakespeare.txt .devcarry/data/text/
#   then, there, from the project root with carry [".devcarry"]:  bash scripts/device_check.sh
# Logs go to $OUT (the device tool brings them back): nvidia-smi, each test's output, the
# benchmark's JSON lines. Exits non-zero when a test failed.
set -uo pipefail
OUT=${OUT:-/tmp/qlora-device-out}
mkdir -p "$OUT"
# Big libraries travel xz-compressed (the carried tree is at most 64 MiB): unpack them.
for f in .devcarry/lib/*.xz; do
  [ -e "$f" ] && python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3],'wb'))" "$f" && rm -f "$f"
done
source .devcarry/env.sh
export QLORA_CLI=$PWD/.devcarry/bin/qlora OMP_WAIT_POLICY=passive
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia-smi.csv" 2>&1
cat "$OUT/nvidia-smi.csv"
rc=0
for t in test_cuda_kernels test_cuda_train_kernels test_cuda_runner test_cuda_train; do
  timeout 240 "$t" --gtest_color=no 2>&1 | tee "$OUT/$t.log" | grep -E '^\[ +(OK|FAILED|SKIPPED|PASSED) |cuda vs cpu|cuda train|\[ cuda \]|Failure|Expected|expected|got |Which is|error' | head -80
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "$t FAILED"; rc=1; }
done
timeout 300 bench_cuda_kernels ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_cuda_kernels.jsonl"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
exit $rc
