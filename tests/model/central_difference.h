#pragma once
// Helpers shared by the recurrent-op tests (test_delta_net.cpp, test_mamba2.cpp): seeded normal
// inputs, float -> double copies, and a backward checked against central differences of a
// double-precision reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace qlora::testing_util {

// n values of N(0, scale^2) from seed.
inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

inline std::vector<double> to_d(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// d (sum w . f(x)) / d x by central differences of a double function, against `analytic`:
// the worst difference within 2e-4 of the largest gradient.
inline void expect_gradient(const std::function<std::vector<double>(const std::vector<double>&)>& f,
                            std::vector<double> x, const std::vector<double>& w, const std::vector<float>& analytic,
                            const char* what) {
  ASSERT_EQ(analytic.size(), x.size());
  double worst = 0, peak = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i], h = 1e-6 * std::max(1.0, std::fabs(x0));
    x[i] = x0 + h;
    const auto up = f(x);
    x[i] = x0 - h;
    const auto dn = f(x);
    x[i] = x0;
    double d = 0;
    for (size_t j = 0; j < up.size(); ++j) d += w[j] * (up[j] - dn[j]) / (2 * h);
    worst = std::max(worst, std::fabs(d - analytic[i]));
    peak = std::max(peak, std::fabs(d));
  }
  EXPECT_LT(worst, 2e-4 * peak) << what << ": peak gradient " << peak;
}

}  // namespace qlora::testing_util
