// sgemm_nt / sgemm_nn / sgemm_tn (model/gemm.h) — the library path when the build has one,
// and our own fallback kernels — against a float64 reference, on awkward sizes (1 row,
// odd widths, K past a SIMD multiple), padded leading dimensions and both store modes.
//
// Tolerance: any order of summing K products in float32 has error at most
// gamma_K * sum_k |x_k w_k| with gamma_K = K u / (1 - K u), u = 2^-24 (Higham, Accuracy
// and Stability, 3.1); FMA-based kernels only round less often. Accumulating adds one more
// rounding of at most u |y|. So |y - exact| <= (K + 2) u (sum_k |x_k w_k| + |y0|) holds for
// any correct kernel whatever its blocking, while a wrong element or layout is off by
// O(|x w|), far above it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include "base/float_formats.h"
#include "model/gemm.h"
#include "model/quant_linear.h"

namespace qlora {
namespace {

enum class Layout { NT, NN, TN };

using Fn = void (*)(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);

std::vector<float> random_vec(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Element (m, k) of op(X) and (k, n) of op(W) for the layout.
struct Operands {
  Layout layout;
  int64_t M, N, K, ldx, ldw;
  std::vector<float> x, w;
  float xe(int64_t m, int64_t k) const { return layout == Layout::TN ? x[k * ldx + m] : x[m * ldx + k]; }
  float we(int64_t k, int64_t n) const { return layout == Layout::NT ? w[n * ldw + k] : w[k * ldw + n]; }
};

Operands make(Layout layout, int64_t M, int64_t N, int64_t K, uint32_t seed) {
  Operands o{layout, M, N, K, 0, 0, {}, {}};
  // Leading dimensions a few floats past the row width: the kernels must honour them.
  const int64_t xrows = layout == Layout::TN ? K : M, xcols = layout == Layout::TN ? M : K;
  const int64_t wrows = layout == Layout::NT ? N : K, wcols = layout == Layout::NT ? K : N;
  o.ldx = xcols + 3;
  o.ldw = wcols + 5;
  o.x = random_vec(static_cast<size_t>(xrows * o.ldx), seed);
  o.w = random_vec(static_cast<size_t>(wrows * o.ldw), seed + 1);
  return o;
}

void check_against_reference(Fn fn, Layout layout, int64_t M, int64_t N, int64_t K, bool accumulate,
                             const std::string& what) {
  const Operands o = make(layout, M, N, K, static_cast<uint32_t>(M * 1000003 + N * 1009 + K));
  const int64_t ldy = N + 2;
  std::vector<float> y0 = random_vec(static_cast<size_t>(M * ldy), 7);
  std::vector<float> y = y0;
  fn(M, N, K, o.x.data(), o.ldx, o.w.data(), o.ldw, y.data(), ldy, accumulate);
  constexpr double u = 0x1.0p-24;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double exact = accumulate ? y0[m * ldy + n] : 0.0, mag = accumulate ? std::fabs(y0[m * ldy + n]) : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(o.xe(m, k)) * o.we(k, n);
        exact += p;
        mag += std::fabs(p);
      }
      const double tol = static_cast<double>(K + 2) * u * mag;
      ASSERT_NEAR(y[m * ldy + n], exact, tol) << what << " M=" << M << " N=" << N << " K=" << K << " at (" << m
                                              << ", " << n << ")" << (accumulate ? " accumulate" : "");
    }
    // Padding between rows of y stays untouched.
    for (int64_t n = N; n < ldy; ++n) ASSERT_EQ(y[m * ldy + n], y0[m * ldy + n]) << what << " wrote padding";
  }
}

struct Case {
  const char* name;
  Layout layout;
  Fn fn;
};

const Case kCases[] = {
    {"sgemm_nt", Layout::NT, sgemm_nt},
    {"sgemm_nn", Layout::NN, sgemm_nn},
    {"sgemm_tn", Layout::TN, sgemm_tn},
    {"fallback::nt", Layout::NT, sgemm_fallback::nt},
    {"fallback::nn", Layout::NN, sgemm_fallback::nn},
    {"fallback::tn", Layout::TN, sgemm_fallback::tn},
};

TEST(Sgemm, MatchesFloat64ReferenceOnAwkwardSizes) {
  for (const Case& c : kCases)
    for (int64_t M : {1, 7, 33})
      for (int64_t N : {1, 5, 129})
        for (int64_t K : {3, 67, 577})
          for (bool acc : {false, true}) check_against_reference(c.fn, c.layout, M, N, K, acc, c.name);
}

TEST(Sgemm, TrainingShapes) {
  // One Linear of SmolLM2 (T = 40 tokens, 576 -> 192) in every layout the model uses.
  for (const Case& c : kCases)
    for (bool acc : {false, true}) check_against_reference(c.fn, c.layout, 40, 192, 576, acc, c.name);
}

TEST(Sgemm, EmptyProducts) {
  std::vector<float> y = {1.f, 2.f, 3.f, 4.f};
  const float x[1] = {0.f}, w[1] = {0.f};
  sgemm_nt(0, 2, 3, x, 3, w, 3, y.data(), 2, false);  // no rows: untouched
  sgemm_nn(2, 0, 3, x, 3, w, 3, y.data(), 2, false);  // no columns: untouched
  EXPECT_EQ(y, (std::vector<float>{1.f, 2.f, 3.f, 4.f}));
  sgemm_nt(2, 2, 0, x, 1, w, 1, y.data(), 2, true);  // K = 0, accumulate: y += 0
  EXPECT_EQ(y, (std::vector<float>{1.f, 2.f, 3.f, 4.f}));
  sgemm_tn(2, 2, 0, x, 2, w, 2, y.data(), 2, false);  // K = 0, store: y = 0
  EXPECT_EQ(y, (std::vector<float>(4, 0.f)));
}

TEST(Sgemm, NamesItsBackend) {
  const std::string name = sgemm_backend_name();
  EXPECT_FALSE(name.empty());
  EXPECT_EQ(sgemm_has_library(), name.rfind("oneDNN", 0) == 0) << name;
}

// A 4-bit Linear's forward for several tokens (model/quant_linear.cpp gemm_by_panels: on the
// library, each thread fills its own share of W's rows a slab at a time and multiplies them
// single-threaded) against the float64 product of the dequantized weight, at 1, 2 and 3
// threads, on row counts that split unevenly (not a multiple of the 16-row panels) and one too
// thin to split; the same Linear in bf16 compute too.
TEST(Sgemm, QuantLinearForwardOnThreadSharesMatchesReference) {
  const int saved = omp_get_max_threads();
  for (int64_t N : {203, 64, 129})
    for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16}) {
      const int64_t T = 37, K = 300;
      const std::vector<float> w = random_vec(static_cast<size_t>(N * K), 91), x0 = random_vec(T * K, 92);
      QuantOptions q;
      q.double_quant = true;
      const QuantLinear W(w.data(), N, K, q, dt);
      std::vector<float> wq(static_cast<size_t>(N * K));
      W.dequantize_rows(0, N, wq.data());
      std::vector<float> x = x0;
      if (dt == ComputeDType::BF16)  // (the model hands a bf16 Linear bf16 inputs)
        for (float& v : x) v = bf16_to_f32(f32_to_bf16(v));
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        std::vector<float> y(static_cast<size_t>(T * N), -1.0f);
        W.forward(y.data(), x.data(), T);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            double s = 0, a = 0;
            for (int64_t k = 0; k < K; ++k) {
              s += static_cast<double>(x[t * K + k]) * wq[n * K + k];
              a += std::fabs(static_cast<double>(x[t * K + k]) * wq[n * K + k]);
            }
            // bf16 compute rounds the output to bf16 (2^-9 relative) after float32 sums.
            const double tol = (K + 2) * std::ldexp(1.0, -24) * a + (dt == ComputeDType::BF16 ? std::ldexp(std::fabs(s), -8) : 0.0);
            ASSERT_NEAR(y[t * N + n], s, tol + 1e-30)
                << "N " << N << " " << (dt == ComputeDType::BF16 ? "bf16" : "fp32") << " threads " << threads
                << " at (" << t << ", " << n << ")";
          }
      }
    }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace qlora
