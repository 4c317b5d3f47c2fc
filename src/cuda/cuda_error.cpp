#include "cuda/cuda_error.h"

#include <atomic>
#include <cstdio>

#include "cuda/device_buffer.h"

namespace qlora::cuda {

void check_cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky launch error so the next call reports its own
  fail("cuda", std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void check_cublas(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  fail("cublas", std::string(what) + ": status " + std::to_string(static_cast<int>(s)));
}

void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string describe_device(int device) {
  const int n = device_count();
  if (device < 0 || device >= n)
    fail("--device", "cuda:" + std::to_string(device) + " does not exist: this machine has " + std::to_string(n) +
                         " CUDA device(s)" + (n == 0 ? " (no GPU, or no NVIDIA driver loaded)" : ""));
  cudaDeviceProp p{};
  check_cuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  char mem[32];
  std::snprintf(mem, sizeof mem, "%.1f GiB", static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return std::string(p.name) + " (cuda:" + std::to_string(device) + ", sm_" + std::to_string(p.major) +
         std::to_string(p.minor) + ", " + mem + ")";
}

void memory_info(size_t* free_bytes, size_t* total_bytes) {
  check_cuda(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

namespace {
std::atomic<uint64_t> g_in_use{0}, g_peak{0};
}  // namespace

void note_device_alloc(size_t bytes) {
  const uint64_t now = g_in_use.fetch_add(bytes) + bytes;
  uint64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}

void note_device_free(size_t bytes) { g_in_use.fetch_sub(bytes); }
uint64_t device_bytes_in_use() { return g_in_use.load(); }

uint64_t device_context_bytes() {
  size_t free_b = 0, total_b = 0;
  memory_info(&free_b, &total_b);
  const uint64_t used = total_b - free_b, ours = device_bytes_in_use();
  return used > ours ? used - ours : 0;
}
uint64_t device_bytes_peak() { return g_peak.load(); }

}  // namespace qlora::cuda
