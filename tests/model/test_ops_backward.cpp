// Every backward in ops_backward.h against central finite differences of a DOUBLE
// precision re-implementation of its forward, written here from the definition: for a
// random R, L = sum(out * R), so dout = R and the analytic input gradients must match
// dL/dinput. Sizes are deliberately awkward (odd C, grouped heads, Tk > T with
// q_pos0 > 0). Gradient buffers start non-zero to check that backward accumulates.
// Then the optimized matmul backwards against their scalar references, and one whole
// llama block (norm, q/k/v, rope, attention, o, residual, norm, gate/up, swiglu, down,
// residual) backpropagated op by op against finite differences of the whole block.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "base/error.h"
#include "base/float_formats.h"
#include "lora/lora.h"
#include "model/backend.h"
#include "model/gemm.h"
#include "model/gemm_bf16.h"
#include "model/ops.h"
#include "model/ops_backward.h"
#include "model/quant_linear.h"

using namespace qlora;

namespace {

using VecD = std::vector<double>;
using VecF = std::vector<float>;

VecF randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  VecF v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

VecD to_d(const VecF& v) { return VecD(v.begin(), v.end()); }

// Central differences of f at x (double), step h.
VecD finite_diff(const std::function<double(const VecD&)>& f, VecD x, double h = 1e-5) {
  VecD g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// |analytic - numeric| <= tol * (|numeric| + 1e-2 * max|numeric|) element-wise: relative
// error, with a floor so that near-zero components are judged against the gradient's scale.
void expect_grad(const VecF& analytic, const VecD& numeric, const char* what, double tol = 1e-4) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  double mx = 0.0;
  for (double v : numeric) mx = std::max(mx, std::fabs(v));
  ASSERT_GT(mx, 0.0) << what << ": the numeric gradient is all zero";
  double worst = 0.0;
  for (size_t i = 0; i < numeric.size(); ++i) {
    const double err = std::fabs(analytic[i] - numeric[i]) / (std::fabs(numeric[i]) + 1e-2 * mx);
    worst = std::max(worst, err);
    EXPECT_LT(err, tol) << what << " at " << i << ": analytic " << analytic[i] << " numeric " << numeric[i];
  }
  ::testing::Test::RecordProperty(what, std::to_string(worst));
  std::printf("  %-18s worst scaled error %.2e\n", what, worst);
}

// Subtracts the starting contents of an accumulated gradient buffer.
VecF minus(const VecF& a, const VecF& b) {
  VecF r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] - b[i];
  return r;
}

double dot_d(const VecD& a, const VecF& r) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * r[i];
  return s;
}

// --- double precision forwards, from the definitions in ops.h ------------------------

VecD rmsnorm_d(const VecD& x, const VecD& w, int64_t T, int64_t C, double eps) {
  VecD out(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < C; ++i) ss += x[t * C + i] * x[t * C + i];
    const double r = 1.0 / std::sqrt(ss / C + eps);
    for (int64_t i = 0; i < C; ++i) out[t * C + i] = w[i] * (x[t * C + i] * r);
  }
  return out;
}

VecD rope_d(VecD x, const VecF& cos, const VecF& sin, int64_t T, int64_t NH, int64_t HS) {
  const int64_t half = HS / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < NH; ++h) {
      double* v = x.data() + (t * NH + h) * HS;
      for (int64_t i = 0; i < half; ++i) {
        const double c = cos[t * half + i], s = sin[t * half + i];
        const double x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c - x1 * s;
        v[i + half] = x1 * c + x0 * s;
      }
    }
  return x;
}

VecD attention_d(const VecD& q, const VecD& k, const VecD& v, int64_t T, int64_t Tk, int64_t q_pos0, int64_t NH,
                 int64_t NKV, int64_t HS, double softcap = 0.0) {
  const int64_t group = NH / NKV, qs = NH * HS, kvs = NKV * HS;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS));
  VecD out(T * qs, 0.0);
  if (q_pos0 + T > Tk || static_cast<int64_t>(k.size()) != Tk * kvs) std::abort();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < NH; ++h) {
      const int64_t kh = h / group, n = q_pos0 + t + 1;
      VecD s(n);
      double mx = -1e300;
      for (int64_t j = 0; j < n; ++j) {
        double d = 0.0;
        for (int64_t i = 0; i < HS; ++i) d += q[t * qs + h * HS + i] * k[j * kvs + kh * HS + i];
        s[j] = d * scale;
        if (softcap > 0.0) s[j] = softcap * std::tanh(s[j] / softcap);
        mx = std::max(mx, s[j]);
      }
      double sum = 0.0;
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < HS; ++i) out[t * qs + h * HS + i] += s[j] / sum * v[j * kvs + kh * HS + i];
    }
  return out;
}

VecD swiglu_d(const VecD& g, const VecD& u) {
  VecD out(g.size());
  for (size_t i = 0; i < g.size(); ++i) out[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  return out;
}

// Y (T, out) = X (T, in) · Wᵀ, W (out, in).
VecD linear_d(const VecD& x, const VecD& W, int64_t T, int64_t in, int64_t out) {
  VecD y(T * out, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0;
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * W[o * in + i];
      y[t * out + o] = s;
    }
  return y;
}

VecF linear_f(const VecF& x, const VecF& W, int64_t T, int64_t in, int64_t out) {
  VecF y(T * out, 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      float s = 0.0f;
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * W[o * in + i];
      y[t * out + o] = s;
    }
  return y;
}

double cross_entropy_d(const VecD& logits, const std::vector<int>& targets, int64_t T, int64_t V,
                       VecD* losses = nullptr) {
  double total = 0.0;
  int n = 0;
  for (int64_t t = 0; t < T; ++t) {
    double l = 0.0;
    if (targets[t] != -100) {
      double mx = -1e300, s = 0.0;
      for (int64_t j = 0; j < V; ++j) mx = std::max(mx, logits[t * V + j]);
      for (int64_t j = 0; j < V; ++j) s += std::exp(logits[t * V + j] - mx);
      l = std::log(s) + mx - logits[t * V + targets[t]];
      total += l;
      ++n;
    }
    if (losses) losses->push_back(l);
  }
  return n ? total / n : 0.0;
}

}  // namespace

TEST(OpsBackward, RmsNorm) {
  std::mt19937 rng(1);
  const int64_t T = 3, C = 13;
  const float eps = 1e-5f;
  const VecF x = randn(T * C, rng), R = randn(T * C, rng);
  VecF w = randn(C, rng, 0.3f);
  for (auto& e : w) e += 1.0f;
  VecF out(T * C), rstd(T);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, C, eps);
  const VecF dx0 = randn(T * C, rng), dw0 = randn(C, rng);
  VecF dx = dx0, dw = dw0;
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), T, C);
  const VecD xd = to_d(x), wd = to_d(w);
  expect_grad(minus(dx, dx0), finite_diff([&](const VecD& xx) { return dot_d(rmsnorm_d(xx, wd, T, C, eps), R); }, xd),
              "rmsnorm dinp");
  expect_grad(minus(dw, dw0), finite_diff([&](const VecD& ww) { return dot_d(rmsnorm_d(xd, ww, T, C, eps), R); }, wd),
              "rmsnorm dweight");
  // A frozen weight: no dweight, the same dinp.
  VecF dx2 = dx0;
  rmsnorm_backward(dx2.data(), nullptr, R.data(), x.data(), w.data(), rstd.data(), T, C);
  EXPECT_EQ(dx2, dx);
}

// LayerNorm with bias, in double from its definition (biased variance).
VecD layernorm_d(const VecD& x, const VecD& w, const VecD& b, int64_t T, int64_t C, double eps) {
  VecD o(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < C; ++i) m += x[t * C + i];
    m /= C;
    for (int64_t i = 0; i < C; ++i) v += (x[t * C + i] - m) * (x[t * C + i] - m);
    v /= C;
    for (int64_t i = 0; i < C; ++i) o[t * C + i] = (x[t * C + i] - m) / std::sqrt(v + eps) * w[i] + b[i];
  }
  return o;
}

TEST(OpsBackward, LayerNorm) {
  std::mt19937 rng(11);
  const int64_t T = 3, C = 13;
  const float eps = 1e-5f;
  VecF x = randn(T * C, rng), R = randn(T * C, rng), w = randn(C, rng, 0.3f), b = randn(C, rng, 0.2f);
  for (auto& e : w) e += 1.0f;
  for (int64_t i = 0; i < C; ++i) x[i] += 3.0f;  // a row far from zero mean
  VecF out(T * C), stats(2 * T);
  layernorm_forward(out.data(), stats.data(), x.data(), w.data(), b.data(), T, C, eps);
  const VecD ref = layernorm_d(to_d(x), to_d(w), to_d(b), T, C, eps);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 2e-6 * (1 + std::fabs(ref[i])));
  const VecF dx0 = randn(T * C, rng);
  VecF dx = dx0;
  layernorm_backward(dx.data(), R.data(), x.data(), w.data(), stats.data(), T, C);
  const VecD wd = to_d(w), bd = to_d(b);
  expect_grad(minus(dx, dx0),
              finite_diff([&](const VecD& xx) { return dot_d(layernorm_d(xx, wd, bd, T, C, eps), R); }, to_d(x)),
              "layernorm dinp");
}

TEST(OpsBackward, Activations) {
  std::mt19937 rng(12);
  const int64_t N = 37;
  VecF x = randn(N, rng, 2.0f);
  x[0] = 0.0f;
  const VecF R = randn(N, rng);
  struct Case {
    Activation a;
    const char* name;
    double (*f)(double);
  };
  const Case cases[] = {
      {Activation::Gelu, "gelu dx", [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }},
      {Activation::GeluTanh, "gelu_tanh dx",
       [](double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }},
      {Activation::Relu, "relu dx", [](double v) { return v > 0 ? v : 0.0; }},
      {Activation::Relu2, "relu2 dx", [](double v) { return v > 0 ? v * v : 0.0; }},
  };
  for (const Case& c : cases) {
    VecF out(N);
    activation_forward(out.data(), x.data(), N, c.a);
    for (int64_t i = 0; i < N; ++i) EXPECT_NEAR(out[i], c.f(x[i]), 2e-6 * (1 + std::fabs(x[i]))) << c.name;
    const VecF dx0 = randn(N, rng);
    VecF dx = dx0;
    activation_backward(dx.data(), R.data(), x.data(), N, c.a);
    VecF xs = x;
    const bool kink = c.a == Activation::Relu || c.a == Activation::Relu2;
    if (kink) xs[0] = 0.5f;  // (no derivative at the kink)
    if (kink) {
      dx = dx0;
      activation_backward(dx.data(), R.data(), xs.data(), N, c.a);
    }
    expect_grad(minus(dx, dx0), finite_diff([&](const VecD& xx) {
                  double s = 0;
                  for (int64_t i = 0; i < N; ++i) s += c.f(xx[i]) * R[i];
                  return s;
                }, to_d(xs)),
                c.name);
  }
}

// xIELU (Apertus) with a layer's parameters: the forward against the formula in double (softplus
// as torch's), the backward against central differences, away from 0 and eps where it has kinks.
TEST(OpsBackward, Xielu) {
  std::mt19937 rng(13);
  const int64_t N = 41;
  VecF x = randn(N, rng, 2.0f);
  for (float& v : x)
    if (std::fabs(v) < 0.05f) v = 0.3f;  // (the kinks at 0 and eps = -1e-6)
  const VecF R = randn(N, rng);
  XieluParams xp;
  xp.alpha_p = -0.4f;
  xp.alpha_n = 0.7f;
  xp.beta = 0.45f;
  xp.eps = -1e-6f;
  const double ap = std::log1p(std::exp(double(xp.alpha_p))), an = xp.beta + std::log1p(std::exp(double(xp.alpha_n)));
  auto f = [&](double v) { return v > 0 ? ap * v * v + xp.beta * v : (std::expm1(std::min(v, double(xp.eps))) - v) * an + xp.beta * v; };
  VecF out(N);
  activation_forward(out.data(), x.data(), N, Activation::Xielu, &xp);
  for (int64_t i = 0; i < N; ++i) EXPECT_NEAR(out[i], f(x[i]), 2e-6 * (1 + std::fabs(x[i]) * std::fabs(x[i]))) << x[i];
  const VecF dx0 = randn(N, rng);
  VecF dx = dx0;
  activation_backward(dx.data(), R.data(), x.data(), N, Activation::Xielu, &xp);
  expect_grad(minus(dx, dx0), finite_diff([&](const VecD& xx) {
                double s = 0;
                for (int64_t i = 0; i < N; ++i) s += f(xx[i]) * R[i];
                return s;
              }, to_d(x)),
              "xielu dx");
  // (without its parameters the op refuses rather than guess)
  EXPECT_THROW(activation_forward(out.data(), x.data(), N, Activation::Xielu), Error);
}

TEST(OpsBackward, Rope) {
  std::mt19937 rng(2);
  const int64_t T = 3, NH = 4, HS = 6;
  const std::vector<int32_t> pos = {5, 9, 2};
  VecF cos(T * HS / 2), sin(T * HS / 2);
  rope_tables(cos.data(), sin.data(), pos.data(), T, HS, 10000.0f);
  const VecF x = randn(T * NH * HS, rng), R = randn(T * NH * HS, rng);
  VecF dx = R;  // d L / d rotated
  rope_backward(dx.data(), cos.data(), sin.data(), T, NH, HS);
  expect_grad(dx, finite_diff([&](const VecD& xx) { return dot_d(rope_d(xx, cos, sin, T, NH, HS), R); }, to_d(x)),
              "rope dx");
  // And the float forward agrees with the double one it is checked against.
  VecF y = x;
  rope_forward(y.data(), cos.data(), sin.data(), T, NH, HS);
  const VecD yd = rope_d(to_d(x), cos, sin, T, NH, HS);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], yd[i], 1e-5);
}

// The interleaved, partial form's backward is its forward's transpose: <rope(x), r> = <x, rope^T(r)>.
TEST(OpsBackward, InterleavedPartialRopeIsTheTransposeOfItsForward) {
  std::mt19937 rng(4);
  const int64_t T = 3, NH = 2, HS = 10, rot = 6;
  const std::vector<int32_t> pos = {1, 7, 30};
  VecF cos(T * rot / 2), sin(T * rot / 2);
  rope_tables(cos.data(), sin.data(), pos.data(), T, rot, 10000.0f);
  const VecF x = randn(T * NH * HS, rng), R = randn(T * NH * HS, rng);
  VecF y = x, dx = R;
  rope_forward(y.data(), cos.data(), sin.data(), T, NH, HS, rot, true);
  rope_backward(dx.data(), cos.data(), sin.data(), T, NH, HS, rot, true);
  double a = 0, b = 0;
  for (size_t i = 0; i < x.size(); ++i) a += double(y[i]) * R[i], b += double(x[i]) * dx[i];
  EXPECT_NEAR(a, b, 1e-4 * std::max(1.0, std::fabs(a)));
  for (int64_t t = 0; t < T; ++t)  // (the pass-through dims' gradient is the incoming one)
    for (int64_t i = rot; i < HS; ++i) EXPECT_EQ(dx[t * NH * HS + i], R[t * NH * HS + i]);
}

namespace {

void check_attention(int64_t T, int64_t Tk, int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, unsigned seed) {
  SCOPED_TRACE(::testing::Message() << "T=" << T << " Tk=" << Tk << " q_pos0=" << q_pos0 << " NH=" << NH
                                    << " NKV=" << NKV << " HS=" << HS);
  std::mt19937 rng(seed);
  const int64_t qs = NH * HS, kvs = NKV * HS;
  const VecF q = randn(T * qs, rng), k = randn(Tk * kvs, rng), v = randn(Tk * kvs, rng), R = randn(T * qs, rng);
  VecF out(T * qs), att(NH * T * Tk), datt(NH * T * Tk);
  attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, Tk, q_pos0, NH, NKV, HS);
  const VecD qd = to_d(q), kd = to_d(k), vd = to_d(v);
  {  // the float forward matches the double reference used for the finite differences
    const VecD od = attention_d(qd, kd, vd, T, Tk, q_pos0, NH, NKV, HS);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], od[i], 1e-5);
  }
  const VecF dq0 = randn(q.size(), rng), dk0 = randn(k.size(), rng), dv0 = randn(v.size(), rng);
  VecF dq = dq0, dk = dk0, dv = dv0;
  attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), nullptr, R.data(), q.data(), k.data(), v.data(),
                     att.data(), T, Tk, q_pos0, NH, NKV, HS);
  const VecD gq =
      finite_diff([&](const VecD& x) { return dot_d(attention_d(x, kd, vd, T, Tk, q_pos0, NH, NKV, HS), R); }, qd);
  expect_grad(minus(dq, dq0), gq, "attention dq");
  const VecD gk =
      finite_diff([&](const VecD& x) { return dot_d(attention_d(qd, x, vd, T, Tk, q_pos0, NH, NKV, HS), R); }, kd);
  const VecD gv =
      finite_diff([&](const VecD& x) { return dot_d(attention_d(qd, kd, x, T, Tk, q_pos0, NH, NKV, HS), R); }, vd);
  expect_grad(minus(dk, dk0), gk, "attention dk");
  expect_grad(minus(dv, dv0), gv, "attention dv");
  // Keys past the last query's position are attended by nobody: exactly no gradient.
  for (int64_t j = q_pos0 + T; j < Tk; ++j)
    for (int64_t i = 0; i < kvs; ++i) {
      EXPECT_EQ(dk[j * kvs + i], dk0[j * kvs + i]);
      EXPECT_EQ(dv[j * kvs + i], dv0[j * kvs + i]);
    }
}

}  // namespace

TEST(OpsBackward, AttentionGroupedWithCachePrefix) { check_attention(3, 7, 4, 4, 2, 6, 3); }
TEST(OpsBackward, AttentionUnattendedKeys) { check_attention(3, 9, 2, 4, 2, 6, 4); }
TEST(OpsBackward, AttentionTrainingShape) { check_attention(5, 5, 0, 4, 2, 6, 5); }
TEST(OpsBackward, AttentionMultiQuery) { check_attention(4, 6, 2, 3, 1, 4, 6); }
TEST(OpsBackward, AttentionMultiHead) { check_attention(4, 4, 0, 2, 2, 8, 7); }
// From kAttentionGemmMinTokens queries on, attention runs as per-head GEMMs (with a library).
TEST(OpsBackward, AttentionGemmTrainingShape) { check_attention(kAttentionGemmMinTokens + 1, 17, 0, 4, 2, 6, 8); }
TEST(OpsBackward, AttentionGemmWithCachePrefix) { check_attention(18, 31, 13, 3, 1, 4, 9); }

// A packed window (key_start) on the GEMM path equals each example computed alone on the
// per-query loop (fewer than kAttentionGemmMinTokens queries each): the two paths agree and
// nothing leaks across the boundary, forward and backward.
TEST(OpsBackward, AttentionPackedGemmEqualsSeparateLoops) {
  const int64_t A = 12, B = 9, T = A + B, NH = 4, NKV = 2, HS = 8, qs = NH * HS, kvs = NKV * HS;
  static_assert(12 < kAttentionGemmMinTokens && 21 >= kAttentionGemmMinTokens);
  std::mt19937 rng(11);
  const VecF q = randn(T * qs, rng), k = randn(T * kvs, rng), v = randn(T * kvs, rng), R = randn(T * qs, rng);
  std::vector<int32_t> ks(T);
  for (int64_t t = 0; t < T; ++t) ks[t] = t < A ? 0 : static_cast<int32_t>(A);
  VecF out(T * qs), att(NH * T * T), datt(NH * T * T), dq(T * qs, 0.f), dk(T * kvs, 0.f), dv(T * kvs, 0.f);
  attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, T, 0, NH, NKV, HS, ks.data());
  attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), nullptr, R.data(), q.data(), k.data(), v.data(), att.data(),
                     T, T, 0, NH, NKV, HS, ks.data());
  for (auto [t0, n] : {std::pair<int64_t, int64_t>{0, A}, {A, B}}) {
    VecF o(n * qs), a(NH * n * n), da(NH * n * n), gq(n * qs, 0.f), gk(n * kvs, 0.f), gv(n * kvs, 0.f);
    attention_forward(o.data(), a.data(), nullptr, q.data() + t0 * qs, k.data() + t0 * kvs, v.data() + t0 * kvs, n, n, 0, NH,
                      NKV, HS);
    attention_backward(gq.data(), gk.data(), gv.data(), da.data(), nullptr, R.data() + t0 * qs, q.data() + t0 * qs,
                       k.data() + t0 * kvs, v.data() + t0 * kvs, a.data(), n, n, 0, NH, NKV, HS);
    for (int64_t i = 0; i < n * qs; ++i) {
      EXPECT_NEAR(out[t0 * qs + i], o[i], 2e-6) << "out " << t0 << " " << i;
      EXPECT_NEAR(dq[t0 * qs + i], gq[i], 2e-5) << "dq " << t0 << " " << i;
    }
    for (int64_t i = 0; i < n * kvs; ++i) {
      EXPECT_NEAR(dk[t0 * kvs + i], gk[i], 2e-5) << "dk " << t0 << " " << i;
      EXPECT_NEAR(dv[t0 * kvs + i], gv[i], 2e-5) << "dv " << t0 << " " << i;
    }
  }
}

// Enough queries and keys for several causal row blocks and key blocks of the GEMM path
// (model/attention_gemm.cpp: 64 each), with a cache prefix (q_pos0 > 0), packed windows,
// grouped and multi-query heads: the path equals the per-query loop run on chunks of fewer
// than kAttentionGemmMinTokens queries (each query's output and dq depend on its own row;
// dk and dv are the chunks' sum), and its results do not depend on the thread count.
TEST(OpsBackward, AttentionGemmBlocksEqualLoopChunks) {
  struct Case {
    int64_t T, Tk, q_pos0, NH, NKV, HS;
    bool packed;
  };
  for (const Case c : {Case{150, 170, 20, 6, 2, 8, false}, Case{130, 130, 0, 3, 1, 4, true},
                       Case{65, 200, 135, 4, 4, 8, false}}) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.T << " Tk=" << c.Tk << " NKV=" << c.NKV);
    const int64_t qs = c.NH * c.HS, kvs = c.NKV * c.HS;
    std::mt19937 rng(31);
    const VecF q = randn(c.T * qs, rng), k = randn(c.Tk * kvs, rng), v = randn(c.Tk * kvs, rng),
               R = randn(c.T * qs, rng);
    std::vector<int32_t> ks(static_cast<size_t>(c.T));  // packed: examples of 70 tokens
    for (int64_t t = 0; t < c.T; ++t) ks[t] = c.packed ? static_cast<int32_t>((c.q_pos0 + t) / 70 * 70) : 0;
    const int32_t* key_start = c.packed ? ks.data() : nullptr;
    auto run_gemm = [&](int threads, VecF& out, VecF& dq, VecF& dk, VecF& dv) {
      const int before = omp_get_max_threads();
      omp_set_num_threads(threads);
      VecF att(c.NH * c.T * c.Tk), datt(att.size());
      out.assign(c.T * qs, 0.f);
      dq.assign(c.T * qs, 0.f);
      dk.assign(c.Tk * kvs, 0.f);
      dv.assign(c.Tk * kvs, 0.f);
      attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), c.T, c.Tk, c.q_pos0, c.NH,
                        c.NKV, c.HS, key_start);
      attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), nullptr, R.data(), q.data(), k.data(),
                         v.data(), att.data(), c.T, c.Tk, c.q_pos0, c.NH, c.NKV, c.HS, key_start);
      omp_set_num_threads(before);
    };
    VecF out, dq, dk, dv;
    run_gemm(2, out, dq, dk, dv);
    // The loop, 10 queries at a time; each chunk sees the keys up to its last query.
    VecF gk(c.Tk * kvs, 0.f), gv(c.Tk * kvs, 0.f);
    for (int64_t t0 = 0; t0 < c.T; t0 += 10) {
      const int64_t n = std::min<int64_t>(10, c.T - t0), tk = c.q_pos0 + t0 + n;
      static_assert(10 < kAttentionGemmMinTokens);
      VecF o(n * qs), a(c.NH * n * tk), da(a.size()), gq(n * qs, 0.f);
      attention_forward(o.data(), a.data(), nullptr, q.data() + t0 * qs, k.data(), v.data(), n, tk, c.q_pos0 + t0,
                        c.NH, c.NKV, c.HS, key_start ? key_start + t0 : nullptr);
      attention_backward(gq.data(), gk.data(), gv.data(), da.data(), nullptr, R.data() + t0 * qs, q.data() + t0 * qs,
                         k.data(), v.data(), a.data(), n, tk, c.q_pos0 + t0, c.NH, c.NKV, c.HS,
                         key_start ? key_start + t0 : nullptr);
      for (int64_t i = 0; i < n * qs; ++i) {
        ASSERT_NEAR(out[t0 * qs + i], o[i], 2e-6) << "out " << t0 << " " << i;
        ASSERT_NEAR(dq[t0 * qs + i], gq[i], 2e-5) << "dq " << t0 << " " << i;
      }
    }
    for (int64_t i = 0; i < c.Tk * kvs; ++i) {
      ASSERT_NEAR(dk[i], gk[i], 5e-5) << "dk " << i;
      ASSERT_NEAR(dv[i], gv[i], 5e-5) << "dv " << i;
    }
    for (int threads : {1, 3}) {  // (3: an odd split of the heads and of the snake of key blocks)
      VecF out2, dq2, dk2, dv2;
      run_gemm(threads, out2, dq2, dk2, dv2);
      EXPECT_EQ(out2, out) << threads << " threads";
      EXPECT_EQ(dq2, dq) << threads << " threads";
      EXPECT_EQ(dk2, dk) << threads << " threads";
      EXPECT_EQ(dv2, dv) << threads << " threads";
    }
  }
}

// Gemma 2's soft-capped scores on the GEMM path with enough queries that the softmax rows
// are split across threads (every worker reads the head's raw scores from the one declared
// scratch; when they were a thread_local, a worker read its own empty copy and crashed):
// finite differences.
TEST(OpsBackward, AttentionSoftcapGemmAcrossThreads) {
  const int64_t T = 48, NH = 2, NKV = 1, HS = 4, qs = NH * HS, kvs = NKV * HS;
  const double cap = 1.5;
  std::mt19937 rng(21);
  const VecF q = randn(T * qs, rng), k = randn(T * kvs, rng), v = randn(T * kvs, rng), R = randn(T * qs, rng);
  VecF out(T * qs), att(NH * T * T), datt(NH * T * T), dq(T * qs, 0.f), dk(T * kvs, 0.f), dv(T * kvs, 0.f);
  attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, T, 0, NH, NKV, HS, nullptr, 0.0f,
                    static_cast<float>(cap));
  // The softcap's raw scores, in exactly the scratch the op declares.
  VecF raw(static_cast<size_t>(attention_backward_scratch_floats(T, T, static_cast<float>(cap))));
  attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), raw.data(), R.data(), q.data(), k.data(), v.data(),
                     att.data(), T, T, 0, NH, NKV, HS, nullptr, 0.0f, static_cast<float>(cap));
  const VecD qd = to_d(q), kd = to_d(k), vd = to_d(v);
  const VecD od = attention_d(qd, kd, vd, T, T, 0, NH, NKV, HS, cap);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], od[i], 1e-5);
  expect_grad(dq, finite_diff([&](const VecD& x) { return dot_d(attention_d(x, kd, vd, T, T, 0, NH, NKV, HS, cap), R); }, qd),
              "softcap dq");
  expect_grad(dk, finite_diff([&](const VecD& x) { return dot_d(attention_d(qd, x, vd, T, T, 0, NH, NKV, HS, cap), R); }, kd),
              "softcap dk");
}

TEST(OpsBackward, AttentionRejectsBadShapes) {
  VecF buf(1024);
  EXPECT_THROW(attention_backward(buf.data(), buf.data(), buf.data(), buf.data(), nullptr, buf.data(), buf.data(), buf.data(),
                                  buf.data(), buf.data(), 3, 4, 2, 4, 2, 6),
               Error);
  EXPECT_THROW(attention_backward(buf.data(), buf.data(), buf.data(), buf.data(), nullptr, buf.data(), buf.data(), buf.data(),
                                  buf.data(), buf.data(), 3, 4, 0, 4, 3, 6),
               Error);
}

TEST(OpsBackward, SwiGLU) {
  std::mt19937 rng(8);
  const int64_t N = 17;
  VecF g = randn(N, rng, 2.0f), u = randn(N, rng), R = randn(N, rng);
  g[0] = 0.0f;
  g[1] = -9.0f;
  g[2] = 7.5f;
  const VecF dg0 = randn(N, rng), du0 = randn(N, rng);
  VecF dg = dg0, du = du0;
  swiglu_backward(dg.data(), du.data(), R.data(), g.data(), u.data(), N);
  const VecD gd = to_d(g), ud = to_d(u);
  expect_grad(minus(dg, dg0), finite_diff([&](const VecD& x) { return dot_d(swiglu_d(x, ud), R); }, gd),
              "swiglu dgate");
  expect_grad(minus(du, du0), finite_diff([&](const VecD& x) { return dot_d(swiglu_d(gd, x), R); }, ud), "swiglu dup");
}

TEST(OpsBackward, Residual) {
  std::mt19937 rng(9);
  const VecF R = randn(11, rng), a0 = randn(11, rng), b0 = randn(11, rng);
  VecF a = a0, b = b0;
  residual_backward(a.data(), b.data(), R.data(), 11);
  for (int i = 0; i < 11; ++i) {
    EXPECT_EQ(a[i], a0[i] + R[i]);
    EXPECT_EQ(b[i], b0[i] + R[i]);
  }
  residual_backward(nullptr, b.data(), R.data(), 11);  // either side may be absent
  for (int i = 0; i < 11; ++i) EXPECT_EQ(b[i], b0[i] + R[i] + R[i]);
}

TEST(OpsBackward, MatmulFiniteDifferences) {
  for (int64_t T : {3, 11}) {  // the few-token (axpy) and the GEMM paths
    SCOPED_TRACE(T);
    std::mt19937 rng(10);
    const int64_t in = 13, out = 7;
    const VecF x = randn(T * in, rng), W = randn(out * in, rng), R = randn(T * out, rng);
    const VecF dx0 = randn(x.size(), rng), dW0 = randn(W.size(), rng);
    VecF dx = dx0, dW = dW0;
    matmul_backward_input(dx.data(), R.data(), W.data(), T, in, out);
    matmul_backward_weight(dW.data(), R.data(), x.data(), T, in, out);
    const VecD xd = to_d(x), Wd = to_d(W);
    expect_grad(minus(dx, dx0),
                finite_diff([&](const VecD& v) { return dot_d(linear_d(v, Wd, T, in, out), R); }, xd), "linear dinp");
    expect_grad(minus(dW, dW0),
                finite_diff([&](const VecD& v) { return dot_d(linear_d(xd, v, T, in, out), R); }, Wd), "linear dW");
  }
}

TEST(OpsBackward, MatmulMatchesScalarReference) {
  std::mt19937 rng(11);
  struct Dims { int64_t T, in, out; };
  // Sizes on both sides of the 8-token switch to the GEMM, straddling the 64-column
  // panels, and big enough to run multi-threaded.
  for (Dims d : {Dims{1, 1, 1}, Dims{3, 9000, 5}, Dims{7, 65, 129}, Dims{8, 64, 1}, Dims{37, 1029, 71},
                 Dims{9, 513, 17}, Dims{64, 600, 130}}) {
    SCOPED_TRACE(::testing::Message() << d.T << "x" << d.in << "x" << d.out);
    const VecF x = randn(d.T * d.in, rng), W = randn(d.out * d.in, rng), dY = randn(d.T * d.out, rng);
    const VecF dx0 = randn(x.size(), rng), dW0 = randn(W.size(), rng);
    VecF dx = dx0, dx_ref = dx0, dW = dW0, dW_ref = dW0;
    matmul_backward_input(dx.data(), dY.data(), W.data(), d.T, d.in, d.out);
    matmul_backward_input_ref(dx_ref.data(), dY.data(), W.data(), d.T, d.in, d.out);
    matmul_backward_weight(dW.data(), dY.data(), x.data(), d.T, d.in, d.out);
    matmul_backward_weight_ref(dW_ref.data(), dY.data(), x.data(), d.T, d.in, d.out);
    const float tol_x = 1e-5f * std::sqrt(static_cast<float>(d.out));
    const float tol_w = 1e-5f * std::sqrt(static_cast<float>(d.T));
    for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx[i], dx_ref[i], tol_x * (1 + std::fabs(dx_ref[i]))) << i;
    for (size_t i = 0; i < dW.size(); ++i) ASSERT_NEAR(dW[i], dW_ref[i], tol_w * (1 + std::fabs(dW_ref[i]))) << i;
    // The same dX from slabs of W rows (how a 4-bit weight is dequantized), via dout_stride.
    VecF dx_slabs = dx0;
    for (int64_t o0 = 0; o0 < d.out; o0 += 5) {
      const int64_t o1 = std::min(d.out, o0 + 5);
      matmul_backward_input(dx_slabs.data(), dY.data() + o0, W.data() + o0 * d.in, d.T, d.in, o1 - o0, d.out);
    }
    for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx_slabs[i], dx_ref[i], tol_x * (1 + std::fabs(dx_ref[i]))) << i;
  }
}

TEST(OpsBackward, PaddedTileStrideAvoidsMultiplesOfOneKiB) {
  // A cache line at least, never a multiple of 1 KiB (model/gemm.h says why).
  for (int64_t cols : {1, 5, 16, 17, 64, 200, 256, 576, 1024, 1536, 2048, 5632, 8192}) {
    const int64_t ld = sgemm_padded_ld(cols);
    EXPECT_GE(ld, cols) << cols;
    EXPECT_EQ(ld % 16, 0) << cols;
    EXPECT_NE(ld % 256, 0) << cols;
    EXPECT_LE(ld, (cols + 15) / 16 * 16 + 16) << cols;
  }
  EXPECT_EQ(sgemm_padded_ld(576), 576);
  EXPECT_EQ(sgemm_padded_ld(2048), 2064);
}

TEST(OpsBackward, StridedDequantizeEqualsContiguous) {
  std::mt19937 rng(13);
  const int64_t out = 37, in = 256, ld = sgemm_padded_ld(in);
  const VecF w = randn(out * in, rng, 0.02f);
  QuantOptions q;
  q.double_quant = true;
  const QuantLinear W(w.data(), out, in, q, ComputeDType::F32);
  const DenseWeight D(w.data(), out, in, ComputeDType::BF16);
  VecF flat(out * in), strided(out * ld, -7.0f), dflat(out * in), dstrided(out * ld, -7.0f);
  W.dequantize_rows(3, out, flat.data());
  W.dequantize_rows(3, out, strided.data(), ld);
  D.rows_to_f32(3, out, dflat.data());
  D.rows_to_f32(3, out, dstrided.data(), ld);
  for (int64_t r = 0; r < out - 3; ++r)
    for (int64_t i = 0; i < ld; ++i) {
      if (i < in) {
        ASSERT_EQ(strided[r * ld + i], flat[r * in + i]) << r << "," << i;
        ASSERT_EQ(dstrided[r * ld + i], dflat[r * in + i]) << r << "," << i;
      } else {  // the padding is left alone
        ASSERT_EQ(strided[r * ld + i], -7.0f);
        ASSERT_EQ(dstrided[r * ld + i], -7.0f);
      }
    }
}

TEST(OpsBackward, BackendBackwardThroughPaddedTilesMatchesReference) {
  // The CPU backend's backward through a frozen 4-bit weight (and a bf16 head) dequantizes
  // tiles of rows at a padded stride: widths on and off 1 KiB multiples, several tiles.
  std::mt19937 rng(14);
  struct Dims { int64_t T, in, out; };
  for (Dims d : {Dims{16, 1024, 300}, Dims{9, 200, 41}, Dims{33, 512, 1100}, Dims{9, 64, 4500}}) {  // (4500: the bf16 head in two chunks)
    SCOPED_TRACE(::testing::Message() << d.T << "x" << d.in << "x" << d.out);
    const VecF w = randn(d.out * d.in, rng, 0.02f), dY = randn(d.T * d.out, rng), dx0 = randn(d.T * d.in, rng);
    QuantOptions q;
    q.double_quant = true;
    const QuantLinear W(w.data(), d.out, d.in, q, ComputeDType::F32);
    VecF wq(d.out * d.in), tile(linear_backward_tile_floats(d.in, d.out));
    W.dequantize_rows(0, d.out, wq.data());
    VecF dx = dx0, dx_ref = dx0;
    cpu_backend().linear_backward(dx.data(), dY.data(), nullptr, d.T, W, nullptr, nullptr, tile.data(), LoraScratch{});
    matmul_backward_input_ref(dx_ref.data(), dY.data(), wq.data(), d.T, d.in, d.out);
    const float tol = 1e-5f * std::sqrt(static_cast<float>(d.out));
    for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx[i], dx_ref[i], tol * (1 + std::fabs(dx_ref[i]))) << i;

    // The head's backward (dense_backward) with the weight (vocab, hidden) = (out, in) in bf16.
    const DenseWeight H(w.data(), d.out, d.in, ComputeDType::BF16);
    VecF hq(d.out * d.in), htile(dense_backward_tile_floats(H));
    H.rows_to_f32(0, d.out, hq.data());
    VecF hx = dx0, hx_ref = dx0;
    cpu_backend().dense_backward(hx.data(), dY.data(), d.T, H, htile.data());
    // On AVX-512 BF16 dot products the bf16 weight's input gradient takes the gradient rounded
    // to bf16 (model/cpu_backend.cpp backward_through_tile, as bitsandbytes does): so does the
    // reference there.
    VecF dYh = dY;
    if (gemm_bf16_fast() && !gemm_bf16_split_x_fast())
      for (float& v : dYh) v = bf16_to_f32(f32_to_bf16(v));
    matmul_backward_input_ref(hx_ref.data(), dYh.data(), hq.data(), d.T, d.in, d.out);
    for (size_t i = 0; i < hx.size(); ++i) ASSERT_NEAR(hx[i], hx_ref[i], tol * (1 + std::fabs(hx_ref[i]))) << i;

    // The 4-bit weight in bf16 compute (on a bf16 unit: one product, its panels packed from
    // the codes) against the same reference on its bf16 dequantized rows.
    const QuantLinear W16(w.data(), d.out, d.in, q, ComputeDType::BF16);
    VecF wq16(d.out * d.in);
    W16.dequantize_rows(0, d.out, wq16.data());
    VecF bx = dx0, bx_ref = dx0;
    cpu_backend().linear_backward(bx.data(), dY.data(), nullptr, d.T, W16, nullptr, nullptr, tile.data(),
                                  LoraScratch{});
    matmul_backward_input_ref(bx_ref.data(), dYh.data(), wq16.data(), d.T, d.in, d.out);
    for (size_t i = 0; i < bx.size(); ++i) ASSERT_NEAR(bx[i], bx_ref[i], tol * (1 + std::fabs(bx_ref[i]))) << i;
  }
}

TEST(OpsBackward, CrossEntropyWithIgnoredPositions) {
  std::mt19937 rng(12);
  const int64_t T = 5, V = 11;
  const VecF logits = randn(T * V, rng, 2.0f);
  const std::vector<int> targets = {3, -100, 0, -100, 10};
  VecF dl(T * V, 123.0f), losses(T, -1.0f);
  const float loss = cross_entropy_forward_backward(losses.data(), dl.data(), logits.data(), targets.data(), T, V);
  VecD losses_d;
  const VecD ld = to_d(logits);
  const double loss_d = cross_entropy_d(ld, targets, T, V, &losses_d);
  EXPECT_NEAR(loss, loss_d, 1e-6 * loss_d);
  for (int64_t t = 0; t < T; ++t) EXPECT_NEAR(losses[t], losses_d[t], 1e-6 * (1 + losses_d[t]));
  EXPECT_EQ(losses[1], 0.0f);
  expect_grad(dl, finite_diff([&](const VecD& x) { return cross_entropy_d(x, targets, T, V); }, ld), "ce dlogits");
  for (int64_t j = 0; j < V; ++j) {
    EXPECT_EQ(dl[1 * V + j], 0.0f);
    EXPECT_EQ(dl[3 * V + j], 0.0f);
  }
  // In place (dlogits == logits) gives the same; no losses array is fine.
  VecF inplace = logits;
  const float loss2 = cross_entropy_forward_backward(nullptr, inplace.data(), inplace.data(), targets.data(), T, V);
  EXPECT_EQ(loss2, loss);
  EXPECT_EQ(inplace, dl);
}

TEST(OpsBackward, CrossEntropyEdgeCases) {
  const int64_t T = 2, V = 4;
  const VecF logits = {1, 2, 3, 4, 0, 0, 0, 0};
  VecF dl(T * V, 5.0f);
  const std::vector<int> none = {-100, -100};
  EXPECT_EQ(cross_entropy_forward_backward(nullptr, dl.data(), logits.data(), none.data(), T, V), 0.0f);
  for (float g : dl) EXPECT_EQ(g, 0.0f);
  const std::vector<int> custom = {7, 1};  // a different ignore_index
  EXPECT_NEAR(cross_entropy_forward_backward(nullptr, dl.data(), logits.data(), custom.data(), T, V, 7),
              std::log(4.0), 1e-6);
  const std::vector<int> bad = {4, 0};
  EXPECT_THROW(cross_entropy_forward_backward(nullptr, dl.data(), logits.data(), bad.data(), T, V), Error);
  const std::vector<int> neg = {-1, 0};
  EXPECT_THROW(cross_entropy_forward_backward(nullptr, dl.data(), logits.data(), neg.data(), T, V), Error);
}

// --- one whole llama block --------------------------------------------------------

namespace {

struct BlockDims {
  int64_t T = 9, C = 20, NH = 4, NKV = 2, HS = 6, F = 37;  // T >= 8: the GEMM paths
  float eps = 1e-5f;
};

struct BlockWeights {
  VecF ln1, ln2, Wq, Wk, Wv, Wo, Wg, Wu, Wd;  // Wx (out, in)
  VecF cos, sin;                              // (T, HS/2), positions 0..T-1
};

BlockWeights make_block(const BlockDims& d, std::mt19937& rng) {
  BlockWeights w;
  auto norm_w = [&](int64_t n) {
    VecF v = randn(n, rng, 0.2f);
    for (auto& e : v) e += 1.0f;
    return v;
  };
  auto lin = [&](int64_t out, int64_t in) { return randn(out * in, rng, 1.0f / std::sqrt(static_cast<float>(in))); };
  w.ln1 = norm_w(d.C);
  w.ln2 = norm_w(d.C);
  w.Wq = lin(d.NH * d.HS, d.C);
  w.Wk = lin(d.NKV * d.HS, d.C);
  w.Wv = lin(d.NKV * d.HS, d.C);
  w.Wo = lin(d.C, d.NH * d.HS);
  w.Wg = lin(d.F, d.C);
  w.Wu = lin(d.F, d.C);
  w.Wd = lin(d.C, d.F);
  std::vector<int32_t> pos(d.T);
  for (int64_t t = 0; t < d.T; ++t) pos[t] = static_cast<int32_t>(t);
  w.cos.resize(d.T * d.HS / 2);
  w.sin.resize(d.T * d.HS / 2);
  rope_tables(w.cos.data(), w.sin.data(), pos.data(), d.T, d.HS, 10000.0f);
  return w;
}

// The block in double; Wq_override / Wo_override replace those weights (for dW checks).
VecD block_d(const BlockDims& d, const BlockWeights& w, const VecD& x, const VecD* Wq_override = nullptr,
             const VecD* Wo_override = nullptr) {
  const int64_t T = d.T, C = d.C, QD = d.NH * d.HS, KD = d.NKV * d.HS;
  const VecD h1 = rmsnorm_d(x, to_d(w.ln1), T, C, d.eps);
  VecD q = linear_d(h1, Wq_override ? *Wq_override : to_d(w.Wq), T, C, QD);
  VecD k = linear_d(h1, to_d(w.Wk), T, C, KD);
  const VecD v = linear_d(h1, to_d(w.Wv), T, C, KD);
  q = rope_d(q, w.cos, w.sin, T, d.NH, d.HS);
  k = rope_d(k, w.cos, w.sin, T, d.NKV, d.HS);
  const VecD a = attention_d(q, k, v, T, T, 0, d.NH, d.NKV, d.HS);
  const VecD o = linear_d(a, Wo_override ? *Wo_override : to_d(w.Wo), T, QD, C);
  VecD x2(x.size());
  for (size_t i = 0; i < x.size(); ++i) x2[i] = x[i] + o[i];
  const VecD h2 = rmsnorm_d(x2, to_d(w.ln2), T, C, d.eps);
  const VecD s = swiglu_d(linear_d(h2, to_d(w.Wg), T, C, d.F), linear_d(h2, to_d(w.Wu), T, C, d.F));
  const VecD dn = linear_d(s, to_d(w.Wd), T, d.F, C);
  VecD y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x2[i] + dn[i];
  return y;
}

}  // namespace

TEST(OpsBackward, WholeLlamaBlock) {
  std::mt19937 rng(13);
  const BlockDims d;
  const int64_t T = d.T, C = d.C, QD = d.NH * d.HS, KD = d.NKV * d.HS, F = d.F;
  const BlockWeights w = make_block(d, rng);
  const VecF x = randn(T * C, rng), R = randn(T * C, rng);

  // Forward in float with the library's ops, keeping what backward needs.
  VecF h1(T * C), rstd1(T), h2(T * C), rstd2(T), x2(T * C), y(T * C), s(T * F);
  VecF att(d.NH * T * T), a(T * QD);
  rmsnorm_forward(h1.data(), rstd1.data(), x.data(), w.ln1.data(), T, C, d.eps);
  VecF q = linear_f(h1, w.Wq, T, C, QD), k = linear_f(h1, w.Wk, T, C, KD);
  const VecF v = linear_f(h1, w.Wv, T, C, KD);
  rope_forward(q.data(), w.cos.data(), w.sin.data(), T, d.NH, d.HS);
  rope_forward(k.data(), w.cos.data(), w.sin.data(), T, d.NKV, d.HS);
  attention_forward(a.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, T, 0, d.NH, d.NKV, d.HS);
  const VecF o = linear_f(a, w.Wo, T, QD, C);
  residual_forward(x2.data(), x.data(), o.data(), T * C);
  rmsnorm_forward(h2.data(), rstd2.data(), x2.data(), w.ln2.data(), T, C, d.eps);
  const VecF g = linear_f(h2, w.Wg, T, C, F), u = linear_f(h2, w.Wu, T, C, F);
  swiglu_forward(s.data(), g.data(), u.data(), T * F);
  const VecF dn = linear_f(s, w.Wd, T, F, C);
  residual_forward(y.data(), x2.data(), dn.data(), T * C);
  {
    const VecD yd = block_d(d, w, to_d(x));
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], yd[i], 1e-4 * (1 + std::fabs(yd[i])));
  }

  // Backward, op by op, in reverse. dy = R.
  VecF dx(T * C, 0.0f), dx2(T * C, 0.0f), ddn(T * C, 0.0f), ds(T * F, 0.0f), dg(T * F, 0.0f), du(T * F, 0.0f);
  VecF dh2(T * C, 0.0f), da(T * QD, 0.0f), dq(T * QD, 0.0f), dk(T * KD, 0.0f), dv(T * KD, 0.0f), dh1(T * C, 0.0f);
  VecF datt(d.NH * T * T), dWq(QD * C, 0.0f), dWo(C * QD, 0.0f);
  residual_backward(dx2.data(), ddn.data(), R.data(), T * C);               // y = x2 + dn
  matmul_backward_input(ds.data(), ddn.data(), w.Wd.data(), T, F, C);       // dn = s Wdᵀ
  swiglu_backward(dg.data(), du.data(), ds.data(), g.data(), u.data(), T * F);
  matmul_backward_input(dh2.data(), dg.data(), w.Wg.data(), T, C, F);       // g = h2 Wgᵀ
  matmul_backward_input(dh2.data(), du.data(), w.Wu.data(), T, C, F);       // u = h2 Wuᵀ
  rmsnorm_backward(dx2.data(), nullptr, dh2.data(), x2.data(), w.ln2.data(), rstd2.data(), T, C);
  residual_backward(dx.data(), nullptr, dx2.data(), T * C);                 // x2 = x + o, do = dx2
  const VecF& dout_o = dx2;
  matmul_backward_input(da.data(), dout_o.data(), w.Wo.data(), T, QD, C);   // o = a Woᵀ
  matmul_backward_weight(dWo.data(), dout_o.data(), a.data(), T, QD, C);
  attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), nullptr, da.data(), q.data(), k.data(), v.data(),
                     att.data(), T, T, 0, d.NH, d.NKV, d.HS);
  rope_backward(dq.data(), w.cos.data(), w.sin.data(), T, d.NH, d.HS);
  rope_backward(dk.data(), w.cos.data(), w.sin.data(), T, d.NKV, d.HS);
  matmul_backward_input(dh1.data(), dq.data(), w.Wq.data(), T, C, QD);
  matmul_backward_input(dh1.data(), dk.data(), w.Wk.data(), T, C, KD);
  matmul_backward_input(dh1.data(), dv.data(), w.Wv.data(), T, C, KD);
  matmul_backward_weight(dWq.data(), dq.data(), h1.data(), T, C, QD);
  rmsnorm_backward(dx.data(), nullptr, dh1.data(), x.data(), w.ln1.data(), rstd1.data(), T, C);

  expect_grad(dx, finite_diff([&](const VecD& xx) { return dot_d(block_d(d, w, xx), R); }, to_d(x)), "block dx");
  // Weight gradients as a LoRA factor would get them (q and o projections).
  const VecD xd = to_d(x);
  expect_grad(dWq, finite_diff([&](const VecD& W) { return dot_d(block_d(d, w, xd, &W, nullptr), R); }, to_d(w.Wq)),
              "block dWq");
  expect_grad(dWo, finite_diff([&](const VecD& W) { return dot_d(block_d(d, w, xd, nullptr, &W), R); }, to_d(w.Wo)),
              "block dWo");
}
