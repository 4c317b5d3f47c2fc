// The KV cache in 16 bits (ModelLoadOptions::kv_cache_dtype, --kv-cache bf16 / f16): attention
// over it is attention over the rounded keys and values, bit for bit; with bf16 compute a bf16
// cache changes nothing at all; with float32 compute an f16 cache stays close to the exact
// model; growing the cache keeps what it holds.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <cmath>
#include <random>
#include <span>
#include <vector>

#include "base/float_formats.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "model/backend.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/ops.h"
#include "model_test_util.h"

using namespace qlora;
using namespace qlora::test;

namespace {

std::vector<float> random_vec(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Greedy-decoded logits, one token at a time after the prompt, of `model`.
std::vector<float> decode_logits(const Model& model, const std::vector<int>& prompt, int steps) {
  const int64_t V = model.spec().vocab;
  InferenceState st(model, 8);  // small: the cache grows (reserve) while decoding
  std::vector<float> logits(V), all;
  forward(model, st, prompt, logits.data());
  for (int s = 0; s < steps; ++s) {
    all.insert(all.end(), logits.begin(), logits.end());
    const int next = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    const int tok[1] = {next};
    forward(model, st, tok, logits.data());
  }
  return all;
}

Model load_stories(ComputeDType compute, ComputeDType kv) {
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.double_quant = true;
  o.compute_dtype = compute;
  o.kv_cache_dtype = kv;
  return Model::load(f.spec, *f.tensors, o);
}

std::vector<int> stories_prompt() {
  ModelFiles f = open_model_files(stories_bin());
  const auto ids = f.tokenizer->encode("Once upon a time");
  return {ids.begin(), ids.end()};
}

}  // namespace

TEST(KVCache16, AttentionEqualsFloatAttentionOverTheRoundedValues) {
  // The CPU backend's attention over a 16-bit cache against float32 attention over the same
  // values rounded and widened: bit for bit, for one decoded token (the row kernels), a block
  // of prompt tokens (the per-head GEMMs) and a sliding window.
  std::mt19937 rng(7);
  Backend& be = cpu_backend();
  const int64_t NH = 9, NKV = 3, HS = 64, KVD = NKV * HS;
  for (ComputeDType t : {ComputeDType::BF16, ComputeDType::F16})
    for (int64_t T : {1, 20})
      for (bool window : {false, true}) {
        const int64_t Tk = 70, q_pos0 = Tk - T;
        const auto q = random_vec(static_cast<size_t>(T * NH * HS), rng);
        const auto k = random_vec(static_cast<size_t>(Tk * KVD), rng), v = random_vec(k.size(), rng);
        std::vector<uint16_t> k16(k.size()), v16(v.size());
        convert_from_f32(to_dtype(t), k.data(), k16.data(), k.size());
        convert_from_f32(to_dtype(t), v.data(), v16.data(), v.size());
        std::vector<float> kr(k.size()), vr(v.size());
        convert_to_f32(to_dtype(t), k16.data(), kr.data(), k.size());
        convert_to_f32(to_dtype(t), v16.data(), vr.data(), v.size());
        std::vector<int32_t> starts(static_cast<size_t>(T));
        for (int64_t i = 0; i < T; ++i) starts[i] = static_cast<int32_t>(std::max<int64_t>(0, q_pos0 + i - 31));
        AttentionShape a;
        a.T = T;
        a.Tk = Tk;
        a.q_pos0 = q_pos0;
        a.NH = NH;
        a.NKV = NKV;
        a.HS = HS;
        a.key_start = window ? starts.data() : nullptr;
        std::vector<float> scratch(static_cast<size_t>(attention_scratch_floats(T, Tk, NH)));
        std::vector<float> want(q.size()), got(q.size(), 7.0f);
        be.attention_forward(a, want.data(), nullptr, scratch.data(), q.data(), kr.data(), vr.data());
        be.attention_forward_kv16(a, got.data(), nullptr, scratch.data(), q.data(), k16.data(), v16.data(), t);
        ASSERT_EQ(got, want) << (t == ComputeDType::F16 ? "f16" : "bf16") << " T " << T << " window " << window;
      }
}

TEST(KVCache16, GrowingKeepsTheValues) {
  // A 16-bit cache that grows (reserve, as decoding does past its capacity) keeps every
  // position of every layer.
  KVCache c(3, 10, 4, true, cpu_backend(), ComputeDType::F16);
  for (int64_t l = 0; l < 3; ++l)
    for (int64_t i = 0; i < 4 * 10; ++i) {
      c.keys16(l)[i] = static_cast<uint16_t>(1000 * l + i);
      c.values16(l)[i] = static_cast<uint16_t>(2000 * l + i);
    }
  c.set_length(4);
  c.reserve(9);
  EXPECT_EQ(c.capacity(), 9);
  EXPECT_EQ(c.bytes(), static_cast<size_t>(2 * 3 * 10 * 9 * 2));
  for (int64_t l = 0; l < 3; ++l)
    for (int64_t i = 0; i < 4 * 10; ++i) {
      ASSERT_EQ(c.keys16(l)[i], 1000 * l + i);
      ASSERT_EQ(c.values16(l)[i], 2000 * l + i);
    }
}

TEST(KVCache16, CacheInTheComputeDtypeChangesNothing) {
  // With bf16 (f16) compute the keys and values are bf16 (f16) values already: a cache in the
  // compute dtype (--kv-cache auto, the default) holds them exactly, and decoding gives the
  // float32 cache's logits bit for bit.
  for (ComputeDType t : {ComputeDType::BF16, ComputeDType::F16}) {
    const Model a = load_stories(t, ComputeDType::F32);
    const Model b = load_stories(t, t);
    EXPECT_EQ(InferenceState(b, 8).cache().dtype(), t);
    const std::vector<int> prompt = stories_prompt();
    EXPECT_EQ(decode_logits(a, prompt, 40), decode_logits(b, prompt, 40)) << (t == ComputeDType::F16 ? "f16" : "bf16");
  }
}

TEST(KVCache16, F16CacheStaysCloseUnderFloat32Compute) {
  // Float32 compute with an f16 cache (llama.cpp's default): each cached value rounded to 11
  // significant bits. The logits move by far less than their spread and greedy decoding picks
  // the same tokens.
  const Model a = load_stories(ComputeDType::F32, ComputeDType::F32);
  const Model b = load_stories(ComputeDType::F32, ComputeDType::F16);
  const std::vector<int> prompt = stories_prompt();
  const std::vector<float> la = decode_logits(a, prompt, 40), lb = decode_logits(b, prompt, 40);
  ASSERT_EQ(la.size(), lb.size());
  const int64_t V = a.spec().vocab;
  double max_diff = 0;
  int same_top = 0;
  for (size_t s = 0; s < la.size() / V; ++s) {
    const float* x = la.data() + s * V;
    const float* y = lb.data() + s * V;
    for (int64_t i = 0; i < V; ++i) max_diff = std::max(max_diff, std::fabs(double(x[i]) - y[i]));
    same_top += std::max_element(x, x + V) - x == std::max_element(y, y + V) - y;
  }
  std::printf("[ kv f16 ] stories260K, 40 decoded tokens: max |logit diff| %.5f, same top-1 %d/40\n", max_diff, same_top);
  EXPECT_NE(la, lb) << "the f16 cache did not round anything";
  EXPECT_LT(max_diff, 0.05);
  EXPECT_EQ(same_top, 40);
}

TEST(KVCache16, CacheInTheComputeDtypeChangesNothingInAnyFamily) {
  // The same for every family fixture (their q/k norms, biases, rotary variants, ALiBi, sliding
  // windows and fused projections all end in keys and values of the compute dtype): a bf16
  // cache under bf16 compute gives the float32 cache's decoded logits bit for bit.
  int families = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(QLORA_FIXTURE_DIR) + "/families")) {
    if (!std::filesystem::exists(e.path() / "model.safetensors")) continue;
    ModelFiles f = open_model_files(e.path().string());
    ModelLoadOptions o;
    o.compute_dtype = ComputeDType::BF16;
    const Model a = Model::load(f.spec, *f.tensors, o);
    o.kv_cache_dtype = ComputeDType::BF16;
    const Model b = Model::load(f.spec, *f.tensors, o);
    const std::vector<int> prompt = {1, 2, 3, 5, 8};
    EXPECT_EQ(decode_logits(a, prompt, 12), decode_logits(b, prompt, 12)) << e.path().filename();
    ++families;
  }
  EXPECT_GE(families, 20);
}
