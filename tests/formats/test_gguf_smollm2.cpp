// The real default model, SmolLM2-135M-Instruct as GGUF (Q4_1 + Q8_0 + F32), fetched by
// scripts/fetch_model.sh into models/ (QLORA_MODELS_DIR overrides). Skipped with a
// message when absent. Reference: tests/fixtures/gguf/smollm2_reference.json, made by
// tools/make_gguf_fixtures.py from transformers' GGUF loader
// (AutoModelForCausalLM.from_pretrained(models/, gguf_file=...), float32), which also
// undoes llama.cpp's q/k row permutation. Our tensors must be bit-identical to it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/mapped_file.h"
#include "formats/gguf.h"

using namespace qlora;
using json = nlohmann::json;

namespace {

const char* kFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

std::string model_path() {
  const char* dir = std::getenv("QLORA_MODELS_DIR");
  return (dir && *dir ? std::string(dir) : std::string(QLORA_SOURCE_DIR) + "/models") + "/" + kFile;
}

json reference() {
  std::ifstream in(std::string(QLORA_FIXTURE_DIR) + "/gguf/smollm2_reference.json");
  return json::parse(in);
}

#define REQUIRE_MODEL()                                                                                   \
  do {                                                                                                    \
    if (!file_exists(model_path()))                                                                       \
      GTEST_SKIP() << model_path() << " missing: run scripts/fetch_model.sh to download SmolLM2-135M-Instruct"; \
  } while (0)

// Same as tools/make_gguf_fixtures.py bits_checksum.
uint64_t bits_checksum(const std::vector<float>& x) {
  uint64_t s = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t b;
    std::memcpy(&b, &x[i], 4);
    s += static_cast<uint64_t>(b) * (static_cast<uint64_t>(i) * 2654435761ull + 1ull);
  }
  return s;
}

TEST(GgufSmolLM2, TensorsAndTypes) {
  REQUIRE_MODEL();
  const json ref = reference();
  GgufFile f(model_path());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.architecture(), "llama");
  ASSERT_EQ(f.tensors().size(), ref["n_tensors"].get<size_t>());
  std::map<std::string, int> counts;
  std::set<std::string> hf_names;
  for (const auto& t : f.tensors()) {
    ++counts[std::string(ggml_type_name(t.type))];
    auto hf = gguf_to_hf_tensor_name(t.name);
    ASSERT_TRUE(hf.has_value()) << t.name;
    EXPECT_TRUE(hf_names.insert(*hf).second) << *hf;
  }
  EXPECT_EQ(counts, (ref["tensor_types"].get<std::map<std::string, int>>()));
  EXPECT_EQ(hf_names.size(), 2u + 30u * 9u);  // embed + norm + 9 per layer, tied lm_head
  const auto& q = f.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, GgmlType::Q4_1);
  EXPECT_EQ(q.shape(), (std::vector<int64_t>{576, 576}));
  EXPECT_EQ(f.tensor("token_embd.weight").shape(), (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(f.tensor("blk.0.attn_k.weight").shape(), (std::vector<int64_t>{192, 576}));
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight").shape(), (std::vector<int64_t>{576, 1536}));
}

TEST(GgufSmolLM2, HParamsMatchTransformersConfig) {
  REQUIRE_MODEL();
  const json c = reference()["config"];
  GgufFile f(model_path());
  const GgufLlamaHParams hp = read_gguf_llama_hparams(f);
  EXPECT_EQ(hp.hidden_size, c["hidden_size"].get<int64_t>());
  EXPECT_EQ(hp.num_layers, c["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(hp.intermediate_size, c["intermediate_size"].get<int64_t>());
  EXPECT_EQ(hp.num_heads, c["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(hp.num_kv_heads, c["num_key_value_heads"].get<int64_t>());
  EXPECT_EQ(hp.rope_theta, c["rope_theta"].get<float>());
  EXPECT_EQ(hp.rms_norm_eps, c["rms_norm_eps"].get<float>());
  EXPECT_EQ(hp.context_length, c["max_position_embeddings"].get<int64_t>());
  EXPECT_EQ(hp.vocab_size, c["vocab_size"].get<int64_t>());
  EXPECT_EQ(hp.tie_word_embeddings, c["tie_word_embeddings"].get<bool>());
  EXPECT_EQ(hp.head_dim, 64);
  EXPECT_EQ(hp.rope_dim, 64);
  EXPECT_TRUE(hp.qk_rope_permuted);
}

TEST(GgufSmolLM2, TokenizerMetadata) {
  REQUIRE_MODEL();
  GgufFile f(model_path());
  const GgufTokenizerInfo t = read_gguf_tokenizer(f);
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "smollm");
  ASSERT_EQ(t.tokens.size(), 49152u);
  EXPECT_EQ(t.tokens[0], "<|endoftext|>");
  EXPECT_EQ(t.tokens[1], "<|im_start|>");
  EXPECT_EQ(t.tokens[2], "<|im_end|>");
  EXPECT_EQ(t.token_types.size(), 49152u);
  EXPECT_EQ(t.merges.size(), 48900u);
  EXPECT_TRUE(t.scores.empty());
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, 2);
  EXPECT_EQ(t.pad_id, 2);
  EXPECT_EQ(t.unk_id, 0);
  EXPECT_EQ(t.add_bos, false);
  EXPECT_EQ(t.add_space_prefix, false);
  ASSERT_TRUE(t.chat_template.has_value());
  EXPECT_EQ(t.chat_template->rfind("{% for message in messages %}", 0), 0u);
  EXPECT_NE(t.chat_template->find("<|im_start|>"), std::string::npos);
}

// Bit-identical to transformers' GGUF loader, q/k in Hugging Face layout included.
TEST(GgufSmolLM2, TensorsMatchTransformers) {
  REQUIRE_MODEL();
  const json ref = reference();
  GgufFile f(model_path());
  const GgufLlamaHParams hp = read_gguf_llama_hparams(f);
  for (const auto& jt : ref["tensors"]) {
    const std::string gname = jt["gguf_name"], hname = jt["hf_name"];
    SCOPED_TRACE(gname);
    EXPECT_EQ(gguf_to_hf_tensor_name(gname), hname);
    const GgufTensorInfo& t = f.tensor(gname);
    EXPECT_EQ(ggml_type_name(t.type), jt["gguf_type"].get<std::string>());
    EXPECT_EQ(t.shape(), jt["shape"].get<std::vector<int64_t>>());
    const std::vector<float> x = gguf_tensor_to_f32_hf(f, t, hp);
    EXPECT_EQ(std::to_string(bits_checksum(x)), jt["bits_checksum"].get<std::string>());
    double sum = 0;
    for (float v : x) sum += v;
    EXPECT_NEAR(sum, jt["sum"].get<double>(), 1e-9 * std::max(1.0, std::abs(sum)) + 1e-6);
    const int64_t cols = t.shape().size() > 1 ? t.shape()[1] : t.numel();
    const auto rows = jt["slice_rows"].get<std::vector<int64_t>>();
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto want = jt["slice"][r].get<std::vector<double>>();
      for (size_t c = 0; c < want.size(); ++c)
        EXPECT_EQ(x[static_cast<size_t>(rows[r] * cols) + c], static_cast<float>(want[c])) << "row " << rows[r] << " col " << c;
    }
  }
}

// q_proj/k_proj as stored are NOT what transformers has (the permutation is real).
TEST(GgufSmolLM2, StoredQIsPermuted) {
  REQUIRE_MODEL();
  const json ref = reference();
  GgufFile f(model_path());
  for (const auto& jt : ref["tensors"]) {
    const std::string gname = jt["gguf_name"];
    if (gname.find("attn_q") == std::string::npos && gname.find("attn_k") == std::string::npos) continue;
    EXPECT_NE(std::to_string(bits_checksum(f.tensor_to_f32(gname))), jt["bits_checksum"].get<std::string>()) << gname;
  }
}

TEST(GgufSmolLM2, EveryTensorDequantizes) {
  REQUIRE_MODEL();
  GgufFile f(model_path());
  const GgufLlamaHParams hp = read_gguf_llama_hparams(f);
  size_t total = 0;
  for (const auto& t : f.tensors()) {
    const auto x = gguf_tensor_to_f32_hf(f, t, hp);
    for (float v : x) ASSERT_TRUE(std::isfinite(v)) << t.name;
    total += x.size();
  }
  EXPECT_EQ(total, 134515008u);  // SmolLM2-135M without the tied lm_head
}

// Prefixes of the real file: all of the first 512 bytes, then ~1500 cut points across
// the header (tokens, merges, tensor infos) and the data. Each must be an Error.
TEST(GgufSmolLM2, TruncationsAreErrors) {
  REQUIRE_MODEL();
  MappedFile m(model_path());
  const auto all = m.bytes();
  const GgufHeader h = parse_gguf(all, "full");
  uint64_t end = 0;
  for (const auto& t : h.tensors) end = std::max(end, h.data_start + t.offset + t.nbytes);
  ASSERT_EQ(end, all.size());
  std::vector<uint64_t> cuts;
  for (uint64_t n = 0; n < 512; ++n) cuts.push_back(n);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 1000; ++i) cuts.push_back(512 + rng() % (h.data_start - 512));
  for (int i = 0; i < 500; ++i) cuts.push_back(h.data_start + rng() % (all.size() - h.data_start));
  cuts.push_back(h.data_start);
  cuts.push_back(all.size() - 1);
  for (uint64_t n : cuts) {
    bool threw = false;
    try {
      parse_gguf(all.subspan(0, n), "cut.gguf");
    } catch (const Error& e) {
      threw = true;
      EXPECT_EQ(std::string(e.what()).rfind("cut.gguf: ", 0), 0u) << e.what();
    }
    EXPECT_TRUE(threw) << "prefix of " << n << " bytes parsed";
  }
}

// Byte flips in the header (first bytes, and random positions up to the data section)
// are either an Error or a file whose tensors all lie inside it.
TEST(GgufSmolLM2, HeaderByteFlips) {
  REQUIRE_MODEL();
  MappedFile m(model_path());
  std::vector<uint8_t> b(m.bytes().begin(), m.bytes().end());
  const GgufHeader h = parse_gguf(b, "full");
  std::vector<uint64_t> positions;
  for (uint64_t p = 0; p < 64; ++p) positions.push_back(p);
  std::mt19937_64 rng(11);
  for (int i = 0; i < 300; ++i) positions.push_back(rng() % h.data_start);
  // The tensor-info region (after the metadata) holds dims, types and offsets.
  const uint64_t ti_begin = h.data_start > 20000 ? h.data_start - 20000 : 0;
  for (int i = 0; i < 300; ++i) positions.push_back(ti_begin + rng() % (h.data_start - ti_begin));
  size_t errors = 0;
  for (uint64_t p : positions) {
    for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x10}, uint8_t{0x80}, uint8_t{0xFF}}) {
      b[p] ^= mask;
      try {
        const GgufHeader g = parse_gguf(b, "flip.gguf");
        for (const auto& t : g.tensors) ASSERT_LE(g.data_start + t.offset + t.nbytes, b.size());
      } catch (const Error&) {
        ++errors;
      }
      b[p] ^= mask;
    }
  }
  EXPECT_GT(errors, positions.size());
}

}  // namespace
