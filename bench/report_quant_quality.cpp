// How much 4-bit and 8-bit quantization change what a real model predicts: KL divergence and
// top-1 agreement of the NF4, NF4 + double quant, FP4 and LLM.int8 models' next-token distributions
// against the full-precision model (dense weights, fp32 compute), position by position on
// a fixed text, plus the perplexity of that text under each model.
//
//   build/report_quant_quality [--smollm PATH.gguf] [--stories PATH.bin]
//                              [--smollm-tokens N] [--window W] [--blocksize B] [--only TEXT]
//
// --only TEXT runs just the variants whose label contains TEXT (the reference always runs).
// The "decoded token by token" variants feed each window one token at a time through the
// KV cache, as generation does (the others run each window as one prompt); with
// --int8-activations' path they measure what its 8-bit activations cost.
//
// SmolLM2: the first N (default 2048) tokens of tinyshakespeare.txt, cut into windows of
// W (default 512) tokens, each evaluated from an empty KV cache. stories260K: the six
// TinyStories-style stories written below (in-distribution for a model trained on
// TinyStories), each one a window of its own, preceded by BOS as in training.
//
// Per variant, over every position of every window (each position is a next-token
// distribution): mean KL(P_ref || P_q) in nats, its 99th percentile (nearest rank), top-1
// agreement (argmax equal), and perplexity of the text (next-token NLL over positions
// that have a next token in their window).
//
// The reference logits are computed once and kept as log-probabilities (positions x
// vocab floats); the variants are then loaded one at a time, so at most one model is in
// memory besides the reference.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "model/model.h"
#include "quant/codebook.h"

using namespace qlora;

#ifndef QLORA_DEFAULT_DATA_DIR
#define QLORA_DEFAULT_DATA_DIR "../shared/data"
#endif
#ifndef QLORA_SOURCE_DIR
#define QLORA_SOURCE_DIR "."
#endif

namespace {

using Clock = std::chrono::steady_clock;

// TinyStories-style text (written for this report; not from the data set). Each story is
// evaluated as its own sequence: BOS + story.
const char* const kStories[] = {
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her red ball. One day, the sun was hot and the sky was blue. Lily threw the ball "
    "very high and it went into a big tree. Lily was sad. She could not reach the ball. Then a "
    "kind boy named Tom came to the park. He saw Lily and asked, \"Why are you sad?\" Lily said, "
    "\"My ball is in the tree.\" Tom was tall and strong. He jumped up and got the ball down. "
    "Lily smiled and said, \"Thank you, Tom!\" They played with the ball together all day. "
    "From that day on, Lily and Tom were best friends.",

    "Once upon a time, in a small house near the woods, there lived a fluffy cat named Max. Max "
    "liked to sleep in the warm sun by the window. One morning, Max heard a funny noise outside. "
    "He went to the door and saw a little bird on the ground. The bird could not fly. Max wanted "
    "to help. He sat next to the bird and was very quiet. Soon the mom of the little girl who lived "
    "in the house came out. She saw the bird and the cat. She picked up the bird and gave it some "
    "water. The next day, the bird was happy and strong again. It flew up into the sky and sang a "
    "song. Max watched it fly away and purred. He was glad he helped.",

    "Once upon a time, there was a boy named Ben. Ben had a big box of toys. He had cars, blocks and "
    "a small red truck. One day, his friend Sue came to play. Sue wanted to play with the red truck. "
    "Ben did not want to share. He said, \"No, it is mine!\" Sue was sad and started to cry. Ben's mom "
    "saw them. She said, \"Ben, it is good to share with your friends.\" Ben thought about it. He did "
    "not like to see Sue cry. He gave her the red truck and said, \"Sorry, Sue. We can play together.\" "
    "Sue smiled and they built a big road with the blocks. The cars and the truck drove on the road. "
    "They had so much fun. Ben learned that sharing makes everyone happy.",

    "One day, a little dog named Spot went for a walk with his mom. They walked to the big lake. The "
    "water was cold and shiny. Spot saw a duck swimming in the lake. He wanted to play with the duck. "
    "Spot ran to the water and jumped in. Splash! The water was very cold. The duck swam away fast. "
    "Spot's mom barked and said, \"Spot, come back!\" Spot swam back to his mom. He was wet and cold. "
    "His mom licked his head and they sat in the sun. Soon Spot was warm and dry. He looked at the duck "
    "and wagged his tail. Spot learned to be careful near the water. Then they walked home together, "
    "happy and tired.",

    "Once upon a time, there was a big tree in a green park. In the tree lived a small squirrel named "
    "Sam. Sam loved to find nuts. Every day he ran up and down the tree to look for food. One day, it "
    "started to rain. The rain was loud and the wind was strong. Sam was scared. He hid in a little "
    "hole in the tree. Then he heard a soft voice. It was an old owl. The owl said, \"Do not be afraid, "
    "Sam. The rain will stop soon.\" Sam sat with the owl and they talked. Soon the rain stopped and the "
    "sun came out. There was a pretty rainbow in the sky. Sam and the owl looked at it together. Sam was "
    "not scared anymore.",

    "Once upon a time, there was a little girl named Mia. Mia wanted to bake a cake for her mom. She "
    "got a big bowl, some flour, eggs and milk. She mixed everything with a spoon. The kitchen was a "
    "big mess, but Mia did not mind. Her dad helped her put the cake in the oven. They waited and "
    "waited. The cake smelled very good. When it was ready, Mia put pink frosting on top. When her mom "
    "came home, Mia said, \"Surprise! I made you a cake!\" Her mom was so happy. She gave Mia a big hug "
    "and said, \"Thank you, Mia. This is the best cake ever!\" They ate the cake together and laughed.",
};

struct Variant {
  const char* label;
  bool quantize;
  QuantType type;
  bool dq;
  ComputeDType dtype;
  bool int8 = false;           // LLM.int8 (then type/dq are unused)
  float int8_threshold = 6.0f;  // its outlier threshold (0: every column int8)
  bool decode = false;          // one token at a time through the KV cache
  bool int8_activations = false;  // ModelLoadOptions::int8_activations (decode only)
};

struct Stats {
  double kl_mean = 0, kl_p99 = 0, kl_max = 0, top1 = 0, ppl = 0, mib = 0, seconds = 0;
  int64_t positions = 0;
};

// In-place log-softmax of one row; returns the argmax.
int log_softmax(float* x, int64_t V) {
  int arg = 0;
  float m = x[0];
  for (int64_t i = 1; i < V; ++i)
    if (x[i] > m) m = x[i], arg = static_cast<int>(i);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(static_cast<double>(x[i] - m));
  const float lse = m + static_cast<float>(std::log(s));
  for (int64_t i = 0; i < V; ++i) x[i] -= lse;
  return arg;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Corpus {
  std::vector<std::vector<int>> windows;  // each evaluated from position 0
  int64_t positions() const {
    int64_t n = 0;
    for (const auto& w : windows) n += static_cast<int64_t>(w.size());
    return n;
  }
};

void report_model(const std::string& title, const std::string& path, const Corpus& corpus, ModelFiles& files,
                  int blocksize, const std::string& only) {
  const ModelSpec& spec = files.spec;
  const int64_t V = spec.vocab;
  const int64_t P = corpus.positions();
  int64_t maxT = 0;
  for (const auto& w : corpus.windows) maxT = std::max<int64_t>(maxT, static_cast<int64_t>(w.size()));
  std::fprintf(stderr, "%s: %s, %zu windows, %lld positions\n", path.c_str(), spec.summary().c_str(),
               corpus.windows.size(), static_cast<long long>(P));

  // Runs every window through `model`, calling row(position index, window, t, logits row).
  // decode: one token per forward, as generation runs.
  auto run_all = [&](const Model& model, auto&& row, bool decode = false) {
    std::vector<float> logits(static_cast<size_t>(maxT * V));
    int64_t p = 0;
    for (const auto& w : corpus.windows) {
      InferenceState st(spec, static_cast<int64_t>(w.size()));
      if (decode) {
        for (size_t t = 0; t < w.size(); ++t) {
          forward(model, st, std::span<const int>(w).subspan(t, 1), logits.data());
          row(p++, w, t, logits.data());
        }
        continue;
      }
      forward(model, st, std::span<const int>(w), logits.data(), /*all_logits=*/true);
      for (size_t t = 0; t < w.size(); ++t) row(p++, w, t, logits.data() + static_cast<int64_t>(t) * V);
    }
  };

  auto load = [&](const Variant& v) {
    ModelLoadOptions o;
    o.compute_dtype = v.dtype;
    o.quant.quantize = v.quantize;
    o.quant.type = v.type;
    o.quant.blocksize = blocksize;
    o.quant.double_quant = v.dq;
    o.quant.int8 = v.int8;
    o.quant.int8_threshold = v.int8_threshold;
    o.int8_activations = v.int8_activations;
    return Model::load(spec, *files.tensors, o);
  };

  // Reference: dense weights, fp32 compute. Keep log-probabilities and argmax.
  const Variant ref{"full precision (dense, fp32)", false, QuantType::NF4, false, ComputeDType::F32};
  std::vector<float> ref_lp(static_cast<size_t>(P * V));
  std::vector<int> ref_arg(static_cast<size_t>(P));
  Stats ref_stats;
  {
    const auto t0 = Clock::now();
    const Model model = load(ref);
    ref_stats.mib = static_cast<double>(model.weight_bytes()) / (1024.0 * 1024.0);
    double nll = 0;
    int64_t n_nll = 0;
    run_all(model, [&](int64_t p, const std::vector<int>& w, size_t t, float* row) {
      ref_arg[static_cast<size_t>(p)] = log_softmax(row, V);
      std::memcpy(ref_lp.data() + p * V, row, static_cast<size_t>(V) * sizeof(float));
      if (t + 1 < w.size()) nll -= row[w[t + 1]], ++n_nll;
    });
    ref_stats.ppl = std::exp(nll / static_cast<double>(n_nll));
    ref_stats.top1 = 100.0;
    ref_stats.positions = P;
    ref_stats.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    std::fprintf(stderr, "  %-32s ppl %.4f (%.1f s)\n", ref.label, ref_stats.ppl, ref_stats.seconds);
  }

  const Variant variants[] = {
      {"NF4", true, QuantType::NF4, false, ComputeDType::F32},
      {"NF4 + double quant", true, QuantType::NF4, true, ComputeDType::F32},
      {"FP4", true, QuantType::FP4, false, ComputeDType::F32},
      {"NF4 + double quant, bf16 compute", true, QuantType::NF4, true, ComputeDType::BF16},
      {"dense, bf16 compute (no 4-bit)", false, QuantType::NF4, false, ComputeDType::BF16},
      {"int8 (LLM.int8, threshold 6)", true, QuantType::NF4, false, ComputeDType::F32, true, 6.0f},
      {"int8, no outlier decomposition (threshold 0)", true, QuantType::NF4, false, ComputeDType::F32, true, 0.0f},
      {"int8 (threshold 6), bf16 compute", true, QuantType::NF4, false, ComputeDType::BF16, true, 6.0f},
      {"NF4 + double quant, decoded token by token", true, QuantType::NF4, true, ComputeDType::F32, false, 6.0f,
       true, false},
      {"NF4 + double quant, decoded on int8 activations (--int8-activations)", true, QuantType::NF4, true,
       ComputeDType::F32, false, 6.0f, true, true},
  };
  std::vector<Stats> stats;
  std::vector<const Variant*> ran;
  for (const Variant& v : variants) {
    if (!only.empty() && std::string(v.label).find(only) == std::string::npos) continue;
    ran.push_back(&v);
    const auto t0 = Clock::now();
    const Model model = load(v);
    Stats s;
    s.mib = static_cast<double>(model.weight_bytes()) / (1024.0 * 1024.0);
    std::vector<double> kls(static_cast<size_t>(P));
    double nll = 0;
    int64_t n_nll = 0, agree = 0;
    run_all(model, [&](int64_t p, const std::vector<int>& w, size_t t, float* row) {
      const int arg = log_softmax(row, V);
      const float* lp = ref_lp.data() + p * V;
      double kl = 0;
      for (int64_t i = 0; i < V; ++i) kl += std::exp(static_cast<double>(lp[i])) * static_cast<double>(lp[i] - row[i]);
      kls[static_cast<size_t>(p)] = std::max(0.0, kl);  // rounding can leave a tiny negative
      agree += arg == ref_arg[static_cast<size_t>(p)];
      if (t + 1 < w.size()) nll -= row[w[t + 1]], ++n_nll;
    }, v.decode);
    double sum = 0;
    for (double k : kls) sum += k;
    s.kl_mean = sum / static_cast<double>(P);
    std::sort(kls.begin(), kls.end());
    // Nearest rank: the smallest value with at least 99% of the positions at or below it.
    const size_t r99 = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(P))) - 1;
    s.kl_p99 = kls[r99];
    s.kl_max = kls.back();
    s.top1 = 100.0 * static_cast<double>(agree) / static_cast<double>(P);
    s.ppl = std::exp(nll / static_cast<double>(n_nll));
    s.positions = P;
    s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    std::fprintf(stderr, "  %-32s KL %.5f  p99 %.5f  top1 %.2f%%  ppl %.4f (%.1f s)\n", v.label, s.kl_mean,
                 s.kl_p99, s.top1, s.ppl, s.seconds);
    stats.push_back(s);
  }

  std::printf("\n%s\n", title.c_str());
  std::printf("| variant | weights MiB | mean KL (nats) | p99 KL (nats) | max KL (nats) | top-1 agreement | perplexity |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::printf("| %s | %.2f | 0 | 0 | 0 | 100.00%% | %.4f |\n", ref.label, ref_stats.mib, ref_stats.ppl);
  for (size_t i = 0; i < stats.size(); ++i) {
    const Stats& s = stats[i];
    std::printf("| %s | %.2f | %.5f | %.5f | %.5f | %.2f%% | %.4f |\n", ran[i]->label, s.mib, s.kl_mean, s.kl_p99,
                s.kl_max, s.top1, s.ppl);
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_dir = QLORA_DEFAULT_DATA_DIR;
  if (const char* d = std::getenv("QLORA_DATA_DIR")) data_dir = d;
  std::string smollm = std::string(QLORA_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string stories = data_dir + "/stories260K/stories260K.bin";
  std::string text_path = data_dir + "/text/tinyshakespeare.txt";
  int64_t smol_tokens = 2048, window = 512;
  int blocksize = 64;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--smollm") smollm = next();
    else if (a == "--stories") stories = next();
    else if (a == "--text") text_path = next();
    else if (a == "--smollm-tokens") smol_tokens = std::stoll(next());
    else if (a == "--window") window = std::stoll(next());
    else if (a == "--blocksize") blocksize = std::stoi(next());
    else if (a == "--only") only = next();
    else {
      std::fprintf(stderr,
                   "usage: %s [--smollm PATH] [--stories PATH] [--text PATH] [--smollm-tokens N] [--window W] "
                   "[--blocksize B] [--only TEXT]\n",
                   argv[0]);
      return 2;
    }
  }

  try {
    std::fprintf(stderr, "threads: %d\n", max_threads());
    if (!smollm.empty() && smollm != "-") {
      ModelFiles files = open_model_files(smollm);
      check(files.tokenizer != nullptr, smollm, "no tokenizer");
      // Enough characters for the token budget (Shakespeare runs ~3-4 characters/token).
      std::string text = read_file(text_path);
      text.resize(std::min<size_t>(text.size(), static_cast<size_t>(smol_tokens) * 8 + 1024));
      const std::vector<int32_t> prefix = files.tokenizer->spec().prefix_ids;
      const std::vector<int32_t> ids = files.tokenizer->encode(text, {.add_special_tokens = false});
      check(static_cast<int64_t>(ids.size()) >= smol_tokens, text_path, "too short for --smollm-tokens");
      const int64_t w = std::min<int64_t>(window, files.spec.max_positions);
      const int64_t per = w - static_cast<int64_t>(prefix.size());
      Corpus c;
      for (int64_t s = 0; s < smol_tokens; s += per) {
        std::vector<int> win(prefix.begin(), prefix.end());
        const int64_t e = std::min<int64_t>(smol_tokens, s + per);
        win.insert(win.end(), ids.begin() + s, ids.begin() + e);
        c.windows.push_back(std::move(win));
      }
      const std::string title = "SmolLM2-135M-Instruct (" + smollm.substr(smollm.find_last_of('/') + 1) +
                                "): first " + std::to_string(smol_tokens) + " tokens of tinyshakespeare.txt, " +
                                std::to_string(c.windows.size()) + " windows of " + std::to_string(w) +
                                ", blocksize " + std::to_string(blocksize) + ", " + std::to_string(c.positions()) +
                                " positions";
      report_model(title, smollm, c, files, blocksize, only);
    }
    if (!stories.empty() && stories != "-") {
      ModelFiles files = open_model_files(stories);
      check(files.tokenizer != nullptr, stories, "no tokenizer");
      Corpus c;
      for (const char* story : kStories) {
        std::vector<int32_t> ids = files.tokenizer->encode(story);  // BOS + story
        if (static_cast<int64_t>(ids.size()) > files.spec.max_positions) ids.resize(files.spec.max_positions);
        c.windows.emplace_back(ids.begin(), ids.end());
      }
      const std::string title = "stories260K: " + std::to_string(c.windows.size()) +
                                " TinyStories-style stories written for this report (one window each, BOS + story), "
                                "blocksize " +
                                std::to_string(blocksize) + ", " + std::to_string(c.positions()) + " positions";
      report_model(title, stories, c, files, blocksize, only);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
