// Batched decoding (forward_batch, `qlora serve --parallel N`): one token of each of several
// sequences in one pass gives each sequence the logits that decoding it alone gives, up to
// the summation order of the multi-token products: on stories260K (NF4, fp32 and bf16
// compute, a 16-bit cache, an adapter), with sequences joining and leaving the batch at
// different positions, and on every family fixture (rotary variants, ALiBi, learned positions,
// sliding windows crossed while decoding). Bad input fails before any cache changes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "lora/lora.h"
#include "lora/lora_model.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/ops.h"
#include "base/float_formats.h"
#include "model/backend.h"
#include "model_test_util.h"

using namespace qlora;
using namespace qlora::test;

namespace {

int argmax(const float* x, int64_t n) { return static_cast<int>(std::max_element(x, x + n) - x); }

// A sequence to decode: its prompt, when it joins the batch (step), and how many tokens it
// decodes.
struct Plan {
  std::vector<int> prompt;
  int join = 0;
  int steps = 0;
};

// Greedy decoding of each plan alone: the logits of every decoded step, concatenated.
std::vector<std::vector<float>> decode_alone(const Model& m, const std::vector<Plan>& plans) {
  const int64_t V = m.spec().vocab;
  std::vector<std::vector<float>> out;
  for (const Plan& p : plans) {
    InferenceState st(m, 4);  // small: the cache grows while decoding
    std::vector<float> logits(static_cast<size_t>(V)), all;
    forward(m, st, p.prompt, logits.data());
    for (int s = 0; s < p.steps; ++s) {
      all.insert(all.end(), logits.begin(), logits.end());
      const int tok[1] = {argmax(logits.data(), V)};
      forward(m, st, tok, logits.data());
    }
    out.push_back(std::move(all));
  }
  return out;
}

// The same plans decoded together: at each step the plans that have joined (their prompt run
// alone, as a server does) and not finished decode one token each in one forward_batch.
// `follow` (optional): feed each sequence the token its alone-run chose, so that a near-tie
// decided differently cannot make the sequences diverge.
std::vector<std::vector<float>> decode_batched(const Model& m, const std::vector<Plan>& plans,
                                               const std::vector<std::vector<float>>* follow = nullptr) {
  const int64_t V = m.spec().vocab;
  const size_t n = plans.size();
  std::vector<std::unique_ptr<InferenceState>> st(n);
  std::vector<std::vector<float>> out(n), last(n, std::vector<float>(static_cast<size_t>(V)));
  std::vector<int> done(n, 0);
  InferenceState work(m, 1);
  for (int step = 0;; ++step) {
    for (size_t i = 0; i < n; ++i)
      if (plans[i].join == step) {
        st[i] = std::make_unique<InferenceState>(m, 4);
        forward(m, *st[i], plans[i].prompt, last[i].data());
      }
    std::vector<InferenceState*> seqs;
    std::vector<int> toks;
    std::vector<size_t> who;
    for (size_t i = 0; i < n; ++i) {
      if (!st[i] || done[i] >= plans[i].steps) continue;
      out[i].insert(out[i].end(), last[i].begin(), last[i].end());
      const float* pick = follow ? (*follow)[i].data() + static_cast<size_t>(done[i]) * V : last[i].data();
      seqs.push_back(st[i].get());
      toks.push_back(argmax(pick, V));
      who.push_back(i);
    }
    bool pending = false;
    for (size_t i = 0; i < n; ++i) pending |= !st[i] || done[i] < plans[i].steps;
    if (!pending) break;
    if (seqs.empty()) continue;
    std::vector<float> logits(seqs.size() * static_cast<size_t>(V));
    forward_batch(m, work, seqs, toks, logits.data());
    for (size_t j = 0; j < who.size(); ++j) {
      std::copy(logits.begin() + static_cast<ptrdiff_t>(j * V), logits.begin() + static_cast<ptrdiff_t>((j + 1) * V),
                last[who[j]].begin());
      ++done[who[j]];
    }
  }
  return out;
}

// Largest |a - b| over every logit, relative to the largest |a|.
double relative_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].size(), b[i].size()) << "sequence " << i;
    for (size_t j = 0; j < std::min(a[i].size(), b[i].size()); ++j) {
      diff = std::max(diff, std::fabs(double(a[i][j]) - b[i][j]));
      scale = std::max(scale, std::fabs(double(a[i][j])));
    }
  }
  return diff / scale;
}

Model load_stories(ComputeDType dt, ComputeDType kv = ComputeDType::F32) {
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.double_quant = true;
  o.compute_dtype = dt;
  o.kv_cache_dtype = kv;
  return Model::load(f.spec, *f.tensors, o);
}

std::vector<Plan> stories_plans() {
  // Different prompt lengths (so different positions in one batch); one joins late, one
  // leaves early, so the batch runs at sizes 1 to 4.
  return {{{1, 403, 407, 261, 931 % 512}, 0, 30},
          {{1, 43, 82, 351}, 0, 12},
          {{1, 9, 17, 33, 65, 129, 257, 3, 5, 7, 11}, 5, 24},
          {{1, 200}, 2, 28}};
}

}  // namespace

TEST(ForwardBatch, StoriesMatchesDecodingAlone) {
  for (auto [dt, kv, tol] : {std::tuple{ComputeDType::F32, ComputeDType::F32, 2e-5},
                             std::tuple{ComputeDType::BF16, ComputeDType::BF16, 2e-2},
                             // (f16 rounding of the cached values turns the products' ~1e-7
                             // differences into an occasional f16 ulp, 2^-11)
                             std::tuple{ComputeDType::F32, ComputeDType::F16, 2e-3}}) {
    const Model m = load_stories(dt, kv);
    ASSERT_TRUE(can_forward_batch(m));
    const auto plans = stories_plans();
    const auto alone = decode_alone(m, plans);
    const auto together = decode_batched(m, plans, &alone);
    const double d = relative_diff(alone, together);
    std::printf("[ batch ] stories260K compute %s kv %s: max relative logit diff %.2e\n", std::string(dtype_name(to_dtype(dt))).c_str(),
                std::string(dtype_name(to_dtype(kv))).c_str(), d);
    EXPECT_LT(d, tol);
    // Greedy decoding, each sequence choosing for itself, gives the same tokens (fp32).
    if (dt == ComputeDType::F32) {
      const auto free_run = decode_batched(m, plans);
      const int64_t V = m.spec().vocab;
      for (size_t i = 0; i < plans.size(); ++i)
        for (int s = 0; s < plans[i].steps; ++s)
          ASSERT_EQ(argmax(alone[i].data() + s * V, V), argmax(free_run[i].data() + s * V, V))
              << "sequence " << i << " step " << s;
    }
  }
}

TEST(ForwardBatch, WithAnAdapter) {
  Model m = load_stories(ComputeDType::F32);
  LoraConfig c;
  c.r = 4;
  c.alpha = 8.0;
  c.all_linear = true;
  c.seed = 3;
  LoraModel lora(m, c);
  LoraRng rng(9);
  for (LoraLayer& l : lora.layers())
    for (float& b : l.B) b = 0.2f * (2.f * rng.next_float() - 1.f);
  m.set_adapter(&lora);
  const auto plans = stories_plans();
  const auto alone = decode_alone(m, plans);
  const double d = relative_diff(alone, decode_batched(m, plans, &alone));
  std::printf("[ batch ] stories260K NF4 + adapter: max relative logit diff %.2e\n", d);
  EXPECT_LT(d, 2e-5);
  m.set_adapter(nullptr);
  const auto plain = decode_alone(m, plans);
  EXPECT_GT(relative_diff(alone, plain), 1e-3) << "the adapter changed nothing";
}

TEST(ForwardBatch, EveryFamily) {
  int families = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(QLORA_FIXTURE_DIR) + "/families")) {
    if (!std::filesystem::exists(e.path() / "model.safetensors")) continue;
    ModelFiles f = open_model_files(e.path().string());
    const Model m = Model::load(f.spec, *f.tensors, ModelLoadOptions{});
    if (!can_forward_batch(m)) {  // LongRope: decoded one at a time
      EXPECT_EQ(m.spec().rope_scaling.type, RopeScaling::Type::LongRope) << e.path().filename();
      continue;
    }
    const int V = static_cast<int>(m.spec().vocab);
    // Past any fixture's sliding window while decoding, at different positions per row.
    std::vector<Plan> plans = {{{1, 2, 3, 5, 8}, 0, 20}, {{7 % V, 11 % V}, 0, 14}, {{4, 9, 16, 25 % V, 36 % V, 49 % V, 64 % V}, 3, 16}};
    const auto alone = decode_alone(m, plans);
    const double d = relative_diff(alone, decode_batched(m, plans, &alone));
    EXPECT_LT(d, 5e-5) << e.path().filename();
    ++families;
  }
  EXPECT_GE(families, 20);
}

TEST(ForwardBatch, SmolLM2WithItsQ8Head) {
  // The real default model: its Q4_1 Linears as stored (4-bit with a minimum per block: the
  // few-token products) and the GGUF's Q8_0 output
  // head kept 8-bit (gemv_q8_multi, bit for bit the one-token product), GQA 9/3.
  if (!std::filesystem::exists(smollm2_gguf())) GTEST_SKIP() << smollm2_gguf() << " is absent";
  ModelFiles f = open_model_files(smollm2_gguf());
  ModelLoadOptions o;
  o.quant.double_quant = true;
  const Model m = Model::load(f.spec, *f.tensors, o);
  auto ids = [&](const char* text) {
    const auto v = f.tokenizer->encode(text);
    return std::vector<int>(v.begin(), v.end());
  };
  const std::vector<Plan> plans = {{ids("The capital of France is"), 0, 12},
                                   {ids("Once upon a time, in a small village by the sea,"), 0, 16},
                                   {ids("def fibonacci(n):"), 2, 10}};
  const auto alone = decode_alone(m, plans);
  const double d = relative_diff(alone, decode_batched(m, plans, &alone));
  std::printf("[ batch ] SmolLM2 NF4: max relative logit diff %.2e\n", d);
  EXPECT_LT(d, 1e-4);
}

TEST(ForwardBatch, Int8ActivationsBitForBit) {
  // --int8-activations: the few-token int8 kernels keep the one-token kernels' instructions
  // per token, so a batched row's logits are those of the sequence decoded alone, exactly.
  if (!std::filesystem::exists(smollm2_gguf())) GTEST_SKIP() << smollm2_gguf() << " is absent";
  ModelFiles f = open_model_files(smollm2_gguf());
  ModelLoadOptions o;
  o.quant.double_quant = true;
  o.int8_activations = true;
  const Model m = Model::load(f.spec, *f.tensors, o);
  std::vector<Plan> plans = {{{1, 504, 3459, 282, 4649, 314}, 0, 10},
                             {{1, 1782, 2114, 253, 655, 28}, 0, 14},
                             {{1, 563, 28}, 1, 9}, {{1, 44, 48, 52}, 0, 12}};
  // and more sequences than one pass takes (kMaxBatchRows): passes of up to 8 rows
  for (int i = 0; i < 7; ++i) plans.push_back({{1, 100 + 37 * i, 2000 + 11 * i}, 0, 6});
  const auto alone = decode_alone(m, plans);
  EXPECT_EQ(alone, decode_batched(m, plans, &alone));
}

TEST(ForwardBatch, AttentionOverSeveralCachesEqualsRowByRow) {
  // The CPU backend's one-region attention over several caches (attention_decode_batch) against
  // the default, each row through attention_forward(_kv16) alone: bit for bit, with rows at
  // different positions, float32 and f16 / bf16 caches in one batch, a key window, ALiBi and a
  // softcap, GQA 9/3.
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t NH = 9, NKV = 3, HS = 64, KVD = NKV * HS, N = 5;
  const std::vector<int64_t> pos = {0, 7, 130, 64, 300};
  const std::vector<ComputeDType> dts = {ComputeDType::F32, ComputeDType::F16, ComputeDType::F32, ComputeDType::BF16,
                                         ComputeDType::F32};
  std::vector<std::vector<float>> kf(N), vf(N);
  std::vector<std::vector<uint16_t>> k16(N), v16(N);
  std::vector<Backend::DecodeRow> rows(N);
  for (int64_t t = 0; t < N; ++t) {
    const size_t n = static_cast<size_t>((pos[t] + 1) * KVD);
    kf[t].resize(n);
    vf[t].resize(n);
    for (auto& x : kf[t]) x = nd(rng);
    for (auto& x : vf[t]) x = nd(rng);
    rows[t].pos = pos[t];
    rows[t].capacity = pos[t] + 1;
    rows[t].dtype = dts[t];
    if (dts[t] == ComputeDType::F32) {
      rows[t].k = kf[t].data();
      rows[t].v = vf[t].data();
    } else {
      k16[t].resize(n);
      v16[t].resize(n);
      convert_from_f32(to_dtype(dts[t]), kf[t].data(), k16[t].data(), n);
      convert_from_f32(to_dtype(dts[t]), vf[t].data(), v16[t].data(), n);
      rows[t].k = k16[t].data();
      rows[t].v = v16[t].data();
    }
  }
  std::vector<float> q(static_cast<size_t>(N * NH * HS));
  for (auto& x : q) x = nd(rng);
  const std::vector<int32_t> starts = {0, 3, 0, 40, 250};
  AlibiBias alibi;
  alibi.slopes = alibi_slopes(NH);
  Backend& be = cpu_backend();
  std::vector<float> scratch(static_cast<size_t>(attention_scratch_floats(1, 301, NH)));
  for (int variant = 0; variant < 3; ++variant) {
    AttentionShape a;
    a.NH = NH;
    a.NKV = NKV;
    a.HS = HS;
    if (variant == 1) a.alibi = &alibi;
    if (variant == 2) a.softcap = 30.0f;
    const int32_t* ks = variant == 0 ? starts.data() : nullptr;
    std::vector<float> want(q.size(), 1.0f), got(q.size(), 2.0f);
    be.Backend::attention_decode_batch(a, rows, ks, want.data(), scratch.data(), q.data());
    be.attention_decode_batch(a, rows, ks, got.data(), scratch.data(), q.data());
    ASSERT_EQ(got, want) << "variant " << variant;
  }
}

TEST(GenerateBatch, ForkedContinuationsReproduceLlama2c) {
  // generate_batch (`qlora generate --parallel`): the same prompt three times runs its prompt
  // pass once (the others fork()ed from it) and decodes the three together, each streaming
  // llama2.c's known greedy text; a different prompt in the same batch runs its own prompt.
  // With sampling, each sequence gives what generate() gives alone with its seed.
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.quantize = false;
  const Model m = Model::load(f.spec, *f.tensors, o);
  const auto enc = f.tokenizer->encode("Once upon a time");
  const std::vector<int> prompt(enc.begin(), enc.end()), other = {1, 403, 407};
  GenerationOptions g;
  g.max_new_tokens = kStoriesNewTokens;
  g.sampling.temperature = 0;
  g.echo_prompt = true;
  std::vector<std::string> streamed(4);
  const BatchGenerationResult b =
      generate_batch(m, f.tokenizer.get(), {prompt, other, prompt, prompt}, {g, g, g, g},
                     [&](size_t i, std::string_view s) { streamed[i] += s; });
  ASSERT_EQ(b.results.size(), 4u);
  for (size_t i : {0, 2, 3}) {
    EXPECT_EQ(streamed[i], kStoriesGreedy) << "sequence " << i;
    EXPECT_EQ(b.results[i].stop, StopReason::Length);
  }
  EXPECT_EQ(b.results[0].prompt_tokens_reused, 0);
  EXPECT_EQ(b.results[1].prompt_tokens_reused, 0);
  EXPECT_EQ(b.results[2].prompt_tokens_reused, 5);  // forked from sequence 0
  EXPECT_EQ(b.results[3].prompt_tokens_reused, 5);
  const GenerationResult alone = generate(m, f.tokenizer.get(), other, g);
  EXPECT_EQ(b.results[1].output_ids, alone.output_ids);
  EXPECT_EQ(b.decode_passes, kStoriesNewTokens - 1);  // every step one pass for all four

  std::vector<GenerationOptions> sampled(3, g);
  for (int i = 0; i < 3; ++i) {
    sampled[i].sampling.temperature = 0.9f;
    sampled[i].sampling.seed = 100 + i;
    sampled[i].echo_prompt = false;
  }
  const BatchGenerationResult s = generate_batch(m, f.tokenizer.get(), {prompt, prompt, prompt}, sampled);
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(s.results[i].text, generate(m, f.tokenizer.get(), prompt, sampled[i]).text) << "seed " << 100 + i;
  EXPECT_NE(s.results[0].text, s.results[1].text);
}

TEST(ForwardBatch, BadInputChangesNoCache) {
  const Model m = load_stories(ComputeDType::F32);
  InferenceState a(m, 8), b(m, 8), work(m, 1);
  std::vector<float> logits(2 * static_cast<size_t>(m.spec().vocab));
  const std::vector<int> p = {1, 50, 60};
  forward(m, a, p, logits.data());
  forward(m, b, p, logits.data());
  std::vector<InferenceState*> seqs = {&a, &b};
  const std::vector<int> bad = {5, 512};  // vocab 512
  EXPECT_THROW(forward_batch(m, work, seqs, bad, logits.data()), Error);
  EXPECT_EQ(a.position(), 3);
  EXPECT_EQ(b.position(), 3);
  std::vector<InferenceState*> twice = {&a, &a};
  const std::vector<int> ok = {5, 6};
  EXPECT_THROW(forward_batch(m, work, twice, ok, logits.data()), Error);
  EXPECT_THROW(forward_batch(m, work, seqs, std::vector<int>{5}, logits.data()), Error);
  EXPECT_EQ(a.position(), 3);
  forward_batch(m, work, seqs, ok, logits.data());
  EXPECT_EQ(a.position(), 4);
  EXPECT_EQ(b.position(), 4);
}
