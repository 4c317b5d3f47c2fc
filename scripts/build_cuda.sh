#!/usr/bin/env bash
# Builds the CUDA backend (-DQLORA_CUDA=ON) into build-cuda/: the qlora binary with
# `--device cuda`, the CUDA tests and the CUDA benchmark. Needs the CUDA toolkit (nvcc,
# cuBLAS); runs without a GPU (the tests then skip). Extra args go to cmake configure.
#   bash scripts/build_cuda.sh                 # the CUDA programs only (what CI compiles)
#   QLORA_CUDA_ALL=1 bash scripts/build_cuda.sh  # every target
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
  done
fi
command -v nvcc >/dev/null 2>&1 || { echo "build_cuda: nvcc not found (install the CUDA toolkit)" >&2; exit 1; }
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DQLORA_CUDA=ON "$@" > build-cuda-configure.log 2>&1 ||
  { cat build-cuda-configure.log; exit 1; }
rm -f build-cuda-configure.log
if [ "${QLORA_CUDA_ALL:-0}" = 1 ]; then
  cmake --build build-cuda -j"$(nproc)"
else
  cmake --build build-cuda -j"$(nproc)" --target qlora test_cuda_kernels test_cuda_train_kernels \
    test_cuda_family_kernels test_cuda_backend test_cuda_runner test_cuda_train test_device_flag bench_cuda_kernels
fi
