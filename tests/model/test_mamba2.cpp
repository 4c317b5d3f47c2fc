// Mamba2's ops (model/mamba2.h) against a plain double-precision implementation of the
// recurrence transformers' chunked scan computes (written here), on awkward sizes (6 heads of
// 5 in 2 groups, a state of 7, 37 tokens: more than two of the backward's 16-token chunks);
// the backwards against central differences of that implementation; prefill in pieces against
// one pass; the AVX-512 build of the scan against the baseline one.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "model/mamba2.h"
#include "central_difference.h"

using namespace qlora;
using qlora::testing_util::expect_gradient;
using qlora::testing_util::randn;
using qlora::testing_util::to_d;

namespace {

const SsmShape kShape = [] {
  SsmShape s;
  s.H = 6;
  s.P = 5;
  s.G = 2;
  s.N = 7;
  return s;
}();
constexpr int64_t kT = 37;

struct ScanInputs {
  std::vector<float> xbc = randn(static_cast<size_t>(kT * kShape.xbc_width()), 1);
  std::vector<float> dt = randn(static_cast<size_t>(kT * kShape.H), 2);
  std::vector<float> A_log = {-1.0f, 0.3f, 1.2f, 0.0f, -0.5f, 0.8f};
  std::vector<float> dt_bias = {1.0f, 0.5f, -0.2f, 0.1f, -2.0f, -1.0f};
  std::vector<float> D = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, 1.5f};
};

// The recurrence, in double: per head, S = exp(step A) S + step x B^T, y = S C + D x.
std::vector<double> scan_reference(const SsmShape& sh, const std::vector<double>& xbc, const std::vector<double>& dt,
                                   const ScanInputs& in, int64_t T) {
  const int64_t W = sh.xbc_width(), HP = sh.inner(), GN = sh.G * sh.N, per = sh.H / sh.G;
  std::vector<double> y(static_cast<size_t>(T * HP), 0.0);
  for (int64_t h = 0; h < sh.H; ++h) {
    const int64_t g = h / per;
    std::vector<double> S(static_cast<size_t>(sh.P * sh.N), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const double v = dt[t * sh.H + h] + in.dt_bias[h];
      double step = v > 20 ? v : std::log1p(std::exp(v));
      step = std::min(std::max(step, double(sh.dt_min)), double(sh.dt_max));
      const double a = std::exp(-std::exp(double(in.A_log[h])) * step);
      for (int64_t p = 0; p < sh.P; ++p) {
        const double x = xbc[t * W + h * sh.P + p];
        double acc = 0;
        for (int64_t n = 0; n < sh.N; ++n) {
          double& s = S[p * sh.N + n];
          s = a * s + step * x * xbc[t * W + HP + g * sh.N + n];
          acc += s * xbc[t * W + HP + GN + g * sh.N + n];
        }
        y[t * HP + h * sh.P + p] = acc + in.D[h] * x;
      }
    }
  }
  return y;
}


}  // namespace

TEST(Mamba2, ScanMatchesTheRecurrenceInDouble) {
  const ScanInputs in;
  for (auto [lo, hi] : {std::pair{0.0f, INFINITY}, std::pair{0.3f, 1.5f}}) {  // (the default limit; a clamping one)
    SsmShape sh = kShape;
    sh.dt_min = lo;
    sh.dt_max = hi;
    std::vector<float> y(static_cast<size_t>(kT * sh.inner()));
    ssm_scan_forward(sh, y.data(), in.xbc.data(), in.dt.data(), in.A_log.data(), in.dt_bias.data(), in.D.data(), kT,
                     nullptr, ComputeDType::F32);
    const auto ref = scan_reference(sh, to_d(in.xbc), to_d(in.dt), in, kT);
    double worst = 0, peak = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      worst = std::max(worst, std::fabs(y[i] - ref[i]));
      peak = std::max(peak, std::fabs(ref[i]));
    }
    EXPECT_LT(worst, 1e-5 * peak) << "limit " << lo << ".." << hi;
  }
}

TEST(Mamba2, PrefillInPiecesCarriesTheState) {
  const ScanInputs in;
  const int64_t W = kShape.xbc_width(), HP = kShape.inner(), H = kShape.H;
  std::vector<float> whole(static_cast<size_t>(kT * HP)), pieces(whole.size());
  ssm_scan_forward(kShape, whole.data(), in.xbc.data(), in.dt.data(), in.A_log.data(), in.dt_bias.data(), in.D.data(),
                   kT, nullptr, ComputeDType::BF16);
  std::vector<float> state(static_cast<size_t>(kShape.state_floats()), 0.0f);
  int64_t t0 = 0;
  for (int64_t n : {13, 1, 2, 21}) {
    ssm_scan_forward(kShape, pieces.data() + t0 * HP, in.xbc.data() + t0 * W, in.dt.data() + t0 * H, in.A_log.data(),
                     in.dt_bias.data(), in.D.data(), n, state.data(), ComputeDType::BF16);
    t0 += n;
  }
  ASSERT_EQ(t0, kT);
  EXPECT_EQ(pieces, whole);
}

TEST(Mamba2, ScanBackwardMatchesCentralDifferences) {
  const ScanInputs in;
  for (auto [lo, hi] : {std::pair{0.0f, INFINITY}, std::pair{0.3f, 1.5f}}) {
    SsmShape sh = kShape;
    sh.dt_min = lo;
    sh.dt_max = hi;
    const std::vector<float> dy = randn(static_cast<size_t>(kT * sh.inner()), 5);
    std::vector<float> dxbc(in.xbc.size(), 0.0f), ddt(in.dt.size(), 0.0f);
    ssm_scan_backward(sh, dxbc.data(), ddt.data(), dy.data(), in.xbc.data(), in.dt.data(), in.A_log.data(),
                      in.dt_bias.data(), in.D.data(), kT, ComputeDType::F32);
    const auto xbc = to_d(in.xbc), dt = to_d(in.dt), w = to_d(dy);
    expect_gradient([&](const std::vector<double>& v) { return scan_reference(sh, v, dt, in, kT); }, xbc, w, dxbc,
                    "d xbc");
    expect_gradient([&](const std::vector<double>& v) { return scan_reference(sh, xbc, v, in, kT); }, dt, w, ddt,
                    "d dt");
  }
}

TEST(Mamba2, GatedNormAndBackwardMatchCentralDifferences) {
  const int64_t T = 5, D = 12, G = 3, width = D / G;
  const std::vector<float> y = randn(static_cast<size_t>(T * D), 9), z = randn(static_cast<size_t>(T * D), 10),
                           w = randn(static_cast<size_t>(D), 11);
  // w * u / sqrt(mean(u^2) + eps) per group, u = y * silu(z).
  auto ref = [&](const std::vector<double>& ys, const std::vector<double>& zs) {
    std::vector<double> o(ys.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t off = t * D + g * width;
        double ss = 0;
        for (int64_t i = 0; i < width; ++i) {
          const double u = ys[off + i] * zs[off + i] / (1 + std::exp(-zs[off + i]));
          o[off + i] = u;
          ss += u * u;
        }
        const double rs = 1 / std::sqrt(ss / width + 1e-5);
        for (int64_t i = 0; i < width; ++i) o[off + i] *= rs * w[g * width + i];
      }
    return o;
  };
  std::vector<float> out(y.size()), rstd(static_cast<size_t>(T * G));
  ssm_norm_forward(out.data(), rstd.data(), y.data(), z.data(), w.data(), T, D, G, 1e-5f, ComputeDType::F32);
  const auto r = ref(to_d(y), to_d(z));
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], r[i], 1e-5);
  const std::vector<float> dout = randn(out.size(), 12);
  std::vector<float> dy(y.size(), 0.0f), dz(z.size(), 0.0f);
  ssm_norm_backward(dy.data(), dz.data(), dout.data(), y.data(), z.data(), w.data(), rstd.data(), T, D, G);
  expect_gradient([&](const std::vector<double>& v) { return ref(v, to_d(z)); }, to_d(y), to_d(dout), dy, "norm d y");
  expect_gradient([&](const std::vector<double>& v) { return ref(to_d(y), v); }, to_d(z), to_d(dout), dz, "norm d z");
}

TEST(Mamba2, Avx512ScanMatchesTheBaseline) {
  if (cpu_simd_level() < SimdLevel::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  const Mamba2Kernels& s = scalar_mamba2_kernels();
  const Mamba2Kernels& v = avx512_mamba2_kernels();
  SsmShape sh = kShape;
  sh.N = 37;  // (past two 16-float vectors, with a tail)
  const int64_t W = sh.xbc_width(), HP = sh.inner();
  ScanInputs in;
  in.xbc = randn(static_cast<size_t>(kT * W), 1);
  const std::vector<float> dy = randn(static_cast<size_t>(kT * HP), 5);
  auto close = [](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    double worst = 0, peak = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, double(std::fabs(a[i] - b[i])));
      peak = std::max(peak, double(std::fabs(a[i])));
    }
    EXPECT_LE(worst, 1e-5 * peak) << what;  // (the compilers contract and order differently)
  };
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16}) {
    std::vector<float> y1(static_cast<size_t>(kT * HP)), y2(y1.size()), st1(static_cast<size_t>(sh.state_floats()), 0.25f),
        st2 = st1;
    s.scan_forward(sh, y1.data(), in.xbc.data(), in.dt.data(), in.A_log.data(), in.dt_bias.data(), in.D.data(), kT,
                   st1.data(), dt);
    v.scan_forward(sh, y2.data(), in.xbc.data(), in.dt.data(), in.A_log.data(), in.dt_bias.data(), in.D.data(), kT,
                   st2.data(), dt);
    close(y1, y2, "scan forward");
    close(st1, st2, "scan state");
    std::vector<float> dx1(in.xbc.size(), 0.0f), dx2 = dx1, dd1(in.dt.size(), 0.0f), dd2 = dd1;
    s.scan_backward(sh, dx1.data(), dd1.data(), dy.data(), in.xbc.data(), in.dt.data(), in.A_log.data(),
                    in.dt_bias.data(), in.D.data(), kT, dt);
    v.scan_backward(sh, dx2.data(), dd2.data(), dy.data(), in.xbc.data(), in.dt.data(), in.A_log.data(),
                    in.dt_bias.data(), in.D.data(), kT, dt);
    close(dx1, dx2, "scan backward d xbc");
    close(dd1, dd2, "scan backward d dt");
  }
}
