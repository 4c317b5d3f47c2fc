#pragma once
// Matrix products on cuBLAS for prefill (and, later, training): the row-major "x · Wᵀ"
// shape every Linear has, in float32 (no TF32: results stay within float32 rounding of the
// CPU's) and in bf16/fp16 with float32 accumulation and float32 output.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels.h"

namespace qlora::cuda {

class Blas {
 public:
  Blas();  // creates a cuBLAS handle on the current device (Error when that fails)
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  void set_stream(cudaStream_t s);

  // y (M, N) = alpha · x (M, K) · w (N, K)ᵀ + beta · y, all row-major float32 with leading
  // dimensions ldx, ldw, ldy (in elements).
  void sgemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const float* w,
                int64_t ldw, float beta, float* y, int64_t ldy);
  // y (M, N) = alpha · x (M, K) · w (K, N) + beta · y: the input gradient dX = dY · W.
  void sgemm_nn(int64_t M, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const float* w,
                int64_t ldw, float beta, float* y, int64_t ldy);
  // y (M, N) = alpha · xᵀ · w + beta · y with x (K, M), w (K, N): the weight gradient
  // dW = dYᵀ · X.
  void sgemm_tn(int64_t M, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const float* w,
                int64_t ldw, float beta, float* y, int64_t ldy);
  // The same with x and w in `type` (BF16 or F16 bit patterns), y float32, float32
  // accumulation (CUBLAS_COMPUTE_32F).
  void gemm16_nt(DenseType type, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* x, int64_t ldx,
                 const uint16_t* w, int64_t ldw, float beta, float* y, int64_t ldy);

 private:
  cublasHandle_t h_ = nullptr;
  void* workspace_ = nullptr;  // our own cuBLAS workspace: products can be captured in CUDA graphs
};

}  // namespace qlora::cuda
