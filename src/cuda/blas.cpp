#include "cuda/blas.h"

#include <limits>
#include <string>

#include "cuda/cuda_error.h"
#include "cuda/device_buffer.h"

namespace qlora::cuda {

namespace {

int as_int(int64_t v, const char* what) {
  check(v >= 0 && v <= std::numeric_limits<int>::max(), "cublas",
        std::string(what) + " = " + std::to_string(v) + " does not fit cuBLAS's 32-bit sizes");
  return static_cast<int>(v);
}

}  // namespace

Blas::Blas() {
  QLORA_CUBLAS_CHECK(cublasCreate(&h_));
  // The default math mode runs float32 products in float32 (TF32 only when asked for, or
  // with NVIDIA_TF32_OVERRIDE=1 in the environment) and 16-bit ones on tensor cores.
  QLORA_CUBLAS_CHECK(cublasSetMathMode(h_, CUBLAS_DEFAULT_MATH));
  // A workspace of our own, so that cuBLAS never allocates inside a CUDA graph capture
  // (the decode step is captured once and replayed; cuBLAS documents this requirement).
  constexpr size_t kWorkspace = size_t{32} << 20;
  QLORA_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspace));
  note_device_alloc(kWorkspace);
  QLORA_CUBLAS_CHECK(cublasSetWorkspace(h_, workspace_, kWorkspace));
}

Blas::~Blas() {
  if (h_) cublasDestroy(h_);
  if (workspace_) {
    cudaFree(workspace_);
    note_device_free(size_t{32} << 20);
  }
}

void Blas::set_stream(cudaStream_t s) {
  QLORA_CUBLAS_CHECK(cublasSetStream(h_, s));
  // cublasSetStream resets the handle to cuBLAS's default workspace pool: ours again.
  QLORA_CUBLAS_CHECK(cublasSetWorkspace(h_, workspace_, size_t{32} << 20));
}

// Row-major y (M, N) = x (M, K) · wᵀ is column-major yᵀ (N, M) = w_cm(K, N)ᵀ · x_cm(K, M):
// cuBLAS's C = op(A) op(B) with A = w (transposed), B = x (as is), m = N, n = M.
void Blas::sgemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const float* w,
                    int64_t ldw, float beta, float* y, int64_t ldy) {
  if (M == 0 || N == 0) return;
  QLORA_CUBLAS_CHECK(cublasSgemm(h_, CUBLAS_OP_T, CUBLAS_OP_N, as_int(N, "N"), as_int(M, "M"), as_int(K, "K"), &alpha,
                                 w, as_int(ldw, "ldw"), x, as_int(ldx, "ldx"), &beta, y, as_int(ldy, "ldy")));
}

// Row-major y = x · w is column-major yᵀ = wᵀ · xᵀ: A = w, B = x, both as stored.
void Blas::sgemm_nn(int64_t M, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const float* w,
                    int64_t ldw, float beta, float* y, int64_t ldy) {
  if (M == 0 || N == 0) return;
  QLORA_CUBLAS_CHECK(cublasSgemm(h_, CUBLAS_OP_N, CUBLAS_OP_N, as_int(N, "N"), as_int(M, "M"), as_int(K, "K"), &alpha,
                                 w, as_int(ldw, "ldw"), x, as_int(ldx, "ldx"), &beta, y, as_int(ldy, "ldy")));
}

// Row-major y = xᵀ · w is column-major yᵀ = wᵀ · x: A = w as stored, B = x transposed.
void Blas::sgemm_tn(int64_t M, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const float* w,
                    int64_t ldw, float beta, float* y, int64_t ldy) {
  if (M == 0 || N == 0) return;
  QLORA_CUBLAS_CHECK(cublasSgemm(h_, CUBLAS_OP_N, CUBLAS_OP_T, as_int(N, "N"), as_int(M, "M"), as_int(K, "K"), &alpha,
                                 w, as_int(ldw, "ldw"), x, as_int(ldx, "ldx"), &beta, y, as_int(ldy, "ldy")));
}

void Blas::gemm16_nt(DenseType type, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* x, int64_t ldx,
                     const uint16_t* w, int64_t ldw, float beta, float* y, int64_t ldy) {
  if (M == 0 || N == 0) return;
  check(type != DenseType::F32, "cuda::Blas::gemm16_nt", "the inputs must be BF16 or F16");
  const cudaDataType_t t = type == DenseType::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  QLORA_CUBLAS_CHECK(cublasGemmEx(h_, CUBLAS_OP_T, CUBLAS_OP_N, as_int(N, "N"), as_int(M, "M"), as_int(K, "K"),
                                  &alpha, w, t, as_int(ldw, "ldw"), x, t, as_int(ldx, "ldx"), &beta, y, CUDA_R_32F,
                                  as_int(ldy, "ldy"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace qlora::cuda
