#pragma once
// Row-major float32 GEMM for the dense products of training and prefill, in the three
// layouts the model needs. Every function computes Y (M, N) = op(X) · op(W), or adds it
// into Y when `accumulate`, with leading dimensions (distance between rows) ldx, ldw, ldy:
//
//   sgemm_nt: Y = X (M, K) · Wᵀ,  W (N, K)   Linear forward (y = x Wᵀ), lm_head logits
//   sgemm_nn: Y = X (M, K) · W,   W (K, N)   input gradient dX = dY · W
//   sgemm_tn: Y = Xᵀ · W, X (K, M), W (K, N) weight gradient dW = dYᵀ · X
//
// The work runs on a BLAS-class library when the build found one (sgemm_backend_name()
// says which; bench/bench_gemm.cpp holds the measurement that chose it), else on our own
// gemm_rows kernels (linear_kernels.h), which stay the reference. Either way the call is
// multi-threaded over qlora::max_threads() OpenMP threads and must not be made from inside
// a parallel region. Results equal the float64 product up to float32 summation order
// (the library blocks K differently from our kernels, so the last bits differ).
#include <cstdint>

namespace qlora {

void sgemm_nt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
              int64_t ldy, bool accumulate);
void sgemm_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
              int64_t ldy, bool accumulate);
void sgemm_tn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
              int64_t ldy, bool accumulate);

// The row stride (floats) to store a matrix of `cols` columns in when sgemm_nn will read it
// as its W (K, N): `cols` rounded up to a cache line (16 floats), plus one more line when
// that is a multiple of 1 KiB. Rows a multiple of 4 KiB apart all fall in the same L1 sets,
// and the library's packing of W then thrashes: on Llama 1.1B's backward (W tiles of 2048
// columns) oneDNN 2.6 ran at 68 GFLOP/s with the plain stride and 141 with this one
// (2 threads, Zen 2; bench/RESULTS.md, session 10).
int64_t sgemm_padded_ld(int64_t cols);

// "oneDNN <version> dnnl_sgemm" or "qlora gemm_rows".
const char* sgemm_backend_name();
// True when the products above run on the library. Callers whose own loop fuses work into
// our kernels (dequantizing a weight panel right before gemm_rows uses it) keep that loop
// when this is false, and hand whole slabs to one sgemm call when it is true.
bool sgemm_has_library();

// The same products on our own kernels only (the fallback, and the reference in tests).
namespace sgemm_fallback {
void nt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate);
void nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate);
void tn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate);
}  // namespace sgemm_fallback

}  // namespace qlora
