#pragma once
// DeviceBuffer<T>: n elements of T in plain device memory (cudaMalloc; never managed
// memory), freed when it goes out of scope. Move-only. An allocation the card cannot hold
// throws Error saying how much was asked for and how much is free.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_error.h"

namespace qlora::cuda {

// Bytes this process holds in device allocations made through DeviceBuffer (and the cuBLAS
// workspace), now and at most so far: the measured side of the memory planner's plan.
void note_device_alloc(size_t bytes);
void note_device_free(size_t bytes);
uint64_t device_bytes_in_use();
uint64_t device_bytes_peak();
// The current device's memory in use that is not ours (total - free - device_bytes_in_use()):
// the CUDA context, kernel images and cuBLAS's own (other processes' too, on a shared GPU).
uint64_t device_context_bytes();

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { resize(n); }
  // Allocates and copies host data in.
  explicit DeviceBuffer(const std::vector<T>& host) {
    resize(host.size());
    upload(host.data(), host.size());
  }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }

  // Discards the contents and holds room for exactly n elements (no-op when n == size()).
  void resize(size_t n) {
    if (n == n_) return;
    release();
    if (n == 0) return;
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, n * sizeof(T));
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      char buf[160];
      std::snprintf(buf, sizeof buf, "out of GPU memory: asked for %.1f MiB, %.1f MiB of %.1f MiB free",
                    static_cast<double>(n * sizeof(T)) / 1048576.0, static_cast<double>(free_b) / 1048576.0,
                    static_cast<double>(total_b) / 1048576.0);
      fail("cuda", buf);
    }
    p_ = static_cast<T*>(p);
    n_ = n;
    note_device_alloc(n * sizeof(T));
  }
  // Grows (discarding the contents) when fewer than n elements are held.
  void reserve(size_t n) {
    if (n > n_) resize(n);
  }
  // Host -> device on `stream`, ordered with the kernels on it (from pageable memory the
  // call returns once the source has been staged, so `src` may be reused at once).
  void upload_async(const T* src, size_t n, cudaStream_t stream, size_t offset = 0) {
    check(offset + n <= n_, "DeviceBuffer::upload_async", "copy past the end of the buffer");
    if (n) QLORA_CUDA_CHECK(cudaMemcpyAsync(p_ + offset, src, n * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  // Synchronous copies on the legacy default stream: a non-blocking stream does not wait
  // for them (the device may still be copying when they return), so code that then
  // launches kernels on such a stream uses upload_async, or synchronizes the device first.
  void upload(const T* src, size_t n, size_t offset = 0) {
    check(offset + n <= n_, "DeviceBuffer::upload", "copy past the end of the buffer");
    if (n) QLORA_CUDA_CHECK(cudaMemcpy(p_ + offset, src, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void download(T* dst, size_t n, size_t offset = 0) const {
    check(offset + n <= n_, "DeviceBuffer::download", "copy past the end of the buffer");
    if (n) QLORA_CUDA_CHECK(cudaMemcpy(dst, p_ + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  std::vector<T> to_host() const {
    std::vector<T> h(n_);
    download(h.data(), n_);
    return h;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  void release() {
    if (p_) {
      cudaFree(p_);
      note_device_free(n_ * sizeof(T));
    }
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace qlora::cuda
