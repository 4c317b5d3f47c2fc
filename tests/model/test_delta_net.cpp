// The gated DeltaNet ops (model/delta_net.h) against a plain double-precision implementation
// of transformers' recurrence written here, on awkward sizes (3 key heads of 5, 6 value heads
// of 7, 37 tokens: more than two of the backward's 16-token chunks); their backwards against
// central differences of that implementation; prefill in pieces against one pass (the state a
// cache carries); the AVX-512 build of the kernels against the baseline one; and, on the hybrid
// fixtures (qwen3_5_text's DeltaNet, lfm2's and lfm2_moe's short convs), decoding that continues,
// cuts back or copies a cache against running the tokens afresh.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/gguf.h"
#include "export/merge.h"
#include "export/merge_gguf.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "lora/lora_model.h"
#include "train/train_model.h"
#include "model/delta_net.h"
#include "central_difference.h"
#include "model/model.h"
#include "model_test_util.h"

using namespace qlora;
using qlora::testing_util::expect_gradient;
using qlora::testing_util::randn;
using qlora::testing_util::to_d;

namespace {

const DeltaRuleShape kShape = [] {
  DeltaRuleShape s;
  s.Hk = 3;
  s.Hv = 6;
  s.dk = 5;
  s.dv = 7;
  return s;
}();
constexpr int64_t kT = 37;

// transformers' torch_recurrent_gated_delta_rule, in double.
std::vector<double> rule_reference(const DeltaRuleShape& sh, const std::vector<double>& qkv, const std::vector<double>& b,
                                   const std::vector<double>& a, const std::vector<double>& A_log,
                                   const std::vector<double>& dt_bias, int64_t T) {
  const int64_t W = sh.qkv_width(), KD = sh.Hk * sh.dk;
  std::vector<double> out(static_cast<size_t>(T * sh.Hv * sh.dv), 0.0);
  for (int64_t h = 0; h < sh.Hv; ++h) {
    const int64_t kh = h / (sh.Hv / sh.Hk);
    std::vector<double> S(static_cast<size_t>(sh.dk * sh.dv), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> q(sh.dk), k(sh.dk), v(sh.dv);
      double qs = 0, ks = 0;
      for (int64_t i = 0; i < sh.dk; ++i) {
        q[i] = qkv[t * W + kh * sh.dk + i];
        k[i] = qkv[t * W + KD + kh * sh.dk + i];
        qs += q[i] * q[i];
        ks += k[i] * k[i];
      }
      for (int64_t i = 0; i < sh.dk; ++i) {
        q[i] = q[i] / std::sqrt(qs + 1e-6) / std::sqrt(double(sh.dk));
        k[i] = k[i] / std::sqrt(ks + 1e-6);
      }
      for (int64_t j = 0; j < sh.dv; ++j) v[j] = qkv[t * W + 2 * KD + h * sh.dv + j];
      const double beta = 1.0 / (1.0 + std::exp(-b[t * sh.Hv + h]));
      const double x = a[t * sh.Hv + h] + dt_bias[h];
      const double g = -std::exp(A_log[h]) * (x > 20 ? x : std::log1p(std::exp(x)));
      for (double& s : S) s *= std::exp(g);
      for (int64_t j = 0; j < sh.dv; ++j) {
        double mem = 0;
        for (int64_t i = 0; i < sh.dk; ++i) mem += S[i * sh.dv + j] * k[i];
        const double delta = (v[j] - mem) * beta;
        for (int64_t i = 0; i < sh.dk; ++i) S[i * sh.dv + j] += k[i] * delta;
      }
      for (int64_t j = 0; j < sh.dv; ++j) {
        double o = 0;
        for (int64_t i = 0; i < sh.dk; ++i) o += S[i * sh.dv + j] * q[i];
        out[(t * sh.Hv + h) * sh.dv + j] = o;
      }
    }
  }
  return out;
}

struct RuleInputs {
  std::vector<float> qkv = randn(static_cast<size_t>(kT * kShape.qkv_width()), 1);
  std::vector<float> b = randn(static_cast<size_t>(kT * kShape.Hv), 2);
  std::vector<float> a = randn(static_cast<size_t>(kT * kShape.Hv), 3);
  std::vector<float> A_log = {-1.0f, 0.3f, 1.2f, 2.0f, -0.5f, 0.8f};
  std::vector<float> dt_bias = {1.0f, 0.5f, -0.2f, 0.1f, 2.0f, -1.0f};
};

}  // namespace

TEST(DeltaNet, RuleMatchesTheRecurrenceInDouble) {
  const RuleInputs in;
  std::vector<float> out(static_cast<size_t>(kT * kShape.Hv * kShape.dv));
  delta_rule_forward(kShape, out.data(), in.qkv.data(), in.b.data(), in.a.data(), in.A_log.data(), in.dt_bias.data(),
                     kT, nullptr, ComputeDType::F32);
  const auto ref = rule_reference(kShape, to_d(in.qkv), to_d(in.b), to_d(in.a), to_d(in.A_log), to_d(in.dt_bias), kT);
  double worst = 0, peak = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    worst = std::max(worst, std::fabs(out[i] - ref[i]));
    peak = std::max(peak, std::fabs(ref[i]));
  }
  EXPECT_LT(worst, 1e-5 * peak) << "peak " << peak;
}

TEST(DeltaNet, PrefillInPiecesCarriesTheState) {
  const RuleInputs in;
  const int64_t CD = kShape.qkv_width(), VD = kShape.Hv * kShape.dv, H = kShape.Hv, K = 4;
  const std::vector<float> conv_w = randn(static_cast<size_t>(CD * K), 4, 0.5f);
  // Whole: the conv then the rule from zeros.
  std::vector<float> conv(static_cast<size_t>(kT * CD)), whole(static_cast<size_t>(kT * VD));
  causal_conv_forward(conv.data(), in.qkv.data(), kT, CD, conv_w.data(), nullptr, K, nullptr, false, true,
                      ComputeDType::BF16);
  delta_rule_forward(kShape, whole.data(), conv.data(), in.b.data(), in.a.data(), in.A_log.data(), in.dt_bias.data(),
                     kT, nullptr, ComputeDType::BF16);
  // Pieces of 13, 1, 2 and 21 tokens continuing one state (the conv tail, then the rule's).
  std::vector<float> state(static_cast<size_t>((K - 1) * CD + kShape.state_floats()), 0.0f);
  std::vector<float> conv2(conv.size()), pieces(whole.size());
  int64_t t0 = 0;
  for (int64_t n : {13, 1, 2, 21}) {
    causal_conv_forward(conv2.data() + t0 * CD, in.qkv.data() + t0 * CD, n, CD, conv_w.data(), nullptr, K, state.data(), true,
                        true, ComputeDType::BF16);
    delta_rule_forward(kShape, pieces.data() + t0 * VD, conv2.data() + t0 * CD, in.b.data() + t0 * H,
                       in.a.data() + t0 * H, in.A_log.data(), in.dt_bias.data(), n, state.data() + (K - 1) * CD,
                       ComputeDType::BF16);
    t0 += n;
  }
  ASSERT_EQ(t0, kT);
  EXPECT_EQ(conv2, conv);
  EXPECT_EQ(pieces, whole);
}

TEST(DeltaNet, RuleBackwardMatchesCentralDifferences) {
  const RuleInputs in;
  const int64_t VD = kShape.Hv * kShape.dv;
  const std::vector<float> dout = randn(static_cast<size_t>(kT * VD), 5);
  std::vector<float> dqkv(in.qkv.size(), 0.0f), db(in.b.size(), 0.0f), da(in.a.size(), 0.0f);
  delta_rule_backward(kShape, dqkv.data(), db.data(), da.data(), dout.data(), in.qkv.data(), in.b.data(), in.a.data(),
                      in.A_log.data(), in.dt_bias.data(), kT, ComputeDType::F32);
  const auto qkv = to_d(in.qkv), b = to_d(in.b), a = to_d(in.a), A = to_d(in.A_log), dt = to_d(in.dt_bias);
  const auto w = to_d(dout);
  expect_gradient([&](const std::vector<double>& x) { return rule_reference(kShape, x, b, a, A, dt, kT); }, qkv, w, dqkv,
                  "d qkv");
  expect_gradient([&](const std::vector<double>& x) { return rule_reference(kShape, qkv, x, a, A, dt, kT); }, b, w, db,
                  "d b");
  expect_gradient([&](const std::vector<double>& x) { return rule_reference(kShape, qkv, b, x, A, dt, kT); }, a, w, da,
                  "d a");
}

TEST(DeltaNet, ConvNormAndGateBackwardsMatchCentralDifferences) {
  const int64_t T = 11, C = 9, K = 4, D = 7, R = 6;
  // conv: y = silu(conv(x)) (double reference), taps 0..K-1 reading x[t + j - (K - 1)].
  const std::vector<float> x = randn(static_cast<size_t>(T * C), 6), w = randn(static_cast<size_t>(C * K), 7, 0.5f),
                           cb = randn(static_cast<size_t>(C), 13, 0.5f);
  // (the DeltaNet's conv + SiLU; LFM2's short conv without; Mamba2's with a bias and SiLU)
  for (auto [silu, bias] : {std::pair{true, false}, std::pair{false, false}, std::pair{true, true}}) {
    const float* b = bias ? cb.data() : nullptr;
    auto conv_ref = [&](const std::vector<double>& xs) {
      std::vector<double> y(static_cast<size_t>(T * C));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
          double acc = b ? b[c] : 0.0;
          for (int64_t j = 0; j < K; ++j)
            if (t + j - (K - 1) >= 0) acc += w[c * K + j] * xs[(t + j - (K - 1)) * C + c];
          y[t * C + c] = silu ? acc / (1 + std::exp(-acc)) : acc;
        }
      return y;
    };
    std::vector<float> y(static_cast<size_t>(T * C));
    causal_conv_forward(y.data(), x.data(), T, C, w.data(), b, K, nullptr, false, silu, ComputeDType::F32);
    const auto yr = conv_ref(to_d(x));
    for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], yr[i], 1e-5);
    const std::vector<float> dy = randn(y.size(), 8);
    std::vector<float> dx(x.size(), 0.0f);
    causal_conv_backward(dx.data(), dy.data(), x.data(), T, C, w.data(), b, K, silu, ComputeDType::F32);
    expect_gradient(conv_ref, to_d(x), to_d(dy), dx, bias ? "biased conv d x" : silu ? "conv d x" : "short conv d x");
  }

  // gated norm: rmsnorm(x) * w * silu(z) per row of D.
  const std::vector<float> nx = randn(static_cast<size_t>(R * D), 9), nz = randn(static_cast<size_t>(R * D), 10),
                           nw = randn(static_cast<size_t>(D), 11);
  auto norm_ref = [&](const std::vector<double>& xs, const std::vector<double>& zs) {
    std::vector<double> o(xs.size());
    for (int64_t r = 0; r < R; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += xs[r * D + i] * xs[r * D + i];
      const double rs = 1 / std::sqrt(ss / D + 1e-6);
      for (int64_t i = 0; i < D; ++i) {
        const double z = zs[r * D + i];
        o[r * D + i] = xs[r * D + i] * rs * nw[i] * z / (1 + std::exp(-z));
      }
    }
    return o;
  };
  std::vector<float> no(nx.size()), rstd(static_cast<size_t>(R));
  gated_norm_forward(no.data(), rstd.data(), nx.data(), nz.data(), nw.data(), R, D, 1e-6f, ComputeDType::F32);
  const auto nor = norm_ref(to_d(nx), to_d(nz));
  for (size_t i = 0; i < no.size(); ++i) EXPECT_NEAR(no[i], nor[i], 1e-5);
  const std::vector<float> dno = randn(no.size(), 12);
  std::vector<float> dnx(nx.size(), 0.0f), dnz(nz.size(), 0.0f);
  gated_norm_backward(dnx.data(), dnz.data(), dno.data(), nx.data(), nz.data(), nw.data(), rstd.data(), R, D,
                      ComputeDType::F32);
  expect_gradient([&](const std::vector<double>& v) { return norm_ref(v, to_d(nz)); }, to_d(nx), to_d(dno), dnx,
                  "gated norm d x");
  expect_gradient([&](const std::vector<double>& v) { return norm_ref(to_d(nx), v); }, to_d(nz), to_d(dno), dnz,
                  "gated norm d z");

  // output gate: x * sigmoid(g).
  auto gate_ref = [&](const std::vector<double>& xs, const std::vector<double>& gs) {
    std::vector<double> o(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) o[i] = xs[i] / (1 + std::exp(-gs[i]));
    return o;
  };
  std::vector<float> go(nx.size()), dgx(nx.size(), 0.0f), dgg(nx.size(), 0.0f);
  output_gate_forward(go.data(), nx.data(), nz.data(), static_cast<int64_t>(nx.size()), ComputeDType::F32);
  output_gate_backward(dgx.data(), dgg.data(), dno.data(), nx.data(), nz.data(), static_cast<int64_t>(nx.size()),
                       ComputeDType::F32);
  expect_gradient([&](const std::vector<double>& v) { return gate_ref(v, to_d(nz)); }, to_d(nx), to_d(dno), dgx,
                  "gate d x");
  expect_gradient([&](const std::vector<double>& v) { return gate_ref(to_d(nx), v); }, to_d(nz), to_d(dno), dgg,
                  "gate d g");
}

TEST(DeltaNet, LlamaCppTilesValueHeadsOverKeyHeads) {
  // 2 key heads, 4 value heads of 3 values: grouped k0r0 k0r1 k1r0 k1r1 -> tiled k0r0 k1r0 k0r1 k1r1.
  std::vector<float> grouped(12), tiled(12), back(12);
  for (int i = 0; i < 12; ++i) grouped[static_cast<size_t>(i)] = static_cast<float>(i);
  delta_net_heads_to_tiled(grouped, tiled, 2, 4, 3);
  EXPECT_EQ(tiled, (std::vector<float>{0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11}));
  delta_net_heads_to_grouped(tiled, back, 2, 4, 3);
  EXPECT_EQ(back, grouped);
  EXPECT_THROW(delta_net_heads_to_tiled(grouped, tiled, 3, 4, 3), Error);
}

TEST(DeltaNet, Avx512KernelsMatchTheBaseline) {
  if (cpu_simd_level() < SimdLevel::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  const DeltaNetKernels& s = scalar_delta_net_kernels();
  const DeltaNetKernels& v = avx512_delta_net_kernels();
  const RuleInputs in;
  const int64_t CD = kShape.qkv_width(), VD = kShape.Hv * kShape.dv, K = 4;
  const std::vector<float> w = randn(static_cast<size_t>(CD * K), 4, 0.5f), dout = randn(static_cast<size_t>(kT * VD), 5),
                           dconv = randn(static_cast<size_t>(kT * CD), 6);
  auto close = [](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    double worst = 0, peak = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, double(std::fabs(a[i] - b[i])));
      peak = std::max(peak, double(std::fabs(a[i])));
    }
    EXPECT_LE(worst, 1e-5 * peak) << what;  // (the compilers contract and order differently)
  };
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16}) {
    const std::vector<float> cb = randn(static_cast<size_t>(CD), 7, 0.5f);
    for (auto [silu, bias] : {std::pair{true, false}, std::pair{false, false}, std::pair{true, true}}) {
      const float* b = bias ? cb.data() : nullptr;
      std::vector<float> c1(static_cast<size_t>(kT * CD)), c2(c1.size()), st1((K - 1) * CD, 0.5f), st2 = st1;
      s.conv_forward(c1.data(), in.qkv.data(), kT, CD, w.data(), b, K, st1.data(), true, silu, dt);
      v.conv_forward(c2.data(), in.qkv.data(), kT, CD, w.data(), b, K, st2.data(), true, silu, dt);
      close(c1, c2, silu ? "conv forward" : "short conv forward");
      EXPECT_EQ(st1, st2);
      std::vector<float> dx1(c1.size(), 0.0f), dx2(c1.size(), 0.0f);
      s.conv_backward(dx1.data(), dconv.data(), in.qkv.data(), kT, CD, w.data(), b, K, silu, dt);
      v.conv_backward(dx2.data(), dconv.data(), in.qkv.data(), kT, CD, w.data(), b, K, silu, dt);
      close(dx1, dx2, silu ? "conv backward" : "short conv backward");
    }
    std::vector<float> o1(static_cast<size_t>(kT * VD)), o2(o1.size());
    s.rule_forward(kShape, o1.data(), in.qkv.data(), in.b.data(), in.a.data(), in.A_log.data(), in.dt_bias.data(), kT,
                   nullptr, dt);
    v.rule_forward(kShape, o2.data(), in.qkv.data(), in.b.data(), in.a.data(), in.A_log.data(), in.dt_bias.data(), kT,
                   nullptr, dt);
    if (dt == ComputeDType::F32) close(o1, o2, "rule forward");  // (bf16: an ulp of a rounded output may flip)
    std::vector<float> q1(in.qkv.size(), 0.0f), q2 = q1, b1(in.b.size(), 0.0f), b2 = b1, a1 = b1, a2 = b1;
    s.rule_backward(kShape, q1.data(), b1.data(), a1.data(), dout.data(), in.qkv.data(), in.b.data(), in.a.data(),
                    in.A_log.data(), in.dt_bias.data(), kT, dt);
    v.rule_backward(kShape, q2.data(), b2.data(), a2.data(), dout.data(), in.qkv.data(), in.b.data(), in.a.data(),
                    in.A_log.data(), in.dt_bias.data(), kT, dt);
    close(q1, q2, "rule backward d qkv");
    close(b1, b2, "rule backward d b");
    close(a1, a2, "rule backward d a");
  }
}

// ---- the states of a hybrid model's sequences ----------------------------------------

namespace {

std::string fixture_dir(const std::string& name) { return std::string(QLORA_FIXTURE_DIR) + "/families/" + name; }

// The model at `path` in float32 (no quantization).
Model load_f32(const std::string& path) {
  ModelFiles f = open_model_files(path);
  ModelLoadOptions o;
  o.quant.quantize = false;
  return Model::load(f.spec, *f.tensors, o);
}


// Every position's logits of `prompt`, from a fresh state.
std::vector<float> all_logits(const Model& m, const std::vector<int>& prompt) {
  InferenceState st(m, 16);
  std::vector<float> out(prompt.size() * static_cast<size_t>(m.spec().vocab));
  forward(m, st, prompt, out.data(), true);
  return out;
}

std::vector<float> last_logits(const Model& m, InferenceState& st, const std::vector<int>& toks) {
  std::vector<float> l(static_cast<size_t>(m.spec().vocab));
  forward(m, st, toks, l.data());
  return l;
}

}  // namespace

// The hybrid fixtures: conv / recurrent layers around one attention layer of three.
class HybridModel : public ::testing::TestWithParam<std::string> {};

TEST_P(HybridModel, DecodingCutBackAndCopiedCachesGiveFreshLogits) {
  const Model m = load_f32(fixture_dir(GetParam()));
  ASSERT_TRUE(m.spec().hybrid());
  // A replay of the same rows, to float32 rounding: a row's products can come out of the GEMM
  // library differently when it arrives among another number of rows (an MoE model's expert
  // products run over other row counts; oneDNN 2.6's AVX2 sgemm blocks rows by their count,
  // 1e-6 apart, where its AVX-512 one and our gemm_rows were bit for bit). A wrong state or
  // a token run twice moves logits by far more.
  // (The tolerance scales with the largest logit: float32 rounding of a sum follows the size of
  // its terms, not of the result.)
  float scale = 0.0f;
  auto same = [&](const std::vector<float>& got, const std::vector<float>& want) {
    for (size_t i = 0; i < want.size(); ++i)
      if (std::fabs(got[i] - want[i]) > 1e-5f * (1.0f + scale)) return false;
    return true;
  };
  const std::vector<int> a = {5, 17, 42, 99, 3, 77, 18, 150, 64, 12}, b = {33, 81, 7};
  std::vector<int> ab = a;
  ab.insert(ab.end(), b.begin(), b.end());
  InferenceState fresh(m, 4);
  const std::vector<float> want = last_logits(m, fresh, ab);
  for (float v : want) scale = std::max(scale, std::fabs(v));

  // Token by token: each step continues the states.
  InferenceState steps(m, 4);
  std::vector<float> got;
  for (int t : ab) got = last_logits(m, steps, {t});
  EXPECT_TRUE(same(got, want));

  // A longer sequence cut back to a's prefix (a prompt cache reusing it), then continued.
  InferenceState cut(m, 4);
  std::vector<int> other = a;
  other.insert(other.end(), {120, 121, 122, 123});
  last_logits(m, cut, other);
  cut.cache().set_length(static_cast<int64_t>(a.size()));
  EXPECT_EQ(cut.cache().state_position(), -1) << "a state cannot be rewound";
  EXPECT_TRUE(same(last_logits(m, cut, b), want));
  EXPECT_EQ(cut.cache().replayed_tokens(), static_cast<int64_t>(a.size())) << "no snapshot within the prefix";
  EXPECT_EQ(cut.cache().state_position(), static_cast<int64_t>(ab.size()));

  // A chat's next turn: the prompt (a snapshot of the states after it), an answer decoded token
  // by token, then the cache cut back to the prompt (the template re-renders the answer): the
  // states come from the snapshot, no token runs again.
  InferenceState chat(m, 4);
  last_logits(m, chat, a);
  EXPECT_EQ(chat.cache().snapshot_positions(), (std::vector<int64_t>{static_cast<int64_t>(a.size())}));
  for (int t : {120, 121, 122}) last_logits(m, chat, {t});
  chat.cache().set_length(static_cast<int64_t>(a.size()));
  EXPECT_TRUE(same(last_logits(m, chat, b), want));
  EXPECT_EQ(chat.cache().replayed_tokens(), 0);
  // Cut inside a prompt: from the latest snapshot before the cut, the tokens after it again.
  InferenceState parts(m, 4);
  last_logits(m, parts, std::vector<int>(a.begin(), a.begin() + 4));
  last_logits(m, parts, std::vector<int>(a.begin() + 4, a.end()));
  EXPECT_EQ(parts.cache().snapshot_positions(), (std::vector<int64_t>{4, static_cast<int64_t>(a.size())}));
  parts.cache().set_length(7);
  EXPECT_EQ(parts.cache().snapshot_positions(), (std::vector<int64_t>{4}));
  std::vector<int> tail(a.begin() + 7, a.end());
  tail.insert(tail.end(), b.begin(), b.end());
  EXPECT_TRUE(same(last_logits(m, parts, tail), want));
  EXPECT_EQ(parts.cache().replayed_tokens(), 3);

  // A copy of all of a cache carries its states; a copy of part of it runs them again.
  InferenceState src(m, 4), whole(m, 4), part(m, 4);
  last_logits(m, src, a);
  whole.cache().copy_from(src.cache(), static_cast<int64_t>(a.size()));
  EXPECT_EQ(whole.cache().state_position(), static_cast<int64_t>(a.size()));
  EXPECT_TRUE(same(last_logits(m, whole, b), want));
  part.cache().copy_from(src.cache(), 6);
  std::vector<int> rest(a.begin() + 6, a.end());
  rest.insert(rest.end(), b.begin(), b.end());
  EXPECT_TRUE(same(last_logits(m, part, rest), want));
}

TEST_P(HybridModel, KvCacheHoldsTheAttentionLayersOnly) {
  const Model m = load_f32(fixture_dir(GetParam()));
  InferenceState st(m, 8);
  last_logits(m, st, {1, 2, 3});
  int64_t attention = 0;
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    attention += m.spec().layer_is_linear_attn(l) || !m.spec().layer_has_mixer(l) ? 0 : 1;
  // (one full-attention layer in the hybrid fixtures -- nemotron_h's beside two MLP layers; none in mamba2's)
  EXPECT_EQ(attention, m.spec().family == "mamba2" ? 0 : 1);
  EXPECT_EQ(st.cache().n_layers(), attention);
  EXPECT_TRUE(st.cache().has_state());
}

// Qwen3.5-MoE's own files keep each layer's experts fused (mlp.experts.gate_up_proj (E, 2F, C),
// down_proj (E, C, F)), where transformers' save_pretrained splits them per expert: the
// fixture's fused/ copy loads to the same model, and a merge writes the fused form back.
TEST(DeltaNetModel, FusedExpertFilesLoadAndMergeAsStored) {
  const std::string dir = std::string(QLORA_FIXTURE_DIR) + "/families/qwen3_5_moe";
  const Model split = load_f32(dir), fused = load_f32(dir + "/fused");
  EXPECT_FALSE(split.spec().moe_fused_experts);
  ASSERT_TRUE(fused.spec().moe_fused_experts);
  ASSERT_EQ(fused.spec().hf_wrapper, "qwen3_5_moe");
  const std::vector<int> prompt = {5, 17, 42, 99, 3, 77, 18, 150};
  auto logits = [&](const Model& m) { return all_logits(m, prompt); };
  const std::vector<float> want = logits(split);
  EXPECT_EQ(logits(fused), want);
  qlora::test::TempDir tmp("fused_moe_merge");
  HfExportOptions eo;
  eo.dtype = DType::F32;
  eo.log = false;
  write_merged_hf_dir(fused, open_model_files(dir + "/fused"), {}, tmp.path("hf"), eo, false);
  const SafeTensorsFile out(tmp.path("hf") + "/model.safetensors");
  EXPECT_NE(out.find("model.language_model.layers.0.mlp.experts.gate_up_proj"), nullptr);
  EXPECT_EQ(out.find("model.language_model.layers.0.mlp.experts.0.gate_proj.weight"), nullptr);
  EXPECT_EQ(logits(load_f32(tmp.path("hf"))), want);
}

// The same fused experts go to llama.cpp's qwen35moe as its gate / up / down exps.
TEST(DeltaNetModel, FusedExpertFilesMergeToGguf) {
  const std::string dir = std::string(QLORA_FIXTURE_DIR) + "/families/qwen3_5_moe_gguf";
  const Model fused = load_f32(dir + "/fused");
  ASSERT_TRUE(fused.spec().moe_fused_experts);
  qlora::test::TempDir tmp("fused_moe_gguf");
  GgufExportOptions eo;
  eo.type = GgmlType::F32;
  eo.log = false;
  ModelFiles source = open_model_files(dir + "/fused");
  source.tokenizer = std::move(open_model_files(dir + "/model.gguf").tokenizer);  // (the fixture's stand-in vocabulary)
  write_merged_gguf(fused, source, {}, tmp.path("m.gguf"), eo, false);
  const Model back = load_f32(tmp.path("m.gguf")), direct = load_f32(dir + "/model.gguf");
  const std::vector<int> prompt = {5, 17, 42, 99, 3, 77, 18, 150};
  auto logits = [&](const Model& m) { return all_logits(m, prompt); };
  // (the same weights but for -exp(A_log)'s rounding: numpy's expf here, the C library's there)
  const std::vector<float> a = logits(back), b = logits(direct);
  double worst = 0, peak = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    peak = std::max(peak, double(std::fabs(b[i])));
  }
  EXPECT_LT(worst, 1e-5 * peak);
}

// Packed examples (positions restarting at 0) are computed as they would be alone: attention
// starts each example's keys afresh, and so must the DeltaNet's state and the convs' tails.
TEST_P(HybridModel, PackedExamplesTrainAsAlone) {
  const Model m = load_f32(fixture_dir(GetParam()));
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  cfg.dropout = 0;
  cfg.all_linear = true;
  LoraModel lm(m, cfg);
  for (LoraLayer& l : lm.layers())
    for (size_t i = 0; i < l.B.size(); ++i) l.B[i] = 0.01f * static_cast<float>((i * 7 + 3) % 11) - 0.05f;
  const std::vector<int> a = {5, 17, 42, 99, 3, 77, 18, 150, 64}, b = {12, 33, 81, 7, 120, 9};
  auto targets = [](const std::vector<int>& x) { return std::vector<int>(x.begin() + 1, x.end()); };
  const std::vector<int> ai(a.begin(), a.end() - 1), bi(b.begin(), b.end() - 1), at = targets(a), bt = targets(b);
  std::vector<int> pi = ai, pt = at;
  pi.insert(pi.end(), bi.begin(), bi.end());
  pt.insert(pt.end(), bt.begin(), bt.end());
  std::vector<int32_t> pos;
  for (size_t i = 0; i < ai.size(); ++i) pos.push_back(static_cast<int32_t>(i));
  for (size_t i = 0; i < bi.size(); ++i) pos.push_back(static_cast<int32_t>(i));
  TrainWorkspace ws;
  const double na = static_cast<double>(at.size()), nb = static_cast<double>(bt.size());
  // Losses: the packed mean is the alone ones weighted by their targets.
  const double alone = (na * forward_loss(lm, ws, ai, at) + nb * forward_loss(lm, ws, bi, bt)) / (na + nb);
  EXPECT_NEAR(forward_loss(lm, ws, pi, pt, pos), alone, 1e-6 * std::fabs(alone));
  // Gradients: the same.
  TrainStepOptions o;
  o.training = true;
  lm.zero_grad();
  forward_backward(lm, ws, pi, pt, o, nullptr, pos);
  std::vector<std::vector<float>> packed;
  for (const LoraLayer& l : lm.layers()) packed.push_back(l.dA);
  lm.zero_grad();
  o.grad_scale = static_cast<float>(na / (na + nb));
  forward_backward(lm, ws, ai, at, o, nullptr);
  o.grad_scale = static_cast<float>(nb / (na + nb));
  forward_backward(lm, ws, bi, bt, o, nullptr);
  for (size_t i = 0; i < packed.size(); ++i) {
    const std::vector<float>& want = lm.layers()[i].dA;
    double worst = 0, peak = 0;
    for (size_t j = 0; j < want.size(); ++j) {
      worst = std::max(worst, double(std::fabs(packed[i][j] - want[j])));
      peak = std::max(peak, double(std::fabs(want[j])));
    }
    EXPECT_LE(worst, 1e-5 * peak + 1e-12) << lm.layers()[i].module_path;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HybridModel, ::testing::Values("qwen3_5_text", "lfm2", "lfm2_moe", "granitemoehybrid",
                                                                      "granitemoehybrid_moe", "bamba", "mamba2", "nemotron_h",
                                                                      "nemotron_h_moe"),
                         [](const auto& info) { return std::string(info.param); });
