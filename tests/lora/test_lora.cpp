// LoRA layers and PEFT adapter files. PEFT-written references live in
// tests/fixtures/peft/ (made by tools/make_peft_fixtures.py with peft 0.21.2).
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/safetensors.h"
#include "lora/dropout_mask.h"
#include "lora/lora.h"
#include "lora/peft_adapter.h"

using namespace qlora;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// The scratch a forward and backward of L over T tokens declare (lora_scratch_floats), sized
// exactly: the kernels get no more than the declaration promises.
LoraScratchStorage scratch_for(const LoraLayer& L, int64_t T) {
  return LoraScratchStorage(lora_scratch_floats(T, L.in, L.out, L.r, L.dropout > 0, true));
}

std::string fixture(const std::string& name) { return std::string(QLORA_FIXTURE_DIR) + "/peft/" + name; }

json read_json(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("qlora_lora_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string str(const std::string& sub = "") const { return (path / sub).string(); }
};

// Layers shaped like the modules of a loaded adapter, config taken from it.
std::vector<LoraLayer> layers_like(const PeftAdapter& a) {
  std::vector<LoraLayer> v;
  for (const auto& [path, m] : a.modules) v.emplace_back(path, m.in, m.out, a.config);
  return v;
}

void fill_random(std::vector<float>& v, uint32_t seed, float scale = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  for (auto& x : v) x = d(g);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

// --- config ---------------------------------------------------------------------------

TEST(LoraConfig, Scaling) {
  LoraConfig c;
  c.r = 64;
  c.alpha = 16;
  EXPECT_DOUBLE_EQ(c.scaling(), 0.25);
  c.use_rslora = true;
  EXPECT_DOUBLE_EQ(c.scaling(), 2.0);
  c.r = 4;
  c.alpha = 8;
  EXPECT_DOUBLE_EQ(c.scaling(), 4.0);
  c.use_rslora = false;
  EXPECT_DOUBLE_EQ(c.scaling(), 2.0);
  c.r = 3;
  c.alpha = 1;
  EXPECT_EQ(c.scaling(), 1.0 / 3.0);
  LoraLayer l("x", 4, 4, c);
  EXPECT_EQ(l.scaling, static_cast<float>(1.0 / 3.0));
}

TEST(LoraConfig, ModuleMatchingBySuffix) {
  EXPECT_TRUE(lora_module_matches("model.layers.0.self_attn.q_proj", "q_proj"));
  EXPECT_TRUE(lora_module_matches("model.layers.0.self_attn.q_proj", "self_attn.q_proj"));
  EXPECT_TRUE(lora_module_matches("q_proj", "q_proj"));
  EXPECT_FALSE(lora_module_matches("model.layers.0.self_attn.qq_proj", "q_proj"));
  EXPECT_FALSE(lora_module_matches("model.layers.0.self_attn.q_proj_x", "q_proj"));
  EXPECT_FALSE(lora_module_matches("model.layers.0.self_attn.q_proj", ""));
  LoraConfig c;
  c.target_modules = {"q_proj", "v_proj"};
  EXPECT_TRUE(c.targets("model.layers.3.self_attn.v_proj"));
  EXPECT_FALSE(c.targets("model.layers.3.self_attn.k_proj"));
  c.all_linear = true;
  EXPECT_TRUE(c.targets("model.layers.3.mlp.down_proj"));
  EXPECT_FALSE(c.targets("lm_head", /*is_output_head=*/true));
}

TEST(LoraConfig, Validate) {
  LoraConfig c;
  EXPECT_THROW(c.validate("cfg"), Error);  // no targets
  c.target_modules = {"q_proj"};
  c.validate("cfg");
  c.r = 0;
  EXPECT_THROW(c.validate("cfg"), Error);
  c.r = 8;
  c.dropout = 1.0;
  EXPECT_THROW(c.validate("cfg"), Error);
}

// --- init -----------------------------------------------------------------------------

TEST(LoraInit, KaimingUniformBound) {
  // torch: gain = sqrt(2/(1+a²)), std = gain/sqrt(fan_in), bound = sqrt(3)·std.
  EXPECT_NEAR(kaiming_uniform_bound(16, std::sqrt(5.0)), 0.25, 1e-15);
  EXPECT_NEAR(kaiming_uniform_bound(4096, std::sqrt(5.0)), 1.0 / 64.0, 1e-15);
  EXPECT_NEAR(kaiming_uniform_bound(100, 0.0), std::sqrt(6.0 / 100.0), 1e-15);
}

TEST(LoraInit, KaimingStatistics) {
  LoraConfig c;
  c.r = 64;
  c.target_modules = {"q_proj"};
  LoraLayer l("q_proj", 1024, 512, c);
  l.init(42);
  const double bound = kaiming_uniform_bound(1024, std::sqrt(5.0));
  const double n = static_cast<double>(l.A.size());
  double sum = 0, sq = 0;
  for (float v : l.A) {
    ASSERT_LE(std::fabs(v), static_cast<float>(bound));
    sum += v;
    sq += static_cast<double>(v) * v;
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_LT(std::fabs(mean), 5.0 * bound / std::sqrt(3.0 * n));  // 5 standard errors
  EXPECT_NEAR(var, bound * bound / 3.0, 0.03 * bound * bound / 3.0);
  for (float v : l.B) ASSERT_EQ(v, 0.f);
  LoraLayer same("q_proj", 1024, 512, c), other("q_proj", 1024, 512, c);
  same.init(42);
  other.init(43);
  EXPECT_EQ(same.A, l.A);
  EXPECT_NE(other.A, l.A);
}

// --- forward / backward -------------------------------------------------------------

namespace {

// Double-precision reference: y = s · B (A (x ⊙ mask)).
std::vector<double> ref_forward(const std::vector<double>& A, const std::vector<double>& B, const std::vector<double>& x,
                                const std::vector<float>& mask, int64_t T, int64_t in, int64_t out, int64_t r, double s) {
  std::vector<double> y(static_cast<size_t>(T * out), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> h(static_cast<size_t>(r), 0.0);
    for (int64_t j = 0; j < r; ++j)
      for (int64_t i = 0; i < in; ++i)
        h[j] += A[j * in + i] * x[t * in + i] * (mask.empty() ? 1.0 : mask[t * in + i]);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < r; ++j) y[t * out + o] += s * B[o * r + j] * h[j];
  }
  return y;
}

std::vector<double> to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

void check_gradients(float dropout, bool rslora) {
  const int64_t T = 3, in = 7, out = 5, r = 3;
  LoraConfig c;
  c.r = r;
  c.alpha = 6;
  c.dropout = dropout;
  c.use_rslora = rslora;
  c.target_modules = {"x"};
  LoraLayer L("m.x", in, out, c);
  fill_random(L.A, 1);
  fill_random(L.B, 2);
  std::vector<float> x(T * in), w(T * out);
  fill_random(x, 3);
  fill_random(w, 4);  // loss = Σ y ⊙ w, so dy = w

  std::vector<float> y(T * out, 0.f);
  LoraCacheStorage cs(T, in, r, dropout > 0);
  LoraCache& cache = cs.cache;
  LoraRng rng(7);
  lora_forward(y.data(), &cache, L, x.data(), T, /*training=*/true, &rng, scratch_for(L, T).view());
  ASSERT_EQ(cache.masked, dropout > 0);
  const std::vector<float> mask = cache.masked ? cs.mask : std::vector<float>{};
  const double s = c.scaling();
  auto yref = ref_forward(to_d(L.A), to_d(L.B), to_d(x), mask, T, in, out, r, s);
  for (size_t k = 0; k < y.size(); ++k) EXPECT_NEAR(y[k], yref[k], 1e-5 * (1 + std::fabs(yref[k])));

  std::vector<float> dx(T * in, 0.f);
  lora_backward(dx.data(), L, w.data(), x.data(), cache, T, scratch_for(L, T).view());

  auto loss = [&](const std::vector<double>& A, const std::vector<double>& B, const std::vector<double>& xx) {
    auto yy = ref_forward(A, B, xx, mask, T, in, out, r, s);
    double l = 0;
    for (size_t k = 0; k < yy.size(); ++k) l += yy[k] * w[k];
    return l;
  };
  const double h = 1e-6;
  auto numgrad = [&](std::vector<double> A, std::vector<double> B, std::vector<double> xx, int which, size_t k) {
    std::vector<double>& v = which == 0 ? A : which == 1 ? B : xx;
    const double orig = v[k];
    v[k] = orig + h;
    const double lp = loss(A, B, xx);
    v[k] = orig - h;
    const double lm = loss(A, B, xx);
    return (lp - lm) / (2 * h);
  };
  const auto A = to_d(L.A), B = to_d(L.B), X = to_d(x);
  for (size_t k = 0; k < L.A.size(); ++k) {
    const double g = numgrad(A, B, X, 0, k);
    EXPECT_NEAR(L.dA[k], g, 1e-4 * (1 + std::fabs(g))) << "dA " << k;
  }
  for (size_t k = 0; k < L.B.size(); ++k) {
    const double g = numgrad(A, B, X, 1, k);
    EXPECT_NEAR(L.dB[k], g, 1e-4 * (1 + std::fabs(g))) << "dB " << k;
  }
  for (size_t k = 0; k < x.size(); ++k) {
    const double g = numgrad(A, B, X, 2, k);
    EXPECT_NEAR(dx[k], g, 1e-4 * (1 + std::fabs(g))) << "dx " << k;
  }
  // Gradients accumulate: a second backward doubles them.
  std::vector<float> dA1 = L.dA;
  lora_backward(nullptr, L, w.data(), x.data(), cache, T, scratch_for(L, T).view());
  for (size_t k = 0; k < dA1.size(); ++k) EXPECT_NEAR(L.dA[k], 2 * dA1[k], 1e-5 * (1 + std::fabs(dA1[k])));
}

}  // namespace

TEST(LoraKernels, GradientsMatchFiniteDifferences) { check_gradients(0.f, false); }
TEST(LoraKernels, GradientsMatchFiniteDifferencesRsLora) { check_gradients(0.f, true); }
TEST(LoraKernels, GradientsMatchFiniteDifferencesWithDropout) { check_gradients(0.3f, false); }

TEST(LoraKernels, ForwardMatchesDoubleReferenceAtSize) {
  // Shapes that exercise the SIMD GEMM's full tiles and tails.
  const int64_t T = 37, in = 301, out = 203, r = 16;
  LoraConfig c;
  c.r = r;
  c.alpha = 32;
  c.target_modules = {"x"};
  LoraLayer L("x", in, out, c);
  L.init(5);
  fill_random(L.B, 6, 0.1f);
  std::vector<float> x(T * in), y(T * out, 0.f);
  fill_random(x, 7);
  LoraCacheStorage cs(T, in, r, false);
  lora_forward(y.data(), &cs.cache, L, x.data(), T, false, nullptr, scratch_for(L, T).view());
  auto yref = ref_forward(to_d(L.A), to_d(L.B), to_d(x), {}, T, in, out, r, c.scaling());
  for (size_t k = 0; k < y.size(); ++k) ASSERT_NEAR(y[k], yref[k], 1e-5 * (1 + std::fabs(yref[k]))) << k;
}

// Shapes large enough that lora_forward and lora_backward split the tokens and the outputs
// over the threads (one parallel region each): the forward and every gradient against a
// double-precision reference with dropout acting, at 1, 2 and 3 threads (3: uneven shares).
TEST(LoraKernels, ThreadSharesMatchTheDoubleReference) {
  const int64_t T = 97, in = 700, out = 450, r = 16;
  LoraConfig c;
  c.r = r;
  c.alpha = 32;
  c.dropout = 0.1;
  c.target_modules = {"x"};
  std::vector<float> x(T * in), w(T * out);
  fill_random(x, 11);
  fill_random(w, 12);  // dy
  const int before = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << threads << " threads");
    omp_set_num_threads(threads);
    LoraLayer L("x", in, out, c);
    L.init(5);
    fill_random(L.B, 6, 0.1f);
    std::vector<float> y(T * out, 0.f), dx(T * in, 0.f);
    LoraCacheStorage cs(T, in, r, true);
    LoraRng rng(9);
    lora_forward(y.data(), &cs.cache, L, x.data(), T, /*training=*/true, &rng, scratch_for(L, T).view());
    lora_backward(dx.data(), L, w.data(), x.data(), cs.cache, T, scratch_for(L, T).view());
    omp_set_num_threads(before);
    ASSERT_TRUE(cs.cache.masked);
    const std::vector<float>& m = cs.mask;
    const double s = c.scaling();
    const auto yref = ref_forward(to_d(L.A), to_d(L.B), to_d(x), m, T, in, out, r, s);
    for (size_t k = 0; k < y.size(); ++k) ASSERT_NEAR(y[k], yref[k], 1e-5 * (1 + std::fabs(yref[k]))) << "y " << k;
    std::vector<double> h(T * r, 0.0), dh(T * r, 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < r; ++j) {
        for (int64_t i = 0; i < in; ++i) h[t * r + j] += double{L.A[j * in + i]} * x[t * in + i] * m[t * in + i];
        for (int64_t o = 0; o < out; ++o) dh[t * r + j] += s * w[t * out + o] * L.B[o * r + j];
      }
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < r; ++j) {
        double g = 0;
        for (int64_t t = 0; t < T; ++t) g += s * w[t * out + o] * h[t * r + j];
        ASSERT_NEAR(L.dB[o * r + j], g, 1e-4 * (1 + std::fabs(g))) << "dB " << o << " " << j;
      }
    for (int64_t j = 0; j < r; ++j)
      for (int64_t i = 0; i < in; ++i) {
        double g = 0;
        for (int64_t t = 0; t < T; ++t) g += dh[t * r + j] * x[t * in + i] * m[t * in + i];
        ASSERT_NEAR(L.dA[j * in + i], g, 1e-4 * (1 + std::fabs(g))) << "dA " << j << " " << i;
      }
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < in; ++i) {
        double g = 0;
        for (int64_t j = 0; j < r; ++j) g += dh[t * r + j] * L.A[j * in + i];
        g *= m[t * in + i];
        ASSERT_NEAR(dx[t * in + i], g, 1e-4 * (1 + std::fabs(g))) << "dx " << t << " " << i;
      }
  }
}

// The dropout mask kept as bits (the CPU backend's form) gives the same numbers, bit for bit,
// as the float32 multipliers: the forward, every gradient, and the multipliers themselves (a
// kept element's bit set exactly where the multiplier is 1/(1-p)); rows of an awkward width.
TEST(LoraKernels, PackedDropoutMaskGivesTheSameNumbers) {
  const int64_t T = 70, in = 517, out = 300, r = 8;
  LoraConfig c;
  c.r = r;
  c.alpha = 16;
  c.dropout = 0.2;
  c.target_modules = {"x"};
  std::vector<float> x(T * in), w(T * out);
  fill_random(x, 21);
  fill_random(w, 22);
  struct Run {
    std::vector<float> y, dx, dA, dB;
  };
  auto run = [&](LoraCacheStorage& cs) {
    LoraLayer L("x", in, out, c);
    L.init(3);
    fill_random(L.B, 4, 0.1f);
    Run res{std::vector<float>(T * out, 0.f), std::vector<float>(T * in, 0.f), {}, {}};
    LoraRng rng(5);
    lora_forward(res.y.data(), &cs.cache, L, x.data(), T, /*training=*/true, &rng, scratch_for(L, T).view());
    lora_backward(res.dx.data(), L, w.data(), x.data(), cs.cache, T, scratch_for(L, T).view());
    res.dA = L.dA;
    res.dB = L.dB;
    return res;
  };
  LoraCacheStorage floats(T, in, r, true), bits(T, in, r, true, /*packed=*/true);
  ASSERT_EQ(bits.mask_bits.size(), static_cast<size_t>(T * lora_mask_words(in)));
  ASSERT_TRUE(bits.mask.empty());
  const Run a = run(floats), b = run(bits);
  EXPECT_EQ(a.y, b.y);
  EXPECT_EQ(a.dx, b.dx);
  EXPECT_EQ(a.dA, b.dA);
  EXPECT_EQ(a.dB, b.dB);
  const float keep = 1.f / (1.f - static_cast<float>(c.dropout));
  int64_t kept = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < in; ++i) {
      const bool bit = (bits.mask_bits[t * lora_mask_words(in) + i / 32] >> (i % 32)) & 1u;
      ASSERT_EQ(floats.mask[t * in + i], bit ? keep : 0.0f) << t << " " << i;
      kept += bit;
    }
  EXPECT_NEAR(static_cast<double>(kept) / (T * in), 0.8, 0.02);
}

TEST(LoraKernels, DropoutTrainingAndEval) {
  const int64_t T = 64, in = 256, out = 8;
  LoraConfig c;
  c.r = 4;
  c.dropout = 0.25;
  c.target_modules = {"x"};
  LoraLayer L("x", in, out, c);
  L.init(1);
  fill_random(L.B, 5);
  std::vector<float> x(T * in);
  fill_random(x, 6);
  LoraCacheStorage cs(T, in, c.r, true);
  LoraRng rng(9);
  std::vector<float> y(T * out, 0.f);
  lora_forward(y.data(), &cs.cache, L, x.data(), T, true, &rng, scratch_for(L, T).view());
  ASSERT_TRUE(cs.cache.masked);
  const std::vector<float>& mask = cs.mask;
  size_t zeros = 0;
  for (float m : mask) {
    if (m == 0.f) ++zeros;
    else ASSERT_EQ(m, 1.f / 0.75f);
  }
  EXPECT_NEAR(static_cast<double>(zeros) / mask.size(), 0.25, 0.02);
  // Two masks come from one 64-bit draw: they must still be independent (both dropped with
  // probability p² = 0.0625).
  size_t both = 0;
  for (size_t i = 0; i + 1 < mask.size(); i += 2) both += mask[i] == 0.f && mask[i + 1] == 0.f;
  EXPECT_NEAR(static_cast<double>(both) / static_cast<double>(mask.size() / 2), 0.0625, 0.012);
  // Eval: dropout is the identity, no mask, no RNG needed.
  std::vector<float> ye(T * out, 0.f), yn(T * out, 0.f);
  LoraCacheStorage ce(T, in, c.r, true);
  lora_forward(ye.data(), &ce.cache, L, x.data(), T, false, nullptr, scratch_for(L, T).view());
  EXPECT_FALSE(ce.cache.masked);
  LoraLayer nodrop = L;
  nodrop.dropout = 0.f;
  LoraRng rng2(1);
  lora_forward(yn.data(), nullptr, nodrop, x.data(), T, true, &rng2, scratch_for(nodrop, T).view());
  EXPECT_EQ(ye, yn);
  EXPECT_NE(ye, y);
  // Training with dropout and no generator, or no room for the mask, is a usage error.
  EXPECT_THROW(lora_forward(y.data(), &cs.cache, L, x.data(), T, true, nullptr, scratch_for(L, T).view()), Error);
  EXPECT_THROW(lora_forward(y.data(), nullptr, L, x.data(), T, true, &rng, scratch_for(L, T).view()), Error);
}

TEST(LoraKernels, FreshAdapterIsNoOp) {
  LoraConfig c;
  c.r = 8;
  c.target_modules = {"x"};
  LoraLayer L("x", 32, 16, c);
  L.init(3);
  std::vector<float> x(4 * 32), y(4 * 16, 1.5f);
  fill_random(x, 1);
  lora_forward(y.data(), nullptr, L, x.data(), 4, false, nullptr, scratch_for(L, 4).view());
  for (float v : y) EXPECT_EQ(v, 1.5f);
}

// --- reading PEFT's adapters --------------------------------------------------------

TEST(PeftAdapter, ReadsPeftQvAdapter) {
  PeftAdapter a = load_peft_adapter(fixture("adapter_qv"));
  EXPECT_EQ(a.config.r, 4);
  EXPECT_EQ(a.config.alpha, 8.0);
  EXPECT_DOUBLE_EQ(a.config.dropout, 0.05);
  EXPECT_FALSE(a.config.use_rslora);
  EXPECT_FALSE(a.config.all_linear);
  EXPECT_EQ(a.config.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(a.config.scaling(), 2.0);
  EXPECT_EQ(a.base_model_name_or_path, "base");
  ASSERT_EQ(a.modules.size(), 4u);
  const json base = read_json(fixture("base/config.json"));
  const int64_t hidden = base["hidden_size"], kv = base["num_key_value_heads"], hd = base["head_dim"];
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
    const auto& q = a.modules.at(p + "q_proj");
    EXPECT_EQ(q.in, hidden);
    EXPECT_EQ(q.out, hidden);
    EXPECT_EQ(q.r, 4);
    const auto& v = a.modules.at(p + "v_proj");
    EXPECT_EQ(v.in, hidden);
    EXPECT_EQ(v.out, kv * hd);
    // Values are exactly those on disk, and B was set non-zero by the fixture script.
    SafeTensorsFile f(fixture("adapter_qv/adapter_model.safetensors"));
    EXPECT_EQ(v.A, f.to_float(f.at(peft_lora_key(p + "v_proj", 'A'))));
    EXPECT_EQ(v.B, f.to_float(f.at(peft_lora_key(p + "v_proj", 'B'))));
    bool nonzero = false;
    for (float b : v.B) nonzero |= b != 0.f;
    EXPECT_TRUE(nonzero);
    // PEFT's A init: kaiming-uniform(a = sqrt 5), bound 1/sqrt(in).
    const float bound = static_cast<float>(kaiming_uniform_bound(hidden, std::sqrt(5.0)));
    for (float x : q.A) EXPECT_LE(std::fabs(x), bound);
  }
}

TEST(PeftAdapter, ReadsPeftAllLinearRsLoraAdapter) {
  PeftAdapter a = load_peft_adapter(fixture("adapter_all_rslora"));
  EXPECT_TRUE(a.config.use_rslora);
  EXPECT_EQ(a.config.scaling(), 4.0);  // 8 / sqrt(4)
  EXPECT_EQ(a.modules.size(), 14u);    // 2 layers × (q, k, v, o, gate, up, down); no lm_head
  EXPECT_EQ(a.modules.count("lm_head"), 0u);
  const auto& down = a.modules.at("model.layers.1.mlp.down_proj");
  EXPECT_EQ(down.in, 32);
  EXPECT_EQ(down.out, 16);
  const auto& up = a.modules.at("model.layers.0.mlp.up_proj");
  EXPECT_EQ(up.in, 16);
  EXPECT_EQ(up.out, 32);
}

// --- writing what PEFT writes ---------------------------------------------------------

namespace {

void expect_same_layout_as_peft(const std::string& name) {
  PeftAdapter ref = load_peft_adapter(fixture(name));
  std::vector<LoraLayer> layers = layers_like(ref);
  LoraConfig cfg = ref.config;
  if (name == "adapter_all_rslora") {  // what a user asks for; PEFT expands it on save
    cfg.all_linear = true;
    cfg.target_modules.clear();
  }
  for (auto& l : layers) l.init(11);
  TempDir dir("layout_" + name);
  save_peft_adapter(dir.str(), cfg, "base", layers);

  // Config: every key PEFT writes, with the same values.
  const json want = read_json(fixture(name + "/adapter_config.json"));
  const json got = read_json(dir.str("adapter_config.json"));
  std::set<std::string> want_keys, got_keys;
  for (auto it = want.begin(); it != want.end(); ++it) want_keys.insert(it.key());
  for (auto it = got.begin(); it != got.end(); ++it) got_keys.insert(it.key());
  EXPECT_EQ(got_keys, want_keys);
  for (auto it = want.begin(); it != want.end(); ++it)
    EXPECT_EQ(got.value(it.key(), json()), it.value()) << name << ": key " << it.key();
  EXPECT_EQ(got.dump(), want.dump());

  // Weights: same key set, dtypes and shapes; same metadata.
  SafeTensorsFile wf(fixture(name + "/adapter_model.safetensors"));
  SafeTensorsFile gf(dir.str("adapter_model.safetensors"));
  ASSERT_EQ(gf.tensors().size(), wf.tensors().size());
  for (const auto& t : wf.tensors()) {
    const SafeTensorInfo* g = gf.find(t.name);
    ASSERT_NE(g, nullptr) << t.name;
    EXPECT_EQ(g->dtype, t.dtype) << t.name;
    EXPECT_EQ(g->shape, t.shape) << t.name;
  }
  EXPECT_EQ(gf.metadata(), wf.metadata());
}

}  // namespace

TEST(PeftAdapter, WriterMatchesPeftLayoutQv) { expect_same_layout_as_peft("adapter_qv"); }
TEST(PeftAdapter, WriterMatchesPeftLayoutAllLinearRsLora) { expect_same_layout_as_peft("adapter_all_rslora"); }

TEST(PeftAdapter, RoundTripIsBitExact) {
  PeftAdapter ref = load_peft_adapter(fixture("adapter_all_rslora"));
  std::vector<LoraLayer> layers = layers_like(ref);
  uint32_t seed = 100;
  for (auto& l : layers) {
    fill_random(l.A, seed++);
    fill_random(l.B, seed++, 1e-3f);
  }
  layers[0].A[0] = -0.f;
  layers[0].A[1] = std::numeric_limits<float>::denorm_min();
  TempDir dir("roundtrip");
  save_peft_adapter(dir.str(), ref.config, "some/base-model", layers);
  PeftAdapter back = load_peft_adapter(dir.str());
  EXPECT_EQ(back.base_model_name_or_path, "some/base-model");
  EXPECT_EQ(back.config.r, ref.config.r);
  EXPECT_EQ(back.config.alpha, ref.config.alpha);
  EXPECT_EQ(back.config.dropout, ref.config.dropout);
  EXPECT_EQ(back.config.use_rslora, ref.config.use_rslora);
  std::vector<LoraLayer> loaded = layers_like(ref);
  back.apply_to(loaded);
  ASSERT_EQ(loaded.size(), layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    ASSERT_EQ(loaded[i].module_path, layers[i].module_path);
    ASSERT_EQ(loaded[i].A.size(), layers[i].A.size());
    EXPECT_EQ(0, std::memcmp(loaded[i].A.data(), layers[i].A.data(), layers[i].A.size() * 4));
    EXPECT_EQ(0, std::memcmp(loaded[i].B.data(), layers[i].B.data(), layers[i].B.size() * 4));
  }
  // Optional hand-off for checking with PEFT itself (tools/make_peft_fixtures.py --check).
  if (const char* out = std::getenv("QLORA_PEFT_EXPORT_DIR")) {
    save_peft_adapter(std::string(out) + "/ours_all_rslora", ref.config, "base", layers);
    PeftAdapter qv = load_peft_adapter(fixture("adapter_qv"));
    std::vector<LoraLayer> qv_layers = layers_like(qv);
    qv.apply_to(qv_layers);
    save_peft_adapter(std::string(out) + "/ours_qv", qv.config, "base", qv_layers);
  }
}

// --- rejecting bad adapters -------------------------------------------------------------

TEST(PeftAdapter, ErrorsNameFileAndKey) {
  PeftAdapter ref = load_peft_adapter(fixture("adapter_qv"));
  std::vector<LoraLayer> layers = layers_like(ref);
  TempDir dir("errors");
  save_peft_adapter(dir.str("ok"), ref.config, "base", layers);

  // Missing B for one module.
  {
    SafeTensorsWriter w;
    std::vector<float> a(4 * 16, 0.f);
    w.add_vector(peft_lora_key("model.layers.0.self_attn.q_proj", 'A'), DType::F32, {4, 16}, a);
    fs::create_directories(dir.path / "missing");
    fs::copy_file(dir.path / "ok/adapter_config.json", dir.path / "missing/adapter_config.json");
    w.write(dir.str("missing/adapter_model.safetensors"));
    const std::string e = error_of([&] { load_peft_adapter(dir.str("missing")); });
    EXPECT_NE(e.find("adapter_model.safetensors"), std::string::npos) << e;
    EXPECT_NE(e.find("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"), std::string::npos) << e;
  }
  // r in the config disagrees with the weights.
  {
    fs::create_directories(dir.path / "rank");
    fs::copy_file(dir.path / "ok/adapter_model.safetensors", dir.path / "rank/adapter_model.safetensors");
    json c = read_json(dir.str("ok/adapter_config.json"));
    c["r"] = 8;
    std::ofstream(dir.str("rank/adapter_config.json")) << c.dump();
    const std::string e = error_of([&] { load_peft_adapter(dir.str("rank")); });
    EXPECT_NE(e.find("adapter_model.safetensors"), std::string::npos) << e;
    EXPECT_NE(e.find("lora_A.weight"), std::string::npos) << e;
    EXPECT_NE(e.find("r = 8"), std::string::npos) << e;
  }
  // The model's modules disagree with the adapter: wrong in_features, rank, missing module.
  {
    PeftAdapter ok = load_peft_adapter(dir.str("ok"));
    std::vector<LoraLayer> wrong = layers_like(ok);
    wrong[0] = LoraLayer(wrong[0].module_path, wrong[0].in + 1, wrong[0].out, ok.config);
    std::string e = error_of([&] { ok.apply_to(wrong); });
    EXPECT_NE(e.find("in_features"), std::string::npos) << e;
    EXPECT_NE(e.find(peft_lora_key(wrong[0].module_path, 'A')), std::string::npos) << e;

    LoraConfig r8 = ok.config;
    r8.r = 8;
    std::vector<LoraLayer> rank8 = layers_like(ok);
    rank8[1] = LoraLayer(rank8[1].module_path, rank8[1].in, rank8[1].out, r8);
    e = error_of([&] { ok.apply_to(rank8); });
    EXPECT_NE(e.find("rank"), std::string::npos) << e;

    std::vector<LoraLayer> extra = layers_like(ok);
    extra.emplace_back("model.layers.0.self_attn.k_proj", 16, 8, ok.config);
    e = error_of([&] { ok.apply_to(extra); });
    EXPECT_NE(e.find("missing key 'base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight'"), std::string::npos)
        << e;

    std::vector<LoraLayer> fewer = layers_like(ok);
    fewer.pop_back();
    e = error_of([&] { ok.apply_to(fewer); });
    EXPECT_NE(e.find("has no LoRA-adapted module"), std::string::npos) << e;
  }
  // Unsupported config features, missing files.
  {
    fs::create_directories(dir.path / "dora");
    fs::copy_file(dir.path / "ok/adapter_model.safetensors", dir.path / "dora/adapter_model.safetensors");
    json c = read_json(dir.str("ok/adapter_config.json"));
    c["use_dora"] = true;
    std::ofstream(dir.str("dora/adapter_config.json")) << c.dump();
    std::string e = error_of([&] { load_peft_adapter(dir.str("dora")); });
    EXPECT_NE(e.find("adapter_config.json"), std::string::npos) << e;
    EXPECT_NE(e.find("DoRA"), std::string::npos) << e;
    c["use_dora"] = false;
    c["peft_type"] = "IA3";
    std::ofstream(dir.str("dora/adapter_config.json")) << c.dump();
    e = error_of([&] { load_peft_adapter(dir.str("dora")); });
    EXPECT_NE(e.find("IA3"), std::string::npos) << e;
    EXPECT_THROW(load_peft_adapter(dir.str("nonexistent")), Error);
    std::ofstream(dir.str("dora/adapter_config.json")) << "{not json";
    EXPECT_THROW(load_peft_adapter(dir.str("dora")), Error);
  }
}

TEST(PeftAdapter, ParsesAllLinearString) {
  json j = read_json(fixture("adapter_qv/adapter_config.json"));
  j["target_modules"] = "all-linear";
  LoraConfig c = parse_peft_adapter_config(j, "cfg");
  EXPECT_TRUE(c.all_linear);
  // any other string is PEFT's regular expression over whole module paths
  j["target_modules"] = ".*q_proj";
  c = parse_peft_adapter_config(j, "cfg");
  EXPECT_FALSE(c.all_linear);
  EXPECT_EQ(c.target_regex, ".*q_proj");
  EXPECT_TRUE(c.targets("model.layers.0.self_attn.q_proj"));
  EXPECT_FALSE(c.targets("model.layers.0.self_attn.q_proj.x"));
  EXPECT_FALSE(c.targets("model.layers.0.self_attn.k_proj"));
  j["target_modules"] = "(?i)q_proj";  // (Python's inline flags)
  EXPECT_THROW(parse_peft_adapter_config(j, "cfg"), Error);
  j["target_modules"] = "";
  EXPECT_THROW(parse_peft_adapter_config(j, "cfg"), Error);
}

// Our forward on PEFT's weights adds what PEFT's LoRA layer adds (orientation, scaling).
TEST(PeftAdapter, ForwardMatchesPeftLayer) {
  for (const std::string name : {"adapter_qv", "adapter_all_rslora"}) {
    const json ref = read_json(fixture(name + "_forward.json"));
    PeftAdapter a = load_peft_adapter(fixture(name));
    const std::string mod = ref["module"];
    const PeftLoraWeights& m = a.modules.at(mod);
    LoraLayer L(mod, m.in, m.out, a.config);
    std::vector<LoraLayer> one{L};
    PeftAdapter only = a;
    only.modules = {{mod, m}};
    only.apply_to(one);
    auto floats = [](const json& bits) {
      std::vector<float> v;
      for (const auto& b : bits) v.push_back(std::bit_cast<float>(b.get<uint32_t>()));
      return v;
    };
    const std::vector<float> x = floats(ref["x"]), want = floats(ref["delta"]);
    const int64_t T = ref["shape_x"][0];
    ASSERT_EQ(static_cast<int64_t>(x.size()), T * m.in);
    ASSERT_EQ(static_cast<int64_t>(want.size()), T * m.out);
    std::vector<float> y(want.size(), 0.f);
    lora_forward(y.data(), nullptr, one[0], x.data(), T, /*training=*/false, nullptr, scratch_for(one[0], T).view());
    for (size_t k = 0; k < y.size(); ++k) EXPECT_NEAR(y[k], want[k], 2e-6 + 1e-5 * std::fabs(want[k])) << name << " " << k;
  }
}

TEST(LoraDropout, MaskKernelsWriteTheScalarBits) {
  // The dispatched mask fill (AVX2: four rows' generators side by side) writes exactly the
  // scalar definition's masks: every row count around the groups of 4, odd and even widths,
  // ranges that start mid-matrix (how threads split rows), and nothing outside its rows.
  for (float p : {0.05f, 0.5f})
    for (int64_t in : {1, 2, 3, 7, 8, 577, 1536})
      for (auto [t0, t1] : {std::pair<int64_t, int64_t>{0, 1}, {0, 4}, {0, 9}, {3, 12}, {5, 6}}) {
        const int64_t T = 13;
        std::vector<float> a(T * in, -1.f), b(T * in, -1.f);
        fill_dropout_mask(a.data(), t0, t1, in, 0x1234567890ABCDEFull, p, 1.f / (1.f - p));
        fill_dropout_mask_scalar(b.data(), t0, t1, in, 0x1234567890ABCDEFull, p, 1.f / (1.f - p));
        ASSERT_EQ(a, b) << "p " << p << " in " << in << " rows " << t0 << ".." << t1;
        int64_t dropped = 0;
        for (int64_t k = t0 * in; k < t1 * in; ++k) dropped += b[k] == 0.f;
        if ((t1 - t0) * in >= 1000) {
          EXPECT_NEAR(double(dropped) / ((t1 - t0) * in), p, 0.05);
        }
      }
}
