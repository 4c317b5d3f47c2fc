// Each forward op against a plain scalar reference written here from its definition,
// QuantLinear against dequantize-then-matmul, and the whole forward pass: token-by-token
// decoding with the KV cache must give the logits of processing the sequence at once.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "base/error.h"
#include "base/float_formats.h"
#include "formats/gguf.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/quant_linear.h"
#include "quant/quant_state.h"

using namespace qlora;

namespace {

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, float tol, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], tol * (1.0f + std::fabs(b[i]))) << what << " at " << i;
}

}  // namespace

TEST(Ops, RmsNorm) {
  std::mt19937 rng(1);
  const int64_t T = 3, C = 37;
  auto x = randn(T * C, rng), w = randn(C, rng);
  std::vector<float> out(T * C), rstd(T), ref(T * C);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, C, 1e-5f);
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < C; ++i) ss += double(x[t * C + i]) * x[t * C + i];
    const double r = 1.0 / std::sqrt(ss / C + 1e-5);
    EXPECT_NEAR(rstd[t], r, 1e-5 * r);
    for (int64_t i = 0; i < C; ++i) ref[t * C + i] = static_cast<float>(w[i] * x[t * C + i] * r);
  }
  expect_close(out, ref, 1e-5f, "rmsnorm");
}

TEST(Ops, RmsNormRoundsToComputeDtype) {
  std::mt19937 rng(2);
  const int64_t C = 16;
  auto x = randn(C, rng), w = randn(C, rng);
  std::vector<float> out(C);
  rmsnorm_forward(out.data(), nullptr, x.data(), w.data(), 1, C, 1e-5f, ComputeDType::BF16);
  for (float v : out) EXPECT_EQ(v, kernels::round_to_dtype(v, ComputeDType::BF16));
}

TEST(Ops, RoundActivationsMatchesScalarConversions) {
  std::mt19937 rng(12);
  auto x = randn(1000, rng, 100.0f);
  x.push_back(std::numeric_limits<float>::infinity());
  x.push_back(-std::numeric_limits<float>::infinity());
  x.push_back(3.3895314e38f);  // rounds up to infinity in bf16
  x.push_back(1e-40f);         // subnormal
  x.push_back(-0.0f);
  for (uint32_t bits : {0x7F800001u, 0xFF800003u, 0x7FC00000u, 0x3F808000u, 0x3F818000u}) {
    float v;  // NaNs with payload in the low bits only, quiet NaN, ties to even either way
    std::memcpy(&v, &bits, 4);
    x.push_back(v);
  }
  for (ComputeDType dt : {ComputeDType::BF16, ComputeDType::F16}) {
    std::vector<float> y = x;
    round_activations(y.data(), static_cast<int64_t>(y.size()), dt);
    for (size_t i = 0; i < x.size(); ++i) {
      // The inline bit arithmetic against the out-of-line conversions (base/float_formats.h).
      const float want = dt == ComputeDType::BF16 ? bf16_to_f32(f32_to_bf16(x[i])) : fp16_to_f32(f32_to_fp16(x[i]));
      EXPECT_EQ(std::memcmp(&y[i], &want, 4), 0) << x[i];
      const float single = kernels::round_to_dtype(x[i], dt);
      EXPECT_EQ(std::memcmp(&single, &want, 4), 0) << x[i];
    }
  }
  std::vector<float> nan = {std::numeric_limits<float>::quiet_NaN()};
  round_activations(nan.data(), 1, ComputeDType::BF16);
  EXPECT_TRUE(std::isnan(nan[0]));
}

TEST(Ops, RopeRotatesHalvesAndMatchesLlama2cAfterPermutation) {
  // llama2.c rotates adjacent pairs of q = Wq x. Our engine rotates halves of q' = P(Wq) x,
  // where P is the per-head row permutation applied at load. Rotating must commute with P.
  std::mt19937 rng(3);
  const int64_t NH = 3, HS = 8, C = 5, D = NH * HS;
  auto wq = randn(D * C, rng), x = randn(C, rng);
  std::vector<float> wq_hf(D * C);
  unpermute_rope_rows(wq, wq_hf, D, C, NH);
  auto matvec = [&](const std::vector<float>& w) {
    std::vector<float> y(D, 0.0f);
    for (int64_t r = 0; r < D; ++r)
      for (int64_t c = 0; c < C; ++c) y[r] += w[r * C + c] * x[c];
    return y;
  };
  std::vector<float> q = matvec(wq), q_hf = matvec(wq_hf);
  const int32_t pos = 7;
  // llama2.c's loop (run.c), theta 10000.
  for (int64_t i = 0; i < D; i += 2) {
    const int64_t head_dim = i % HS;
    const float freq = 1.0f / std::pow(10000.0f, head_dim / static_cast<float>(HS));
    const float val = pos * freq, fcr = std::cos(val), fci = std::sin(val);
    const float v0 = q[i], v1 = q[i + 1];
    q[i] = v0 * fcr - v1 * fci;
    q[i + 1] = v0 * fci + v1 * fcr;
  }
  std::vector<float> cos(HS / 2), sin(HS / 2);
  rope_tables(cos.data(), sin.data(), &pos, 1, HS, 10000.0f);
  rope_forward(q_hf.data(), cos.data(), sin.data(), 1, NH, HS);
  std::vector<float> q_perm(D);
  unpermute_rope_rows(q, q_perm, D, 1, NH);
  expect_close(q_hf, q_perm, 1e-6f, "rope");
  // The interleaved form (GPT-J, Cohere) is llama2.c's loop itself, on the unpermuted q.
  std::vector<float> q_il = matvec(wq);
  rope_forward(q_il.data(), cos.data(), sin.data(), 1, NH, HS, 0, /*interleaved=*/true);
  expect_close(q_il, q, 1e-6f, "interleaved rope");
}

TEST(Ops, InterleavedPartialRopeRotatesAdjacentPairsOfTheFirstDims) {
  // GPT-J's rotate_every_two on the first rot dims of each head: pair (2i, 2i + 1) turns by
  // pos * theta^(-2i / rot); the other dims pass through.
  std::mt19937 rng(5);
  const int64_t T = 2, NH = 3, HS = 10, rot = 6;
  const std::vector<int32_t> pos = {4, 11};
  auto x = randn(T * NH * HS, rng);
  std::vector<float> cos(T * rot / 2), sin(T * rot / 2), y = x;
  rope_tables(cos.data(), sin.data(), pos.data(), T, rot, 10000.0f);
  rope_forward(y.data(), cos.data(), sin.data(), T, NH, HS, rot, /*interleaved=*/true);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < NH; ++h) {
      const float* a = x.data() + (t * NH + h) * HS;
      const float* b = y.data() + (t * NH + h) * HS;
      for (int64_t i = 0; i < rot / 2; ++i) {
        const double ang = pos[static_cast<size_t>(t)] * std::pow(10000.0, -2.0 * i / rot);
        EXPECT_NEAR(b[2 * i], a[2 * i] * std::cos(ang) - a[2 * i + 1] * std::sin(ang), 1e-5);
        EXPECT_NEAR(b[2 * i + 1], a[2 * i + 1] * std::cos(ang) + a[2 * i] * std::sin(ang), 1e-5);
      }
      for (int64_t i = rot; i < HS; ++i) EXPECT_EQ(b[i], a[i]);
    }
}

// Inference keeps no probabilities: the scores go in the scratch the op declares
// (attention_scratch_floats), sized exactly, on the per-(token, head) path (few queries)
// and the per-head GEMM path (many), with a KV cache longer than the step and a window.
// The output equals the training path's, which keeps the probabilities.
TEST(Ops, AttentionScratchPathMatchesKeptProbabilities) {
  std::mt19937 rng(41);
  const int64_t NH = 6, NKV = 2, HS = 5;
  for (int64_t T : {1, 3, 15, 16, 37}) {
    for (bool window : {false, true}) {
      const int64_t pos0 = 11, Tk = pos0 + T;
      auto q = randn(T * NH * HS, rng), k = randn(Tk * NKV * HS, rng), v = randn(Tk * NKV * HS, rng);
      std::vector<int32_t> ks(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) ks[static_cast<size_t>(t)] = static_cast<int32_t>(std::max<int64_t>(0, pos0 + t - 7));
      const int32_t* kp = window ? ks.data() : nullptr;
      std::vector<float> want(T * NH * HS), got(T * NH * HS), att(NH * T * Tk);
      attention_forward(want.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, Tk, pos0, NH, NKV, HS, kp);
      std::vector<float> scratch(static_cast<size_t>(attention_scratch_floats(T, Tk, NH)));
      attention_forward(got.data(), nullptr, scratch.data(), q.data(), k.data(), v.data(), T, Tk, pos0, NH, NKV, HS, kp);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "T " << T << " window " << window << " " << i;
    }
  }
  std::vector<float> o(5), q(5), k(5), v(5);
  EXPECT_THROW(attention_forward(o.data(), nullptr, nullptr, q.data(), k.data(), v.data(), 1, 1, 0, 1, 1, 5), Error);
}

TEST(Ops, AttentionMatchesNaiveCausalGqa) {
  std::mt19937 rng(4);
  const int64_t NH = 4, NKV = 2, HS = 6, Tk = 9, T = 3, pos0 = Tk - T;
  auto q = randn(T * NH * HS, rng), k = randn(Tk * NKV * HS, rng), v = randn(Tk * NKV * HS, rng);
  std::vector<float> out(T * NH * HS), att(NH * T * Tk), ref(T * NH * HS, 0.0f);
  attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, Tk, pos0, NH, NKV, HS);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < NH; ++h) {
      const int64_t kh = h / (NH / NKV), n = pos0 + t + 1;
      std::vector<double> s(n);
      double mx = -1e30, sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        double d = 0;
        for (int64_t i = 0; i < HS; ++i) d += double(q[(t * NH + h) * HS + i]) * k[(j * NKV + kh) * HS + i];
        s[j] = d / std::sqrt(double(HS));
        mx = std::max(mx, s[j]);
      }
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t j = 0; j < Tk; ++j) {
        const double p = j < n ? s[j] / sum : 0.0;
        EXPECT_NEAR(att[(h * T + t) * Tk + j], p, 1e-6);
        if (j < n)
          for (int64_t i = 0; i < HS; ++i) ref[(t * NH + h) * HS + i] += static_cast<float>(p * v[(j * NKV + kh) * HS + i]);
      }
    }
  expect_close(out, ref, 1e-5f, "attention");
}

TEST(Ops, SwigluResidualSoftmaxEmbedding) {
  std::mt19937 rng(5);
  auto g = randn(10, rng), u = randn(10, rng);
  std::vector<float> out(10);
  swiglu_forward(out.data(), g.data(), u.data(), 10);
  for (int i = 0; i < 10; ++i) EXPECT_NEAR(out[i], g[i] / (1 + std::exp(-g[i])) * u[i], 1e-6);
  residual_forward(out.data(), g.data(), u.data(), 10);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(out[i], g[i] + u[i]);
  std::vector<float> s = {1, 2, 3, -1000};
  softmax_inplace(s.data(), 4);
  EXPECT_NEAR(s[0] + s[1] + s[2] + s[3], 1.0f, 1e-6);
  EXPECT_NEAR(s[2] / s[1], std::exp(1.0f), 1e-5);
  EXPECT_EQ(s[3], 0.0f);

  auto table = randn(5 * 3, rng);
  DenseWeight wte(table.data(), 5, 3, ComputeDType::F32);
  const int toks[2] = {4, 1};
  std::vector<float> e(6);
  embedding_forward(e.data(), toks, 2, wte);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(e[i], table[12 + i]);
    EXPECT_EQ(e[3 + i], table[3 + i]);
  }
  const int bad[1] = {5};
  EXPECT_THROW(embedding_forward(e.data(), bad, 1, wte), Error);
}

TEST(QuantLinear, ForwardEqualsDequantizeThenMatmul) {
  std::mt19937 rng(6);
  for (bool quantize : {true, false})
    for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16})
      for (int64_t T : {1, 2, 7, 40})
        for (auto [out, in] : {std::pair<int64_t, int64_t>{70, 96}, {33, 45}, {5, 64}}) {
          auto w = randn(out * in, rng, 0.1f), x = randn(T * in, rng);
          QuantOptions q;
          q.quantize = quantize;
          q.double_quant = (T % 2) == 0;
          QuantLinear lin(w.data(), out, in, q, dt);
          lin.set_bias(randn(out, rng));
          std::vector<float> wd(out * in), y(T * out), ref(T * out);
          lin.dequantize_rows(0, out, wd.data());
          lin.forward(y.data(), x.data(), T);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t o = 0; o < out; ++o) {
              double acc = lin.bias()[o];
              for (int64_t i = 0; i < in; ++i) acc += double(wd[o * in + i]) * x[t * in + i];
              ref[t * out + o] = kernels::round_to_dtype(static_cast<float>(acc), dt);
            }
          const float tol = dt == ComputeDType::F32 ? 1e-4f : 1e-2f;
          expect_close(y, ref, tol, "QuantLinear");
        }
}

TEST(QuantLinear, SameInputGroupEqualsSeparateForwards) {
  // forward_same_input (q/k/v or gate/up in one parallel region for one token) gives every
  // linear exactly its own forward(): with biases, in each compute dtype, with 1 and 2
  // threads (the rows split across the group's boundaries), and through the fallback for
  // several tokens or a dense member.
  std::mt19937 rng(61);
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2})
    for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16})
      for (int64_t T : {1, 3})
        for (bool dense_member : {false, true}) {
          omp_set_num_threads(threads);
          const int64_t in = 96;
          const int64_t outs[3] = {300, 131, 300};  // 2 threads split inside the second
          std::vector<QuantLinear> lins;
          for (int i = 0; i < 3; ++i) {
            auto w = randn(outs[i] * in, rng, 0.1f);
            QuantOptions q;
            q.quantize = !(dense_member && i == 1);
            q.double_quant = i == 0;
            lins.emplace_back(w.data(), outs[i], in, q, dt);
            if (i != 2) lins.back().set_bias(randn(outs[i], rng));
          }
          const auto x = randn(T * in, rng);
          std::vector<std::vector<float>> ys(3), refs(3);
          std::vector<float*> yp;
          std::vector<const QuantLinear*> wp;
          for (int i = 0; i < 3; ++i) {
            ys[i].assign(T * outs[i], -7.0f);
            refs[i].assign(T * outs[i], 0.0f);
            lins[i].forward(refs[i].data(), x.data(), T);
            yp.push_back(ys[i].data());
            wp.push_back(&lins[i]);
          }
          forward_same_input(wp, yp, x.data(), T);
          for (int i = 0; i < 3; ++i)
            EXPECT_EQ(ys[i], refs[i]) << "linear " << i << " threads " << threads << " T " << T << " dense member "
                                      << dense_member;
        }
  omp_set_num_threads(saved);
}

TEST(QuantLinear, PackedBytesAreBitsandbytesQuantization) {
  std::mt19937 rng(7);
  auto w = randn(48 * 80, rng);
  QuantOptions q;
  q.type = QuantType::FP4;
  q.blocksize = 128;
  q.double_quant = true;
  QuantLinear lin(w.data(), 48, 80, q, ComputeDType::BF16);
  const Quantized4bit ref = quantize_tensor_4bit(w.data(), {48, 80}, QuantType::FP4, 128, true, ComputeDType::BF16);
  ASSERT_TRUE(lin.is_quantized());
  EXPECT_EQ(lin.q4()->packed, ref.packed);
  EXPECT_EQ(lin.q4()->state.absmax_q, ref.state.absmax_q);
  // The kernels' weights are exactly dequantize_tensor_4bit's (before compute-dtype rounding).
  QuantLinear lin32(w.data(), 48, 80, q, ComputeDType::F32);
  std::vector<float> a(48 * 80), b(48 * 80);
  lin32.dequantize_rows(0, 48, a.data());
  dequantize_tensor_4bit(ref, b.data());
  EXPECT_EQ(a, b);
}

namespace {

// A small random llama model (GQA, biases on q/k/v like qwen2).
MemoryTensorSource random_model(const ModelSpec& s, std::mt19937& rng) {
  MemoryTensorSource src("random");
  for (const TensorSpec& t : s.tensors()) {
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    const bool norm = t.name.find("norm") != std::string::npos;
    auto v = randn(n, rng, norm ? 0.1f : 0.2f);
    if (norm)
      for (auto& x : v) x += 1.0f;
    src.add(t.name, t.shape, v);
  }
  return src;
}

ModelSpec tiny_spec() {
  ModelSpec s;
  s.hidden = 48;
  s.n_layers = 2;
  s.n_heads = 6;
  s.n_kv_heads = 2;
  s.head_dim = 8;
  s.ffn = 70;
  s.vocab = 50;
  s.max_positions = 32;
  s.qkv_bias = true;
  s.tied_embeddings = true;
  return s;
}

}  // namespace

TEST(Forward, IncrementalDecodingMatchesFullSequence) {
  std::mt19937 rng(8);
  const ModelSpec s = tiny_spec();
  const MemoryTensorSource src = random_model(s, rng);
  for (bool quantize : {false, true}) {
    ModelLoadOptions opt;
    opt.quant.quantize = quantize;
    const Model m = Model::load(s, src, opt);
    const std::vector<int> toks = {1, 7, 3, 49, 0, 22, 22, 5, 11, 30};
    const int64_t T = static_cast<int64_t>(toks.size()), V = s.vocab;
    InferenceState all(s, T);
    std::vector<float> full(T * V);
    forward(m, all, toks, full.data(), /*all_logits=*/true);
    EXPECT_EQ(all.position(), T);
    // One token at a time, and a chunk of 3 then one at a time.
    InferenceState one(s, 1);  // grows on demand
    std::vector<float> logits(V);
    for (int64_t t = 0; t < T; ++t) {
      forward(m, one, std::span<const int>(&toks[t], 1), logits.data());
      for (int64_t v = 0; v < V; ++v) ASSERT_NEAR(logits[v], full[t * V + v], 1e-4) << "token " << t;
    }
    InferenceState chunk(s, T);
    forward(m, chunk, std::span<const int>(toks.data(), 3), logits.data());
    for (int64_t v = 0; v < V; ++v) ASSERT_NEAR(logits[v], full[2 * V + v], 1e-4);
    // Exceeding the context is an error.
    InferenceState st(s, s.max_positions);
    std::vector<int> many(s.max_positions + 1, 3);
    EXPECT_THROW(forward(m, st, many, logits.data()), Error);
  }
}

TEST(Forward, LoadRejectsMissingAndMisshapenTensors) {
  std::mt19937 rng(9);
  const ModelSpec s = tiny_spec();
  MemoryTensorSource src = random_model(s, rng);
  src.add("model.layers.1.mlp.up_proj.weight", {71, 48}, std::vector<float>(71 * 48));
  try {
    Model::load(s, src, {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[71, 48]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[70, 48]"), std::string::npos) << msg;
  }
  ModelSpec s2 = s;
  s2.tied_embeddings = false;  // needs lm_head.weight, which is absent
  try {
    Model::load(s2, random_model(s, rng), {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head.weight"), std::string::npos) << e.what();
  }
}
