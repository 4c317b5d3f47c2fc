// `random:` models (model/random_spec.h, model/random_model.h, formats/byte_tokenizer.h):
// parsing presets and explicit shapes and the errors a user sees, the generated weights
// (shapes, determinism, valid 4-bit bytes with the intended statistics, equal to quantizing
// the same tensor whole, double quantization), that building never holds a float32 copy
// of a Linear, the byte tokenizer, and the memory planner's view of a random model.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/process_memory.h"
#include "formats/byte_tokenizer.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "memory/memory_plan.h"
#include "model/model.h"
#include "model/random_model.h"
#include "model/random_spec.h"
#include "quant/quant_state.h"

using namespace qlora;

namespace {

const char* kTiny = "random:hidden=64,layers=2,ffn=128,heads=4,kv_heads=2,vocab=300";

// The message of the Error `fn` throws ("" and a test failure when it does not throw).
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

std::vector<float> dequantized(const QuantLinear& l) {
  std::vector<float> w(static_cast<size_t>(l.out_features() * l.in_features()));
  l.dequantize_rows(0, l.out_features(), w.data());
  return w;
}

ModelLoadOptions nf4(bool dq = false, int blocksize = 64) {
  ModelLoadOptions o;
  o.quant.type = QuantType::NF4;
  o.quant.blocksize = blocksize;
  o.quant.double_quant = dq;
  return o;
}

Model load_random(const std::string& model, const ModelLoadOptions& opt) {
  const RandomModelSpec r = parse_random_model(model);
  RandomTensorSource src(r.spec, r.seed, r.canonical);
  return Model::load(r.spec, src, opt);
}

// VmHWM (peak resident set) of this process, from /proc/self/status; -1 when unknown.
int64_t vm_hwm_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

}  // namespace

// ---- parsing ---------------------------------------------------------------------------

TEST(RandomModelSpec, PresetsHaveTheReleasedShapes) {
  struct Want {
    const char* name;
    int64_t hidden, layers, ffn, heads, kv, vocab;
    bool tied;
  };
  const Want want[] = {{"smollm2-135m", 576, 30, 1536, 9, 3, 49152, true},
                       {"tinyllama-1.1b", 2048, 22, 5632, 32, 4, 32000, false},
                       {"llama-7b", 4096, 32, 11008, 32, 32, 32000, false},
                       {"llama-13b", 5120, 40, 13824, 40, 40, 32000, false},
                       {"llama-33b", 6656, 60, 17920, 52, 52, 32000, false},
                       {"llama-65b", 8192, 80, 22016, 64, 64, 32000, false},
                       {"llama3-8b", 4096, 32, 14336, 32, 8, 128256, false}};
  ASSERT_EQ(random_model_presets().size(), std::size(want));
  for (const Want& w : want) {
    const RandomModelSpec r = parse_random_model(std::string("random:") + w.name);
    const ModelSpec& s = r.spec;
    EXPECT_EQ(s.hidden, w.hidden) << w.name;
    EXPECT_EQ(s.n_layers, w.layers) << w.name;
    EXPECT_EQ(s.ffn, w.ffn) << w.name;
    EXPECT_EQ(s.n_heads, w.heads) << w.name;
    EXPECT_EQ(s.n_kv_heads, w.kv) << w.name;
    EXPECT_EQ(s.vocab, w.vocab) << w.name;
    EXPECT_EQ(s.tied_embeddings, w.tied) << w.name;
    EXPECT_EQ(s.head_dim * s.n_heads, s.hidden) << w.name;
    EXPECT_EQ(r.seed, 0u);
    EXPECT_EQ(r.preset, w.name);
    EXPECT_EQ(r.canonical, std::string("random:") + w.name);
  }
  EXPECT_EQ(parse_random_model("random:llama3-8b").spec.rope_theta, 500000.0f);
  // The parameter counts people know these models by.
  EXPECT_NEAR(static_cast<double>(parse_random_model("random:llama-7b").spec.num_params()), 6.74e9, 0.01e9);
  EXPECT_NEAR(static_cast<double>(parse_random_model("random:llama-65b").spec.num_params()), 65.29e9, 0.01e9);
  EXPECT_NEAR(static_cast<double>(parse_random_model("random:smollm2-135m").spec.num_params()), 134.5e6, 0.1e6);
}

TEST(RandomModelSpec, ExplicitShapeAndOverrides) {
  const RandomModelSpec r =
      parse_random_model("random:hidden=64, layers=2,ffn=128,heads=4,kv_heads=2,vocab=300,tied=1,seed=7,max_pos=512");
  EXPECT_EQ(r.spec.hidden, 64);
  EXPECT_EQ(r.spec.n_layers, 2);
  EXPECT_EQ(r.spec.ffn, 128);
  EXPECT_EQ(r.spec.n_heads, 4);
  EXPECT_EQ(r.spec.n_kv_heads, 2);
  EXPECT_EQ(r.spec.head_dim, 16);
  EXPECT_EQ(r.spec.vocab, 300);
  EXPECT_EQ(r.spec.max_positions, 512);
  EXPECT_TRUE(r.spec.tied_embeddings);
  EXPECT_EQ(r.seed, 7u);
  EXPECT_EQ(r.preset, "");
  EXPECT_EQ(r.canonical, "random:hidden=64,layers=2,ffn=128,heads=4,kv_heads=2,vocab=300,tied=1,max_pos=512,seed=7");
  // The canonical form parses back to itself.
  EXPECT_EQ(parse_random_model(r.canonical).canonical, r.canonical);
  // kv_heads defaults to heads, as a config.json without num_key_value_heads.
  EXPECT_EQ(parse_random_model("random:hidden=64,layers=1,ffn=96,heads=8,vocab=300").spec.n_kv_heads, 8);

  const RandomModelSpec o = parse_random_model("random:llama-65b,layers=2,seed=3");
  EXPECT_EQ(o.spec.n_layers, 2);
  EXPECT_EQ(o.spec.hidden, 8192);
  EXPECT_EQ(o.canonical, "random:llama-65b,layers=2,seed=3");
  const std::string notice = random_model_notice(o);
  EXPECT_HAS(notice, "random weights (llama-65b,layers=2 shape, seed 3)");
  EXPECT_HAS(notice, "NOT a trained model");
  EXPECT_EQ(random_model_notice(parse_random_model("random:llama-7b")),
            "random weights (llama-7b shape, seed 0): NOT a trained model \u2014 for speed and memory measurements "
            "only");
  EXPECT_TRUE(is_random_model("random:x"));
  EXPECT_FALSE(is_random_model("models/random.gguf"));
}

TEST(RandomModelSpec, BadInputIsNamed) {
  std::string e = error_of([] { parse_random_model("random:llama-8b"); });
  EXPECT_HAS(e, "random:llama-8b");
  EXPECT_HAS(e, "unknown preset 'llama-8b'");
  for (const std::string& p : random_model_presets()) EXPECT_HAS(e, p);

  e = error_of([] { parse_random_model("random:hidden=64,layers=2,ffn=128,heads=4,vocab=300,dim=3"); });
  EXPECT_HAS(e, "unknown key 'dim'");
  EXPECT_HAS(e, "valid keys: hidden, layers, ffn, heads, kv_heads");

  e = error_of([] { parse_random_model("random:hidden=sixty,layers=2,ffn=128,heads=4,vocab=300"); });
  EXPECT_HAS(e, "key 'hidden': 'sixty' is not a positive integer");
  e = error_of([] { parse_random_model("random:hidden=0,layers=2,ffn=128,heads=4,vocab=300"); });
  EXPECT_HAS(e, "key 'hidden': '0' is not a positive integer");
  e = error_of([] { parse_random_model("random:llama-7b,seed=-1"); });
  EXPECT_HAS(e, "key 'seed'");
  e = error_of([] { parse_random_model("random:llama-7b,tied=maybe"); });
  EXPECT_HAS(e, "key 'tied'");
  e = error_of([] { parse_random_model("random:llama-7b,rope_theta=abc"); });
  EXPECT_HAS(e, "key 'rope_theta'");

  e = error_of([] { parse_random_model("random:hidden=64,layers=2,heads=4,vocab=300"); });
  EXPECT_HAS(e, "missing 'ffn'");
  e = error_of([] { parse_random_model("random:llama-7b,layers=2,layers=3"); });
  EXPECT_HAS(e, "'layers' is given twice");
  e = error_of([] { parse_random_model("random:"); });
  EXPECT_HAS(e, "names no shape");
  e = error_of([] { parse_random_model("random:llama-7b,"); });
  EXPECT_HAS(e, "empty item");
  e = error_of([] { parse_random_model("random:hidden=64,llama-7b"); });
  EXPECT_HAS(e, "'llama-7b' is not key=value");
  // Inconsistent numbers: named by the model string, as ModelSpec::validate words them.
  e = error_of([] { parse_random_model("random:hidden=64,layers=2,ffn=128,heads=5,vocab=300"); });
  EXPECT_HAS(e, "not a multiple of heads 5");
  e = error_of([] { parse_random_model("random:hidden=64,layers=2,ffn=128,heads=4,kv_heads=3,vocab=300"); });
  EXPECT_HAS(e, "is not a multiple of the number of key/value heads");
}

TEST(RandomModelSpec, VocabTooSmallForTheByteTokenizer) {
  const std::string e = error_of([] { open_model_files("random:hidden=64,layers=1,ffn=128,heads=4,vocab=200"); });
  EXPECT_HAS(e, "vocab 200 is too small for the built-in byte tokenizer");
  EXPECT_HAS(e, "259");
  EXPECT_HAS(e, "--tokenizer");
}

// ---- opening: the byte tokenizer and nothing generated ---------------------------------

TEST(RandomModel, OpensWithTheByteTokenizer) {
  const ModelFiles f = open_model_files(kTiny);
  EXPECT_EQ(f.format, ModelFormat::Random);
  EXPECT_EQ(f.path, kTiny);
  EXPECT_HAS(f.notice, "NOT a trained model");
  ASSERT_TRUE(f.tokenizer);
  const Tokenizer& tok = *f.tokenizer;
  EXPECT_EQ(tok.vocab_size(), 300);
  const std::string text = "h\xC3\xA9llo <s>\n";
  const std::vector<int32_t> ids = tok.encode(text, {.add_special_tokens = true, .parse_special = false});
  // BOS, then one id per UTF-8 byte (3 + byte).
  ASSERT_EQ(ids.size(), 1 + text.size());
  EXPECT_EQ(ids[0], 1);
  for (size_t i = 0; i < text.size(); ++i) EXPECT_EQ(ids[i + 1], 3 + static_cast<uint8_t>(text[i]));
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(f.spec.bos_id, 1);
  EXPECT_EQ(f.spec.eos_ids, std::vector<int>{2});
  // Ids past the bytes (a model can sample them) decode as what they are.
  EXPECT_EQ(tok.decode(std::vector<int32_t>{299}), "<extra_299>");
  EXPECT_FALSE(tok.chat_template().empty());
}

// ---- generated weights -----------------------------------------------------------------

TEST(RandomModel, WeightsHaveTheShapesAndAreDeterministic) {
  const std::string m = "random:hidden=128,layers=2,ffn=320,heads=4,kv_heads=2,vocab=300";
  const Model a = load_random(m, nf4());
  const Model b = load_random(m, nf4());
  const Model c = load_random(m + ",seed=1", nf4());
  const ModelSpec& s = a.spec();
  ASSERT_EQ(a.layers().size(), 2u);
  EXPECT_EQ(a.embed_tokens().rows(), 300);
  EXPECT_EQ(a.embed_tokens().cols(), 128);
  EXPECT_EQ(a.lm_head().rows(), 300);
  const auto lin = s.block_linears();
  for (int64_t l = 0; l < 2; ++l)
    for (int w = 0; w < kAttentionLinears; ++w) {  // (a random model has no DeltaNet layers)
      const QuantLinear& qa = a.block_linear(l, w);
      ASSERT_NE(qa.q4(), nullptr);
      EXPECT_EQ(qa.out_features(), lin[w].out);
      EXPECT_EQ(qa.in_features(), lin[w].in);
      EXPECT_EQ(qa.q4()->state.type, QuantType::NF4);
      EXPECT_EQ(qa.q4()->state.blocksize, 64);
      EXPECT_EQ(qa.q4()->packed, b.block_linear(l, w).q4()->packed) << "same seed, same bytes";
      EXPECT_EQ(qa.q4()->state.absmax, b.block_linear(l, w).q4()->state.absmax);
      EXPECT_NE(qa.q4()->packed, c.block_linear(l, w).q4()->packed) << "another seed, other weights";
    }
  // Distinct tensors of one model are distinct streams.
  EXPECT_NE(a.block_linear(0, 4).q4()->packed, a.block_linear(0, 5).q4()->packed);
  EXPECT_NE(a.block_linear(0, 4).q4()->packed, a.block_linear(1, 4).q4()->packed);
  for (float v : a.layers()[0].input_norm) EXPECT_EQ(v, 1.0f);
  for (float v : a.final_norm()) EXPECT_EQ(v, 1.0f);
  // A shallower model of the same shape has the same first layer.
  const Model one = load_random("random:hidden=128,layers=1,ffn=320,heads=4,kv_heads=2,vocab=300", nf4());
  EXPECT_EQ(one.block_linear(0, 6).q4()->packed, a.block_linear(0, 6).q4()->packed);
}

TEST(RandomModel, FourBitBytesAreValidWithTheTargetStatistics) {
  const Model m = load_random("random:hidden=256,layers=1,ffn=1024,heads=4,vocab=300", nf4());
  for (int w : {0, 4, 6}) {  // q (in 256), gate (in 256), down (in 1024)
    const QuantLinear& l = m.block_linear(0, w);
    const std::vector<float> x = dequantized(l);
    double sum = 0, sq = 0;
    for (float v : x) {
      ASSERT_TRUE(std::isfinite(v));
      sum += v;
      sq += static_cast<double>(v) * v;
    }
    const double n = static_cast<double>(x.size());
    const double mean = sum / n, std = std::sqrt(sq / n - mean * mean);
    const double target = random_linear_std(l.in_features());
    EXPECT_NEAR(mean, 0.0, 0.02 * target) << "linear " << w;
    // NF4 rounding moves the std by a few percent at most.
    EXPECT_NEAR(std / target, 1.0, 0.05) << "linear " << w;
    // All 16 codes occur, the ones near zero most (a quantized normal, not uniform codes).
    std::vector<int64_t> count(16, 0);
    for (uint8_t b : l.q4()->packed) {
      ++count[b >> 4];
      ++count[b & 15];
    }
    for (int c = 0; c < 16; ++c) EXPECT_GT(count[c], 0) << "code " << c;
    EXPECT_GT(count[7] + count[8], 3 * (count[0] + count[15]));
  }
  // Embeddings: normal of std 0.02.
  std::vector<float> e(static_cast<size_t>(300 * 256));
  m.embed_tokens().rows_to_f32(0, 300, e.data());
  double sq = 0;
  for (float v : e) sq += static_cast<double>(v) * v;
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(e.size())), kRandomEmbeddingStd, 0.001);
}

TEST(RandomModel, SameBytesAsQuantizingTheWholeTensor) {
  const RandomModelSpec r = parse_random_model("random:hidden=96,layers=1,ffn=200,heads=3,vocab=300,seed=5");
  RandomTensorSource src(r.spec, r.seed, r.canonical);
  struct Case {
    QuantType type;
    int blocksize;
    bool dq;
  };
  // down_proj has 96 x 200 = 19200 elements: chunks of 4096 and a partial last one; with
  // blocksize 4096 the last block is partial too.
  for (const Case& c : {Case{QuantType::NF4, 64, false}, Case{QuantType::FP4, 128, true},
                        Case{QuantType::NF4, 4096, true}, Case{QuantType::NF4, 32, true}}) {
    for (const char* name : {"model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.k_proj.weight"}) {
      const std::vector<int64_t> shape = src.shape(name);
      const auto gen = src.generate_4bit(name, c.type, c.blocksize, c.dq, ComputeDType::F32);
      ASSERT_TRUE(gen.has_value());
      const std::vector<float> whole = src.get(name);
      const Quantized4bit ref = quantize_tensor_4bit(whole.data(), shape, c.type, c.blocksize, c.dq, ComputeDType::F32);
      EXPECT_EQ(gen->state.shape, shape);
      EXPECT_EQ(gen->packed, ref.packed) << name << " bs " << c.blocksize;
      EXPECT_EQ(gen->state.absmax, ref.state.absmax);
      EXPECT_EQ(gen->state.nested, c.dq);
      EXPECT_EQ(gen->state.absmax_q, ref.state.absmax_q);
      EXPECT_EQ(gen->state.nested_absmax, ref.state.nested_absmax);
      EXPECT_EQ(gen->state.offset, ref.state.offset);
    }
  }
  // Embeddings and norms are not generated in 4-bit (the loader keeps them dense).
  EXPECT_FALSE(src.generate_4bit("model.embed_tokens.weight", QuantType::NF4, 64, false, ComputeDType::F32));
  EXPECT_FALSE(src.generate_4bit("model.norm.weight", QuantType::NF4, 64, false, ComputeDType::F32));
}

TEST(RandomModel, DoubleQuantAndThreadCountsGiveTheSameWeights) {
  const std::string m = "random:hidden=128,layers=1,ffn=512,heads=4,vocab=300";
  const Model plain = load_random(m, nf4(false));
  const Model dq = load_random(m, nf4(true));
  const QuantLinear& a = plain.block_linear(0, 6);
  const QuantLinear& b = dq.block_linear(0, 6);
  ASSERT_TRUE(b.q4()->state.nested);
  EXPECT_EQ(a.q4()->packed, b.q4()->packed) << "double quantization changes only the absmax";
  const std::vector<float> xa = dequantized(a), xb = dequantized(b);
  double err = 0, ref = 0;
  for (size_t i = 0; i < xa.size(); ++i) {
    ASSERT_TRUE(std::isfinite(xb[i]));
    err += std::fabs(xa[i] - xb[i]);
    ref += std::fabs(xa[i]);
  }
  EXPECT_LT(err / ref, 0.01);

  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const Model single = load_random(m, nf4(true));
  omp_set_num_threads(threads);
  for (int w = 0; w < kAttentionLinears; ++w)
    EXPECT_EQ(single.block_linear(0, w).q4()->packed, dq.block_linear(0, w).q4()->packed);
}

TEST(RandomModel, NormalStreamHasNormalTails) {
  // 1M samples: the fraction beyond 3 sigma is 0.27%, beyond 4 sigma 63 per million (the
  // ziggurat's tail path: a generator without one would show none).
  const int64_t chunks = 256;
  std::vector<float> buf(static_cast<size_t>(kRandomChunk));
  double sum = 0, sq = 0;
  int64_t beyond3 = 0, beyond4 = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    random_normal_chunk(12345, c, kRandomChunk, 1.0f, buf.data());
    for (float v : buf) {
      sum += v;
      sq += static_cast<double>(v) * v;
      beyond3 += std::fabs(v) > 3.0f;
      beyond4 += std::fabs(v) > 4.0f;
    }
  }
  const double n = static_cast<double>(chunks * kRandomChunk);
  EXPECT_NEAR(sum / n, 0.0, 0.005);
  EXPECT_NEAR(std::sqrt(sq / n), 1.0, 0.005);
  EXPECT_NEAR(static_cast<double>(beyond3) / n, 0.0027, 0.0003);
  EXPECT_GT(beyond4, 30);
  EXPECT_LT(beyond4, 110);
}

TEST(RandomModel, ActivationsStayFiniteThroughManyLayers) {
  // 80 layers as llama-65b, narrow: the residual stream must neither vanish nor overflow.
  const Model m = load_random("random:hidden=128,layers=80,ffn=344,heads=4,vocab=300", nf4(true));
  InferenceState st(m.spec(), 16);
  const std::vector<int> tokens = {1, 72, 105, 33};
  std::vector<float> logits(static_cast<size_t>(4 * 300));
  forward(m, st, tokens, logits.data(), /*all_logits=*/true);
  double sq = 0;
  for (float v : logits) {
    ASSERT_TRUE(std::isfinite(v));
    sq += static_cast<double>(v) * v;
  }
  const double rms = std::sqrt(sq / static_cast<double>(logits.size()));
  EXPECT_GT(rms, 0.01);
  EXPECT_LT(rms, 100.0);
}

// ---- no float32 copy of a Linear --------------------------------------------------------

TEST(RandomModel, BuildingHoldsNoFloatCopyOfALinear) {
  // One layer with a wide MLP: each of gate/up/down is 512 x 32768 = 64 MiB in float32, the
  // whole model 26 MiB in NF4. Generating from a float32 copy of even one Linear (as loading
  // a file does) would raise the peak by 64 MiB; generating in chunks raises it by the
  // model's bytes only.
  const std::string m = "random:hidden=512,layers=1,ffn=32768,heads=8,vocab=300";
  // Reset the peak to the present (Linux: clear_refs 5), so what came before does not count.
  {
    std::ofstream f("/proc/self/clear_refs");
    f << "5";
  }
  const int64_t before = vm_hwm_bytes();
  if (before < 0) GTEST_SKIP() << "no /proc/self/status";
  // Without a reset (an old kernel or a locked /proc) a higher earlier peak would hide ours.
  const int64_t now = current_rss_bytes();
  if (now > 0 && before > now + (16 << 20)) GTEST_SKIP() << "could not reset the peak RSS";
  const Model model = load_random(m, nf4());
  const int64_t rise = vm_hwm_bytes() - before;
  const int64_t weights = static_cast<int64_t>(model.weight_bytes());
  const int64_t linear_f32 = int64_t{512} * 32768 * 4;
  EXPECT_LT(rise, weights + 16 * (1 << 20)) << "peak rose by " << rise << " bytes for " << weights
                                            << " bytes of weights";
  EXPECT_LT(rise, weights + linear_f32 / 2);
}

// ---- the memory planner ----------------------------------------------------------------

TEST(RandomModel, PlannerKnowsGeneratedWeights) {
  ModelLoadOptions load = nf4(true);
  const MemoryOptions o = memory_options_for_run("random:llama-65b", load, MemoryMode::Train, 16);
  EXPECT_TRUE(o.generated_weights);
  EXPECT_EQ(o.model_file_bytes, 0u);
  EXPECT_FALSE(o.source_permutes_qk);
  const ModelSpec spec = parse_random_model("random:llama-65b").spec;
  MemoryOptions train = o;
  train.seq_len = 512;
  train.optim = OptimKind::PagedAdamW8bit;
  const MemoryPlan gen = plan_memory(spec, train);
  MemoryOptions from_file = train;
  from_file.generated_weights = false;
  const MemoryPlan file = plan_memory(spec, from_file);
  // Same run phase; loading neither maps a file nor holds a float32 Linear.
  EXPECT_EQ(gen.run_peak_bytes, file.run_peak_bytes);
  EXPECT_LT(gen.load_peak_bytes + uint64_t{100} * 1000 * 1000 * 1000, file.load_peak_bytes);
  EXPECT_LE(gen.required_bytes, file.required_bytes);
}
