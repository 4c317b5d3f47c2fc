// Mamba (1)'s scan (model/mamba1.h) against a plain double-precision implementation of the
// recurrence transformers' mamba_selective_scan computes (written here), on awkward sizes (19
// channels: two full blocks of kSsm1Block and a partial one; a state of 7; 37 tokens); the backward
// against central differences of that implementation; prefill in pieces against one pass; the
// AVX-512 build against the baseline one (a state of 37: two 16-float vectors and a tail).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "central_difference.h"
#include "model/mamba1.h"

using namespace qlora;
using qlora::testing_util::expect_gradient;
using qlora::testing_util::randn;
using qlora::testing_util::to_d;

namespace {

constexpr int64_t kT = 37;

struct Scan1Inputs {
  Ssm1Shape sh;
  std::vector<float> x, dt, bc, A_log, A, Dskip;
  explicit Scan1Inputs(int64_t D = 19, int64_t N = 7) {
    sh.D = D;
    sh.N = N;
    x = randn(static_cast<size_t>(kT * D), 1);
    dt = randn(static_cast<size_t>(kT * D), 2);
    bc = randn(static_cast<size_t>(kT * 2 * N), 3);
    // (log 1 .. log N per channel, as transformers' S4D initialization, shifted per channel)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t n = 0; n < N; ++n) A_log.push_back(std::log(float(n + 1)) + 0.1f * float(d % 5) - 0.4f);
    for (float v : A_log) A.push_back(-std::exp(v));  // (the rates the model computes at load)
    Dskip = randn(static_cast<size_t>(D), 4);
    dt[5] = 25.0f;  // (past softplus's threshold: the identity)
  }
};

// The recurrence in double: per channel, S = exp(step A) S + step x B, y = S . C + D x.
std::vector<double> scan1_reference(const Scan1Inputs& in, const std::vector<double>& x, const std::vector<double>& dt,
                                    const std::vector<double>& bc) {
  const int64_t D = in.sh.D, N = in.sh.N;
  std::vector<double> y(static_cast<size_t>(kT * D));
  for (int64_t d = 0; d < D; ++d) {
    std::vector<double> S(static_cast<size_t>(N), 0.0);
    for (int64_t t = 0; t < kT; ++t) {
      const double v = dt[t * D + d], step = v > 20 ? v : std::log1p(std::exp(v)), xv = x[t * D + d];
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) {
        const double A = -std::exp(double(in.A_log[d * N + n]));
        S[n] = std::exp(step * A) * S[n] + step * xv * bc[t * 2 * N + n];
        acc += S[n] * bc[t * 2 * N + N + n];
      }
      y[t * D + d] = acc + in.Dskip[d] * xv;
    }
  }
  return y;
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, double rel, const char* what) {
  ASSERT_EQ(a.size(), b.size());
  double worst = 0, peak = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    peak = std::max(peak, double(std::fabs(a[i])));
  }
  EXPECT_LE(worst, rel * peak) << what;
}

}  // namespace

TEST(Mamba1, ScanMatchesTheRecurrenceInDouble) {
  const Scan1Inputs in;
  std::vector<float> y(static_cast<size_t>(kT * in.sh.D));
  ssm1_scan_forward(in.sh, y.data(), in.x.data(), in.dt.data(), in.bc.data(), in.A.data(), in.Dskip.data(), kT,
                    nullptr, ComputeDType::F32);
  const auto ref = scan1_reference(in, to_d(in.x), to_d(in.dt), to_d(in.bc));
  double worst = 0, peak = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    worst = std::max(worst, std::fabs(y[i] - ref[i]));
    peak = std::max(peak, std::fabs(ref[i]));
  }
  EXPECT_LT(worst, 1e-5 * peak);
}

TEST(Mamba1, PrefillInPiecesCarriesTheState) {
  const Scan1Inputs in;
  const int64_t D = in.sh.D, N = in.sh.N;
  std::vector<float> whole(static_cast<size_t>(kT * D)), pieces(whole.size());
  ssm1_scan_forward(in.sh, whole.data(), in.x.data(), in.dt.data(), in.bc.data(), in.A.data(), in.Dskip.data(), kT,
                    nullptr, ComputeDType::BF16);
  std::vector<float> state(static_cast<size_t>(in.sh.state_floats()), 0.0f);
  int64_t t0 = 0;
  for (int64_t n : {13, 1, 2, 21}) {
    ssm1_scan_forward(in.sh, pieces.data() + t0 * D, in.x.data() + t0 * D, in.dt.data() + t0 * D,
                      in.bc.data() + t0 * 2 * N, in.A.data(), in.Dskip.data(), n, state.data(), ComputeDType::BF16);
    t0 += n;
  }
  ASSERT_EQ(t0, kT);
  EXPECT_EQ(pieces, whole);
}

TEST(Mamba1, ScanBackwardMatchesCentralDifferences) {
  const Scan1Inputs in;
  const std::vector<float> dy = randn(static_cast<size_t>(kT * in.sh.D), 5);
  // (accumulates: start from non-zero gradients and subtract them after)
  std::vector<float> dx(in.x.size(), 0.5f), ddt(in.dt.size(), -0.25f), dbc(in.bc.size(), 1.0f);
  ssm1_scan_backward(in.sh, dx.data(), ddt.data(), dbc.data(), dy.data(), in.x.data(), in.dt.data(), in.bc.data(),
                     in.A.data(), in.Dskip.data(), kT, ComputeDType::F32);
  for (float& v : dx) v -= 0.5f;
  for (float& v : ddt) v += 0.25f;
  for (float& v : dbc) v -= 1.0f;
  const auto x = to_d(in.x), dt = to_d(in.dt), bc = to_d(in.bc), w = to_d(dy);
  expect_gradient([&](const std::vector<double>& v) { return scan1_reference(in, v, dt, bc); }, x, w, dx, "d x");
  expect_gradient([&](const std::vector<double>& v) { return scan1_reference(in, x, v, bc); }, dt, w, ddt, "d dt");
  expect_gradient([&](const std::vector<double>& v) { return scan1_reference(in, x, dt, v); }, bc, w, dbc, "d B | C");
}

TEST(Mamba1, Avx512ScanMatchesTheBaseline) {
  if (cpu_simd_level() < SimdLevel::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  const Mamba1Kernels& s = scalar_mamba1_kernels();
  const Mamba1Kernels& v = avx512_mamba1_kernels();
  const Scan1Inputs in(21, 37);
  const int64_t D = in.sh.D;
  const std::vector<float> dy = randn(static_cast<size_t>(kT * D), 5);
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16}) {
    std::vector<float> y1(static_cast<size_t>(kT * D)), y2(y1.size()), st1(static_cast<size_t>(in.sh.state_floats()), 0.25f),
        st2 = st1;
    s.scan_forward(in.sh, y1.data(), in.x.data(), in.dt.data(), in.bc.data(), in.A.data(), in.Dskip.data(), kT,
                   st1.data(), dt);
    v.scan_forward(in.sh, y2.data(), in.x.data(), in.dt.data(), in.bc.data(), in.A.data(), in.Dskip.data(), kT,
                   st2.data(), dt);
    expect_close(y1, y2, 1e-5, "scan forward");
    expect_close(st1, st2, 1e-5, "scan state");
    std::vector<float> dx1(in.x.size(), 0.0f), dx2 = dx1, dd1(in.dt.size(), 0.0f), dd2 = dd1, db1(in.bc.size(), 0.0f),
        db2 = db1;
    s.scan_backward(in.sh, dx1.data(), dd1.data(), db1.data(), dy.data(), in.x.data(), in.dt.data(), in.bc.data(),
                    in.A.data(), in.Dskip.data(), kT, dt);
    v.scan_backward(in.sh, dx2.data(), dd2.data(), db2.data(), dy.data(), in.x.data(), in.dt.data(), in.bc.data(),
                    in.A.data(), in.Dskip.data(), kT, dt);
    expect_close(dx1, dx2, 1e-5, "scan backward d x");
    expect_close(dd1, dd2, 1e-5, "scan backward d dt");
    expect_close(db1, db2, 1e-5, "scan backward d B | C");
  }
}

// The mixer's dt / B / C norms (Falcon-Mamba's, Jamba's): each part of a token normalized over itself
// and scaled by its own weights; the backward against central differences.
TEST(Mamba1, BcdtNormAndBackwardMatchCentralDifferences) {
  const int64_t T = 5, P = 2, W = 7;
  const std::vector<float> x = randn(static_cast<size_t>(T * P * W), 9), w = randn(static_cast<size_t>(P * W), 10);
  const float eps = 1e-3f;
  auto ref = [&](const std::vector<double>& xs) {
    std::vector<double> o(xs.size());
    for (int64_t r = 0; r < T * P; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < W; ++i) ss += xs[r * W + i] * xs[r * W + i];
      const double rs = 1 / std::sqrt(ss / W + eps);
      for (int64_t i = 0; i < W; ++i) o[r * W + i] = w[(r % P) * W + i] * xs[r * W + i] * rs;
    }
    return o;
  };
  std::vector<float> out(x.size()), rstd(static_cast<size_t>(T * P));
  ssm1_norm_forward(out.data(), rstd.data(), x.data(), w.data(), T, P, W, eps, ComputeDType::F32);
  const auto r = ref(to_d(x));
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], r[i], 1e-5);
  const std::vector<float> dout = randn(out.size(), 12);
  std::vector<float> dx(x.size(), 0.0f);
  ssm1_norm_backward(dx.data(), dout.data(), x.data(), w.data(), rstd.data(), T, P, W);
  expect_gradient(ref, to_d(x), to_d(dout), dx, "norm d x");
}
