#include "model/gemm.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "base/parallel.h"
#include "model/linear_kernels.h"

#if defined(QLORA_HAVE_DNNL)
#include <oneapi/dnnl/dnnl.h>
#endif

namespace qlora {

// ---- fallback: our gemm_rows kernels ------------------------------------------------------
namespace sgemm_fallback {
namespace {

// gemm_rows computes dot products of rows: Y[m, n] = sum_k X[m, k] W[n, k]. The layouts
// with W (K, N) transpose one panel of kPanel columns at a time into thread-local scratch.
constexpr int64_t kRowsPerPanel = 16;  // nt: weight rows per task (L1-sized at K = 576)
constexpr int64_t kPanel = 64;         // nn/tn: transposed columns per task

// Split panels across threads only when each gets ~256K multiply-adds.
int64_t min_panels(int64_t M, int64_t K, int64_t panel) {
  return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, M * K * panel));
}

void store(float* y, int64_t ldy, int64_t M, int64_t nb, const float* src, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    float* d = y + m * ldy;
    const float* s = src + m * nb;
    if (accumulate)
      for (int64_t n = 0; n < nb; ++n) d[n] += s[n];
    else
      std::copy_n(s, nb, d);
  }
}

}  // namespace

void nt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const auto& kern = kernels::active_linear_kernels();
  const int64_t panels = (N + kRowsPerPanel - 1) / kRowsPerPanel;
  parallel_for_range(panels, min_panels(M, K, kRowsPerPanel), [&](int64_t p0, int64_t p1) {
    std::vector<float> tmp(accumulate ? static_cast<size_t>(M * kRowsPerPanel) : 0);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kRowsPerPanel, nb = std::min(kRowsPerPanel, N - n0);
      if (!accumulate) {
        kern.gemm_rows(x, ldx, M, w + n0 * ldw, ldw, nb, K, y + n0, ldy);
      } else {
        kern.gemm_rows(x, ldx, M, w + n0 * ldw, ldw, nb, K, tmp.data(), nb);
        store(y + n0, ldy, M, nb, tmp.data(), true);
      }
    }
  });
}

void nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const auto& kern = kernels::active_linear_kernels();
  const int64_t panels = (N + kPanel - 1) / kPanel;
  parallel_for_range(panels, min_panels(M, K, kPanel), [&](int64_t p0, int64_t p1) {
    std::vector<float> wt(static_cast<size_t>(kPanel * K)), tmp(static_cast<size_t>(M * kPanel));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kPanel, nb = std::min(kPanel, N - n0);
      for (int64_t k = 0; k < K; ++k)  // wt (nb, K) = W[:, n0:n0+nb]ᵀ
        for (int64_t n = 0; n < nb; ++n) wt[n * K + k] = w[k * ldw + n0 + n];
      kern.gemm_rows(x, ldx, M, wt.data(), K, nb, K, tmp.data(), nb);
      store(y + n0, ldy, M, nb, tmp.data(), accumulate);
    }
  });
}

void tn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  std::vector<float> xt(static_cast<size_t>(M * K));  // Xᵀ (M, K)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t m = 0; m < M; ++m) xt[m * K + k] = x[k * ldx + m];
  nn(M, N, K, xt.data(), K, w, ldw, y, ldy, accumulate);
}

}  // namespace sgemm_fallback

// ---- dispatch ------------------------------------------------------------------------------
namespace {

// QLORA_SGEMM=fallback in the environment sends every product to our own kernels: an A/B
// switch for measurements and for chasing a numerical difference, read once.
bool use_library() {
#if defined(QLORA_HAVE_DNNL)
  static const bool on = [] {
    const char* e = std::getenv("QLORA_SGEMM");
    return !(e && std::string_view(e) == "fallback");
  }();
  return on;
#else
  return false;
#endif
}

#if defined(QLORA_HAVE_DNNL)
// dnnl_sgemm: row-major like ours, JIT kernels for the CPU it finds (AVX-512 here), and
// threads from the same OpenMP runtime as the rest of the library (it reads
// omp_get_max_threads() per call, and runs on one thread inside a parallel region), so no
// second thread pool competes with ours. Measured ~2x our gemm_rows on SmolLM2's shapes
// (bench/bench_gemm.cpp).
bool dnnl(char ta, char tb, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w,
          int64_t ldw, float* y, int64_t ldy, bool accumulate) {
  return dnnl_sgemm(ta, tb, M, N, K, 1.0f, x, ldx, w, ldw, accumulate ? 1.0f : 0.0f, y, ldy) == dnnl_success;
}
#endif

// K = 0: the product is zero.
void zero_product(int64_t M, int64_t N, float* y, int64_t ldy, bool accumulate) {
  if (accumulate) return;
  for (int64_t m = 0; m < M; ++m) std::fill_n(y + m * ldy, N, 0.0f);
}

}  // namespace

void sgemm_nt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
              int64_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) return zero_product(M, N, y, ldy, accumulate);
#if defined(QLORA_HAVE_DNNL)
  if (use_library() && dnnl('N', 'T', M, N, K, x, ldx, w, ldw, y, ldy, accumulate)) return;
#endif
  sgemm_fallback::nt(M, N, K, x, ldx, w, ldw, y, ldy, accumulate);
}

void sgemm_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
              int64_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) return zero_product(M, N, y, ldy, accumulate);
#if defined(QLORA_HAVE_DNNL)
  if (use_library() && dnnl('N', 'N', M, N, K, x, ldx, w, ldw, y, ldy, accumulate)) return;
#endif
  sgemm_fallback::nn(M, N, K, x, ldx, w, ldw, y, ldy, accumulate);
}

void sgemm_tn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
              int64_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) return zero_product(M, N, y, ldy, accumulate);
#if defined(QLORA_HAVE_DNNL)
  if (use_library() && dnnl('T', 'N', M, N, K, x, ldx, w, ldw, y, ldy, accumulate)) return;
#endif
  sgemm_fallback::tn(M, N, K, x, ldx, w, ldw, y, ldy, accumulate);
}

bool sgemm_has_library() { return use_library(); }

int64_t sgemm_padded_ld(int64_t cols) {
  const int64_t ld = (std::max<int64_t>(cols, 1) + 15) / 16 * 16;
  return ld % 256 == 0 ? ld + 16 : ld;
}

const char* sgemm_backend_name() {
#if defined(QLORA_HAVE_DNNL)
  if (use_library()) {
    static const std::string name = [] {
      const dnnl_version_t* v = dnnl_version();
      return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
             " dnnl_sgemm";
    }();
    return name.c_str();
  }
#endif
  return "qlora gemm_rows";
}

}  // namespace qlora
