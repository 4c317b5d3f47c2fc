// The llama2.c checkpoint reader: the real stories260K header and tensors, the q/k row
// permutation, version-1 files, and one clean Error per kind of malformed file.
#include <gtest/gtest.h>

#include <cstring>

#include "base/error.h"
#include "formats/llama2c_model.h"
#include "model_test_util.h"

using namespace qlora;
using namespace qlora::test;

namespace {

std::string error_of(const std::string& path) {
  try {
    Llama2cModel m(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string header(std::initializer_list<int32_t> v) {
  std::string h(v.size() * 4, '\0');
  size_t i = 0;
  for (int32_t x : v) std::memcpy(h.data() + 4 * i++, &x, 4);
  return h;
}

const float* floats(const std::string& bytes, size_t float_offset) {
  return reinterpret_cast<const float*>(bytes.data() + 28) + float_offset;
}

}  // namespace

TEST(Llama2cModel, ReadsStories260K) {
  Llama2cModel m(stories_bin());
  const ModelSpec& s = m.spec();
  EXPECT_EQ(s.hidden, 64);
  EXPECT_EQ(s.ffn, 172);
  EXPECT_EQ(s.n_layers, 5);
  EXPECT_EQ(s.n_heads, 8);
  EXPECT_EQ(s.n_kv_heads, 4);
  EXPECT_EQ(s.head_dim, 8);
  EXPECT_EQ(s.vocab, 512);
  EXPECT_EQ(s.max_positions, 512);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_EQ(s.num_params(), 260032);  // 264,128 floats in the file minus the two rope tables
  EXPECT_FALSE(m.has("lm_head.weight"));
  EXPECT_EQ(m.shape("model.layers.4.self_attn.k_proj.weight"), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(m.shape("model.layers.0.mlp.down_proj.weight"), (std::vector<int64_t>{64, 172}));

  // Tensors are the file's floats at llama2.c's offsets.
  const std::string bytes = read_file(stories_bin());
  const auto emb = m.get("model.embed_tokens.weight");
  ASSERT_EQ(emb.size(), 512u * 64);
  EXPECT_EQ(0, std::memcmp(emb.data(), floats(bytes, 0), emb.size() * 4));
  const size_t off_rms_att = 512 * 64, off_wq = off_rms_att + 5 * 64, off_wk = off_wq + 5 * 64 * 64;
  const auto n1 = m.get("model.layers.1.input_layernorm.weight");
  EXPECT_EQ(0, std::memcmp(n1.data(), floats(bytes, off_rms_att + 64), 64 * 4));
  // w3 (up) of layer 2 comes after w1 and w2 of all layers.
  const size_t off_wv = off_wk + 5 * 32 * 64, off_wo = off_wv + 5 * 32 * 64, off_rms_ffn = off_wo + 5 * 64 * 64;
  const size_t off_w1 = off_rms_ffn + 5 * 64, off_w2 = off_w1 + 5 * 172 * 64, off_w3 = off_w2 + 5 * 64 * 172;
  const auto up2 = m.get("model.layers.2.mlp.up_proj.weight");
  EXPECT_EQ(0, std::memcmp(up2.data(), floats(bytes, off_w3 + 2 * 172 * 64), up2.size() * 4));
  const auto fn = m.get("model.norm.weight");
  EXPECT_EQ(0, std::memcmp(fn.data(), floats(bytes, off_w3 + 5 * 172 * 64), 64 * 4));

  // q/k rows are permuted per head to rotate-halves order: HF row h*8 + s*4 + i is llama2.c
  // row h*8 + 2i + s.
  const auto wk3 = m.get("model.layers.3.self_attn.k_proj.weight");
  const float* raw = floats(bytes, off_wk + 3 * 32 * 64);
  for (int h = 0; h < 4; ++h)
    for (int s = 0; s < 2; ++s)
      for (int i = 0; i < 4; ++i)
        EXPECT_EQ(0, std::memcmp(wk3.data() + (h * 8 + s * 4 + i) * 64, raw + (h * 8 + 2 * i + s) * 64, 64 * 4));
  // v is not permuted.
  const auto wv0 = m.get("model.layers.0.self_attn.v_proj.weight");
  EXPECT_EQ(0, std::memcmp(wv0.data(), floats(bytes, off_wv), wv0.size() * 4));
}

TEST(Llama2cModel, ReadsVersion1AndUntiedClassifier) {
  // Re-export stories260K as version 1 with an untied classifier; every tensor must read back
  // identically to the legacy file.
  Llama2cModel legacy(stories_bin());
  const ModelSpec& s = legacy.spec();
  std::string f(256, '\0');
  const uint32_t magic = 0x616b3432;
  const int32_t version = 1;
  std::memcpy(f.data(), &magic, 4);
  std::memcpy(f.data() + 4, &version, 4);
  const std::string h = header({64, 172, 5, 8, 4, 512, 512});
  std::memcpy(f.data() + 8, h.data(), h.size());
  f[8 + 28] = 0;  // not shared
  auto put = [&](const std::string& name) {
    const auto v = name == "lm_head.weight" ? legacy.get("model.embed_tokens.weight") : legacy.get(name);
    f.append(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  };
  auto per_layer = [&](const char* module) {
    for (int l = 0; l < 5; ++l) put(layer_tensor_name(l, module));
  };
  per_layer("input_layernorm");
  per_layer("post_attention_layernorm");
  put("model.norm.weight");
  put("model.embed_tokens.weight");
  // v1 stores wq/wk in llama2.c order too: undo our permutation by writing the raw rows.
  {
    const std::string bytes = read_file(stories_bin());
    const size_t off_wq = 512 * 64 + 5 * 64;
    f.append(bytes.data() + 28 + off_wq * 4, (5 * 64 * 64 + 5 * 32 * 64) * 4);  // wq, wk
  }
  per_layer("self_attn.v_proj");
  per_layer("self_attn.o_proj");
  per_layer("mlp.gate_proj");
  per_layer("mlp.down_proj");
  per_layer("mlp.up_proj");
  put("lm_head.weight");
  TempDir tmp("v1");
  write_file(tmp.path("v1.bin"), f);
  Llama2cModel v1(tmp.path("v1.bin"));
  EXPECT_EQ(v1.config().version, 1);
  EXPECT_FALSE(v1.spec().tied_embeddings);
  for (const TensorSpec& t : s.tensors()) EXPECT_EQ(v1.get(t.name), legacy.get(t.name)) << t.name;
  EXPECT_EQ(v1.get("lm_head.weight"), legacy.get("model.embed_tokens.weight"));
}

TEST(Llama2cModel, MalformedFilesAreCleanErrors) {
  TempDir tmp("bad");
  const std::string full = read_file(stories_bin());
  auto err = [&](const std::string& name, const std::string& bytes) {
    write_file(tmp.path(name), bytes);
    return error_of(tmp.path(name));
  };
  EXPECT_NE(error_of(tmp.path("missing.bin")).find("missing.bin"), std::string::npos);
  EXPECT_NE(err("empty.bin", "").find("shorter than the 28-byte header"), std::string::npos);
  std::string e = err("trunc.bin", full.substr(0, full.size() - 4));
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  EXPECT_NE(e.find("1056540"), std::string::npos) << e;  // what it needs
  EXPECT_NE(e.find("trunc.bin"), std::string::npos) << e;
  e = err("long.bin", full + "xxxx");
  EXPECT_NE(e.find("size mismatch"), std::string::npos) << e;
  // Untied (negative vocab) needs a classifier the file does not have.
  std::string untied = full;
  const int32_t neg = -512;
  std::memcpy(untied.data() + 20, &neg, 4);
  EXPECT_NE(err("untied.bin", untied).find("truncated"), std::string::npos);
  EXPECT_NE(err("zero.bin", header({0, 172, 5, 8, 4, 512, 512})).find("non-positive"), std::string::npos);
  EXPECT_NE(err("heads.bin", header({64, 172, 5, 7, 7, 512, 512})).find("not a multiple of n_heads"),
            std::string::npos);
  EXPECT_NE(err("gqa.bin", header({64, 172, 5, 8, 3, 512, 512})).find("multiple"), std::string::npos);
  e = err("huge.bin", header({1 << 30, 1 << 30, 1 << 20, 8, 8, 1 << 30, 512}));
  EXPECT_NE(e.find("implausibly large"), std::string::npos) << e;
  std::string v2(256, '\0');
  const uint32_t magic = 0x616b3432;
  const int32_t version = 2;
  std::memcpy(v2.data(), &magic, 4);
  std::memcpy(v2.data() + 4, &version, 4);
  EXPECT_NE(err("v2.bin", v2).find("version 2"), std::string::npos);
}
