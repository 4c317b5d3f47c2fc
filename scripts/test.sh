#!/usr/bin/env bash
# The whole test suite from a fresh machine: Debian deps, the default model, build, ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/fetch_model.sh
bash scripts/build.sh
# The official OpenAI Python client, for the `qlora serve` test (tests/serve/serve_openai_client.py).
if [ ! -x .testenv/bin/python ] || ! .testenv/bin/python -c "import openai" 2>/dev/null; then
  python3 -m venv .testenv && .testenv/bin/pip install -q openai==3.60.0 ||
    echo "[test] could not install the openai client: the serve client test will be skipped"
fi
cd build
# Tests run two at a time on two cores; OpenMP's default spin-waiting then starves the
# other test's threads (decode slowed >10x in measurements). Sleep instead of spinning.
export OMP_WAIT_POLICY=passive
ctest --output-on-failure -j"$(nproc)" --timeout 900
cd ..
# The CUDA backend compiles wherever nvcc is installed (build-cuda/); its tests run there
# and skip, saying so, where no GPU is present (scripts/device_check.sh runs them on one).
if command -v nvcc >/dev/null 2>&1 || ls /usr/local/cuda*/bin/nvcc >/dev/null 2>&1; then
  bash scripts/build_cuda.sh
  for t in test_cuda_kernels test_cuda_train_kernels test_cuda_family_kernels test_cuda_backend test_cuda_runner \
    test_cuda_train test_device_flag; do
    ./build-cuda/"$t" --gtest_brief=1
  done
else
  echo "[test] nvcc not found: the CUDA backend was not compiled"
fi
