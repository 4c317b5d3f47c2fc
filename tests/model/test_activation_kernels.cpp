// The activation kernels of every instruction set this CPU has against the scalar
// definitions (model/activation_kernels.h), bit for bit: their exp is glibc's expf step for
// step, so every float must give exactly std::exp's result. Checked on a stride through all
// 2^32 bit patterns (every 61st: ~70M values, special values included), on dense runs around
// the edges of the fast path (|x| near 87, 0, tiny and huge values), and through SwiGLU
// forward/backward on awkward lengths (tails shorter than a vector, aliasing outputs).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "base/cpu_features.h"
#include "model/activation_kernels.h"

using namespace qlora;
using kernels::ActivationKernels;

namespace {

std::vector<SimdLevel> fast_levels() {
  std::vector<SimdLevel> l;
  if (cpu_simd_level() >= SimdLevel::AVX2) l.push_back(SimdLevel::AVX2);
  if (cpu_simd_level() >= SimdLevel::AVX512) l.push_back(SimdLevel::AVX512);
  return l;
}

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

void expect_exp_matches(const ActivationKernels& k, const std::vector<float>& x, const char* what) {
  std::vector<float> y(x.size());
  k.exp(x.data(), y.data(), static_cast<int64_t>(x.size()));
  int bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = std::exp(x[i]);
    if (!same_bits(y[i], want) && !(std::isnan(y[i]) && std::isnan(want)) && ++bad <= 5)
      ADD_FAILURE() << what << ": exp(" << std::hexfloat << x[i] << ") = " << y[i] << ", std::exp " << want;
  }
  EXPECT_EQ(bad, 0) << what;
}

}  // namespace

TEST(ActivationKernels, ExpIsGlibcsExpfOnAStrideThroughAllFloats) {
  for (SimdLevel lv : fast_levels()) {
    const ActivationKernels& k = kernels::activation_kernels_for(lv);
    std::vector<float> x;
    x.reserve(1 << 20);
    for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 61) {
      x.push_back(from_bits(static_cast<uint32_t>(b)));
      if (x.size() == (1u << 20)) {
        expect_exp_matches(k, x, simd_level_name(lv));
        x.clear();
      }
    }
    expect_exp_matches(k, x, simd_level_name(lv));
  }
}

TEST(ActivationKernels, ExpAtTheEdgesOfTheFastPath) {
  std::vector<float> x;
  for (float c : {87.0f, -87.0f, 88.0f, -88.0f, 0.0f, 1e-30f, -1e-30f, 104.0f, -104.0f})
    for (int d = -3000; d <= 3000; ++d) x.push_back(std::nextafter(c, 0.0f) + static_cast<float>(d) * 1e-5f);
  for (float s : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(), -0.0f})
    x.push_back(s);
  for (SimdLevel lv : fast_levels()) expect_exp_matches(kernels::activation_kernels_for(lv), x, simd_level_name(lv));
}

TEST(ActivationKernels, SwigluMatchesScalarBitForBit) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  const auto& scalar = kernels::scalar_activation_kernels();
  for (int64_t n : {1, 7, 8, 9, 31, 1000, 4099}) {
    std::vector<float> g(n), u(n), d(n), dg0(n), du0(n);
    for (int64_t i = 0; i < n; ++i) g[i] = nd(rng), u[i] = nd(rng), d[i] = nd(rng), dg0[i] = nd(rng), du0[i] = nd(rng);
    if (n > 5) g[3] = 95.0f, g[4] = -120.0f;  // lanes that leave the fast path
    std::vector<float> out_ref(n), dg_ref = dg0, du_ref = du0;
    scalar.swiglu_forward(out_ref.data(), g.data(), u.data(), n);
    scalar.swiglu_backward(dg_ref.data(), du_ref.data(), d.data(), g.data(), u.data(), n);
    for (SimdLevel lv : fast_levels()) {
      const ActivationKernels& k = kernels::activation_kernels_for(lv);
      std::vector<float> out(n), dg = dg0, du = du0;
      k.swiglu_forward(out.data(), g.data(), u.data(), n);
      k.swiglu_backward(dg.data(), du.data(), d.data(), g.data(), u.data(), n);
      EXPECT_EQ(std::memcmp(out.data(), out_ref.data(), n * 4), 0) << simd_level_name(lv) << " forward n " << n;
      EXPECT_EQ(std::memcmp(dg.data(), dg_ref.data(), n * 4), 0) << simd_level_name(lv) << " dgate n " << n;
      EXPECT_EQ(std::memcmp(du.data(), du_ref.data(), n * 4), 0) << simd_level_name(lv) << " dup n " << n;
      std::vector<float> alias = g;  // out may alias gate
      k.swiglu_forward(alias.data(), alias.data(), u.data(), n);
      EXPECT_EQ(std::memcmp(alias.data(), out_ref.data(), n * 4), 0) << simd_level_name(lv) << " aliased n " << n;
    }
  }
}

// The vectorized tanh against glibc's tanhf (the scalar kernel): every float on a stride through
// (-12, 12) and the edges (the polynomial's, 9 where it is 1, infinities, NaN), at sizes that
// leave tails; within 3 ulps of tanhf's value or 2e-8 absolute.
TEST(ActivationKernels, TanhIsWithinThreeUlpsOfTanhf) {
  std::vector<float> xs;
  for (float v = -12.0f; v < 12.0f; v = std::nextafter(v + 1e-4f * std::max(1.0f, std::fabs(v)), 13.0f)) xs.push_back(v);
  for (float v : {0.0f, -0.0f, 0.03125f, -0.03125f, 0.0312499f, 0.0312501f, 1e-30f, -1e-20f, 9.0f, 9.5f, 88.0f, -100.0f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()})
    xs.push_back(v);
  xs.push_back(std::numeric_limits<float>::quiet_NaN());
  const auto& scalar = kernels::scalar_activation_kernels();
  std::vector<float> ref(xs.size());
  scalar.tanh(xs.data(), ref.data(), static_cast<int64_t>(xs.size()));
  for (SimdLevel lv : fast_levels()) {
    const ActivationKernels& k = kernels::activation_kernels_for(lv);
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{9}, static_cast<int64_t>(xs.size())}) {
      std::vector<float> got(static_cast<size_t>(n));
      k.tanh(xs.data() + xs.size() - n, got.data(), n);
      double worst_ulps = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float want = ref[xs.size() - n + i], x = xs[xs.size() - n + i];
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(got[i])) << x;
          continue;
        }
        const double ulp = std::nextafter(std::fabs(want), 2.0f) - std::fabs(want);
        const double d = std::fabs(double(got[i]) - want);
        worst_ulps = std::max(worst_ulps, d / ulp);
        EXPECT_TRUE(d <= 3 * ulp || d <= 2e-8) << simd_level_name(lv) << " tanh(" << x << ") = " << got[i] << ", tanhf "
                                               << want;
      }
      std::vector<float> alias(xs.end() - n, xs.end());  // y may alias x
      k.tanh(alias.data(), alias.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        if (!std::isnan(alias[i])) {
          EXPECT_EQ(alias[i], got[i]);
        }
      }
      if (n == static_cast<int64_t>(xs.size())) RecordProperty("worst_ulps", std::to_string(worst_ulps));
    }
  }
}

// Kernel `fn` of every fast level against the scalar one (the C library's function) on xs, at sizes
// that leave tails and aliased: within one ulp of the reference (the ulp below its magnitude), the
// same sign, NaN for NaN, infinities exact. Records the worst ulps and how many differ.
namespace {

using UnaryKernel = void (*ActivationKernels::*)(const float*, float*, int64_t);
void expect_within_one_ulp(UnaryKernel fn, const std::vector<float>& xs, const char* what) {
  const auto& scalar = kernels::scalar_activation_kernels();
  std::vector<float> ref(xs.size());
  (scalar.*fn)(xs.data(), ref.data(), static_cast<int64_t>(xs.size()));
  for (SimdLevel lv : fast_levels()) {
    const ActivationKernels& k = kernels::activation_kernels_for(lv);
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{9}, int64_t{23}, static_cast<int64_t>(xs.size())}) {
      std::vector<float> got(static_cast<size_t>(n));
      (k.*fn)(xs.data() + xs.size() - n, got.data(), n);
      double worst_ulps = 0;
      int64_t differing = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float want = ref[xs.size() - n + i], x = xs[xs.size() - n + i];
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(got[i])) << what << " " << x;
          continue;
        }
        if (std::isinf(want)) {
          EXPECT_EQ(got[i], want) << what << " " << x;
          continue;
        }
        EXPECT_EQ(std::signbit(got[i]), std::signbit(want)) << what << " " << x;
        // (the ulp of the smaller neighbour: below a power of two the spacing halves)
        const float aw = std::fabs(want);
        const double ulp = aw == 0.0f ? std::numeric_limits<float>::denorm_min() : aw - std::nextafter(aw, 0.0f);
        const double d = std::fabs(double(got[i]) - want);
        worst_ulps = std::max(worst_ulps, d / ulp);
        differing += d != 0;
        EXPECT_LE(d, ulp) << simd_level_name(lv) << " " << what << "(" << std::hexfloat << x << ") = " << got[i]
                          << ", the C library's " << want;
      }
      std::vector<float> alias(xs.end() - n, xs.end());  // y may alias x
      (k.*fn)(alias.data(), alias.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        if (!std::isnan(alias[i])) {
          EXPECT_EQ(alias[i], got[i]) << what;
        }
      }
      if (n == static_cast<int64_t>(xs.size())) {
        ::testing::Test::RecordProperty(std::string(what) + "_worst_ulps", std::to_string(worst_ulps));
        ::testing::Test::RecordProperty(std::string(what) + "_differing", std::to_string(differing) + " of " + std::to_string(n));
      }
    }
  }
}

}  // namespace

// The vectorized erf against glibc's erff (the scalar kernel): every float on a fine stride
// through (-6, 6) (both polynomials, the switch at |x| 1, the clamp at 4), tiny and subnormal
// values, signed zeros, infinities and NaN; within one ulp of erff.
TEST(ActivationKernels, ErfIsWithinAnUlpOfErff) {
  std::vector<float> xs;
  for (float v = -6.0f; v < 6.0f; v = std::nextafter(v + 2e-5f * std::max(1.0f, std::fabs(v)), 7.0f)) xs.push_back(v);
  for (float v : {0.0f, -0.0f, 1.0f, -1.0f, std::nextafter(1.0f, 0.0f), std::nextafter(1.0f, 2.0f), 4.0f, -4.0f,
                  std::nextafter(4.0f, 0.0f), 3.83f, 3.85f, 1e-30f, -1e-20f, 1e-40f, -1e-45f, 1e-7f, 88.0f, -100.0f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()})
    xs.push_back(v);
  xs.push_back(std::numeric_limits<float>::quiet_NaN());
  expect_within_one_ulp(&ActivationKernels::erf, xs, "erf");
}

// The vectorized expm1 against glibc's expm1f: every float on a fine stride through (-90, 90) (the
// series below |x| 1/2, exp - 1 above, the scalar path from 87), tiny and subnormal values, signed
// zeros, infinities and NaN; within one ulp of expm1f.
TEST(ActivationKernels, Expm1IsWithinAnUlpOfExpm1f) {
  std::vector<float> xs;
  for (float v = -90.0f; v < 90.0f; v = std::nextafter(v + 2e-5f * std::max(1.0f, std::fabs(v)), 91.0f)) xs.push_back(v);
  for (float v : {0.0f, -0.0f, 0.5f, -0.5f, std::nextafter(0.5f, 0.0f), std::nextafter(-0.5f, 0.0f), 1e-30f, -1e-20f,
                  1e-40f, -1e-45f, -1e-6f, 1e-7f, 86.99f, -86.99f, 87.0f, -87.0f, 88.7f, -100.0f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()})
    xs.push_back(v);
  xs.push_back(std::numeric_limits<float>::quiet_NaN());
  expect_within_one_ulp(&ActivationKernels::expm1, xs, "expm1");
}

// The vectorized softplus against log1pf(expf(x)) (the scalar kernel): every float on a fine stride
// through (-100, 30) (both atanh forms and the switch between them at e = sqrt 2 - 1, i.e. x = -0.881,
// the threshold at 20, the scalar path below -87), tiny values, signed zeros, infinities and NaN;
// within one ulp.
TEST(ActivationKernels, SoftplusIsWithinAnUlpOfLog1pfExpf) {
  std::vector<float> xs;
  for (float v = -100.0f; v < 30.0f; v = std::nextafter(v + 2e-5f * std::max(1.0f, std::fabs(v)), 31.0f)) xs.push_back(v);
  for (float v : {0.0f, -0.0f, -0.8813736f, -0.8813735f, 20.0f, std::nextafter(20.0f, 0.0f), std::nextafter(20.0f, 21.0f),
                  -87.0f, std::nextafter(-87.0f, 0.0f), -86.99f, 1e-30f, -1e-20f, 1e-40f, 88.0f, -103.0f, -110.0f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()})
    xs.push_back(v);
  xs.push_back(std::numeric_limits<float>::quiet_NaN());
  expect_within_one_ulp(&ActivationKernels::softplus, xs, "softplus");
}

// xIELU's forward and backward kernels against the scalar ones on awkward sizes (tails, the kinks at 0
// and eps, very negative lanes that take the scalar path, aliasing): they differ only through expm1's
// last bit, so within a few float ulps of each value.
TEST(ActivationKernels, XieluMatchesTheScalarKernels) {
  std::mt19937 rng(21);
  std::normal_distribution<float> d(0.0f, 3.0f);
  const float c[4] = {0.6f, 1.3f, 0.45f, -1e-6f};
  const auto& scalar = kernels::scalar_activation_kernels();
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{9}, int64_t{37}, int64_t{1000}}) {
    std::vector<float> x(static_cast<size_t>(n)), dout(static_cast<size_t>(n)), dx0(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      x[i] = d(rng);
      dout[i] = d(rng);
      dx0[i] = d(rng);
    }
    if (n > 5) {
      x[1] = 0.0f;
      x[2] = -1e-6f;
      x[3] = -5e-7f;
      x[4] = -120.0f;  // (below -87: the scalar path for its eight)
      x[5] = std::nextafter(0.0f, 1.0f);
    }
    std::vector<float> yr(x.size()), dxr = dx0;
    scalar.xielu_forward(x.data(), yr.data(), n, c);
    scalar.xielu_backward(dxr.data(), dout.data(), x.data(), n, c);
    for (SimdLevel lv : fast_levels()) {
      const ActivationKernels& k = kernels::activation_kernels_for(lv);
      std::vector<float> y(x.size()), dx = dx0;
      k.xielu_forward(x.data(), y.data(), n, c);
      k.xielu_backward(dx.data(), dout.data(), x.data(), n, c);
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_NEAR(y[i], yr[i], 4e-7f * std::max(1.0f, std::fabs(yr[i]))) << simd_level_name(lv) << " x " << x[i];
        // (expm1's ulp, times c1 and dout, on top of dx's own rounding)
        EXPECT_NEAR(dx[i], dxr[i], 4e-7f * std::max(1.0f, std::fabs(dxr[i])) + 2e-7f * c[1] * std::fabs(dout[i]))
            << simd_level_name(lv) << " x " << x[i];
      }
      std::vector<float> alias = x;  // y may alias x
      k.xielu_forward(alias.data(), alias.data(), n, c);
      EXPECT_EQ(std::memcmp(alias.data(), y.data(), y.size() * 4), 0) << simd_level_name(lv) << " aliased n " << n;
    }
  }
}
