// Sampling (greedy, temperature, top-k, top-p, repetition penalty, seeds) and the
// stop-string filter of the generation loop.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <span>
#include <vector>

#include "base/error.h"
#include "model/generate.h"
#include "model/sampler.h"

using namespace qlora;

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  Sampler s({0.0f, 0, 1.0f, 1.0f, 1});
  std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(s.sample(l, {}), 1);
  std::vector<float> l2 = {0.5f, 2.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample(l2, {}), 3);
}

TEST(Sampler, RepetitionPenaltyAsTransformers) {
  std::vector<float> l = {2.0f, -2.0f, 1.0f, 0.5f};
  const std::vector<int> ctx = {0, 1, 1, 1};  // counted once per distinct token
  apply_repetition_penalty(l, ctx, 2.0f);
  EXPECT_EQ(l, (std::vector<float>{1.0f, -4.0f, 1.0f, 0.5f}));
  // With the penalty, greedy avoids the repeated token.
  Sampler s({0.0f, 0, 1.0f, 3.0f, 1});
  std::vector<float> l2 = {2.0f, 1.0f};
  const std::vector<int> ctx2 = {0};
  EXPECT_EQ(s.sample(l2, ctx2), 1);
}

TEST(Sampler, SeedsAreReproducibleAndDistributionFollowsSoftmax) {
  const std::vector<float> base = {1.0f, 0.0f, -1.0f, 0.5f, 2.0f};
  auto draw = [&](SamplingParams p, int n) {
    Sampler s(p);
    std::vector<int> out;
    for (int i = 0; i < n; ++i) {
      std::vector<float> l = base;
      out.push_back(s.sample(l, {}));
    }
    return out;
  };
  const auto a = draw({1.0f, 0, 1.0f, 1.0f, 7}, 20000), b = draw({1.0f, 0, 1.0f, 1.0f, 7}, 20000);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, draw({1.0f, 0, 1.0f, 1.0f, 8}, 20000));
  std::map<int, int> counts;
  for (int t : a) ++counts[t];
  double z = 0;
  for (float x : base) z += std::exp(x);
  for (int v = 0; v < 5; ++v) EXPECT_NEAR(counts[v] / 20000.0, std::exp(base[v]) / z, 0.015) << v;
  // Temperature sharpens: at 0.25 the top token dominates.
  std::map<int, int> sharp;
  for (int t : draw({0.25f, 0, 1.0f, 1.0f, 9}, 2000)) ++sharp[t];
  EXPECT_GT(sharp[4], 1900);
}

TEST(Sampler, TopKAndTopPRestrictTheCandidates) {
  const std::vector<float> base = {1.0f, 0.0f, -1.0f, 0.5f, 2.0f};
  auto seen = [&](SamplingParams p) {
    Sampler s(p);
    std::map<int, int> c;
    for (int i = 0; i < 5000; ++i) {
      std::vector<float> l = base;
      ++c[s.sample(l, {})];
    }
    return c;
  };
  auto k2 = seen({1.0f, 2, 1.0f, 1.0f, 1});
  EXPECT_EQ(k2.size(), 2u);
  EXPECT_TRUE(k2.count(4) && k2.count(0));
  auto k1 = seen({5.0f, 1, 1.0f, 1.0f, 1});
  EXPECT_EQ(k1.size(), 1u);
  EXPECT_TRUE(k1.count(4));
  // probs: 4: .563, 0: .207, 3: .126, 1: .076, 2: .028 -> top_p .5 keeps {4}; .6 {4, 0};
  // .8 adds 3 (.770 < .8).
  EXPECT_EQ(seen({1.0f, 0, 0.5f, 1.0f, 1}).size(), 1u);
  auto p6 = seen({1.0f, 0, 0.6f, 1.0f, 1});
  EXPECT_EQ(p6.size(), 2u);
  EXPECT_TRUE(p6.count(4) && p6.count(0));
  auto p8 = seen({1.0f, 0, 0.8f, 1.0f, 1});
  EXPECT_EQ(p8.size(), 3u);
  EXPECT_TRUE(p8.count(3));
  auto tiny = seen({1.0f, 0, 0.01f, 1.0f, 1});
  EXPECT_EQ(tiny.size(), 1u);
}

TEST(Sampler, InvalidParametersNameTheOption) {
  auto err = [](SamplingParams p) {
    try {
      Sampler s(p);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err({-1.0f, 0, 1.0f, 1.0f, 0}).find("--temperature"), std::string::npos);
  EXPECT_NE(err({1.0f, -1, 1.0f, 1.0f, 0}).find("--top-k"), std::string::npos);
  EXPECT_NE(err({1.0f, 0, 0.0f, 1.0f, 0}).find("--top-p"), std::string::npos);
  EXPECT_NE(err({1.0f, 0, 1.5f, 1.0f, 0}).find("--top-p"), std::string::npos);
  EXPECT_NE(err({1.0f, 0, 1.0f, 0.0f, 0}).find("--repetition-penalty"), std::string::npos);
  EXPECT_EQ(err({NAN, 0, 1.0f, 1.0f, 0}).find("--temperature") != std::string::npos, true);
}

TEST(StopStringFilter, HoldsBackPossiblePrefixesAndCutsAtTheStop) {
  StopStringFilter f({"\nUser:", "END"});
  std::string out;
  out += f.push("Hello");
  EXPECT_EQ(out, "Hello");
  out += f.push(" there\nUs");  // "\nUs" may start "\nUser:"
  EXPECT_EQ(out, "Hello there");
  out += f.push("ually");  // it did not
  EXPECT_EQ(out, "Hello there\nUsually");
  out += f.push(" E");
  out += f.push("NDING");
  EXPECT_TRUE(f.stopped());
  EXPECT_EQ(out, "Hello there\nUsually ");
  EXPECT_EQ(f.push("more"), "");
  EXPECT_EQ(f.flush(), "");

  StopStringFilter g({"abc"});
  EXPECT_EQ(g.push("xxab"), "xx");
  EXPECT_EQ(g.flush(), "ab");  // the end of generation releases what was held
  StopStringFilter none({});
  EXPECT_EQ(none.push("abc"), "abc");
  StopStringFilter whole({"stop"});
  EXPECT_EQ(whole.push("stop now"), "");
  EXPECT_TRUE(whole.stopped());
}

TEST(Sampler, ArgmaxIsTheFirstLargestAndNaNNeverWins) {
  // The definition greedy decoding has always used: scan, keep the first strictly larger.
  auto reference = [](std::span<const float> l) {
    int best = 0;
    for (size_t i = 1; i < l.size(); ++i)
      if (l[i] > l[static_cast<size_t>(best)]) best = static_cast<int>(i);
    return best;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::vector<float>> cases = {
      {1.0f},           {2.0f, 5.0f, 5.0f, 1.0f},    {-0.0f, 0.0f},       {-1.0f, -0.0f, 0.0f},
      {nan, 3.0f, 4.0f}, {1.0f, nan, 4.0f, nan, 4.0f}, {-5.0f, -2.0f, -2.0f}, {3.0f, 3.0f, 3.0f}};
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-3, 3);
  for (int k = 0; k < 200; ++k) {  // many ties, a NaN now and then, odd lengths
    std::vector<float> v(1 + static_cast<size_t>(k) * 7);
    for (float& x : v) x = static_cast<float>(small(rng));
    if (k % 5 == 0) v[static_cast<size_t>(k) % v.size()] = nan;
    cases.push_back(v);
  }
  for (const auto& c : cases) EXPECT_EQ(argmax(c), reference(c)) << c.size();
}
