// NF4 weights of a real model, byte for byte bitsandbytes': three Linear weights of
// stories260K (shared/data, always present) as our llama2.c loader hands them out in
// Hugging Face layout (wq / wk rows permuted per head), quantized by quantize_tensor_4bit
// and by Model::load, against bitsandbytes.functional.quantize_4bit(blocksize=64, nf4,
// compress_statistics=False/True) on CPU (tests/fixtures/logits/stories260k_nf4.safetensors,
// made by tools/make_logits_fixtures.py). The SmolLM2 counterpart, by sha256, is in
// test_smollm2_parity.cpp.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include "model_test_util.h"
#include "quant/quant_state.h"

using namespace qlora;
using namespace qlora::test;
using nlohmann::json;

namespace {

const std::string kFixture = std::string(QLORA_FIXTURE_DIR) + "/logits/stories260k_nf4.safetensors";

template <class T>
std::vector<T> tensor_of(const SafeTensorsFile& f, const std::string& name) {
  const auto bytes = f.data(f.at(name));
  std::vector<T> v(bytes.size() / sizeof(T));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

// "" when equal bitwise; else where they first differ (index, both values, block of 64).
template <class T>
std::string bytes_diff(const std::vector<T>& got, const std::vector<T>& want, int64_t elems_per_block) {
  if (got.size() != want.size()) return "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      size_t n = 0;
      for (size_t j = i; j < got.size(); ++j) n += std::memcmp(&got[j], &want[j], sizeof(T)) != 0;
      std::ostringstream s;
      s << n << " of " << got.size() << " elements differ; first at " << i << " (block "
        << static_cast<int64_t>(i) / elems_per_block << "): got " << +got[i] << ", expected " << +want[i];
      return s.str();
    }
  }
  return "";
}

const QuantLinear& linear_of(const Model& m, const std::string& tensor) {
  const std::string pre = "model.layers.";
  const size_t dot = tensor.find('.', pre.size());
  const LayerWeights& L = m.layers().at(std::stoul(tensor.substr(pre.size(), dot - pre.size())));
  const std::string module = tensor.substr(dot + 1, tensor.rfind(".weight") - dot - 1);
  const std::map<std::string, const QuantLinear*> by_name = {
      {"self_attn.q_proj", &L.q_proj}, {"self_attn.k_proj", &L.k_proj},   {"self_attn.v_proj", &L.v_proj},
      {"self_attn.o_proj", &L.o_proj}, {"mlp.gate_proj", &L.gate_proj}, {"mlp.up_proj", &L.up_proj},
      {"mlp.down_proj", &L.down_proj}};
  return *by_name.at(module);
}

class StoriesNf4Bytes : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(stories_bin())) GTEST_SKIP() << stories_bin() << " is absent (QLORA_DATA_DIR)";
    ref_ = std::make_unique<SafeTensorsFile>(kFixture);
    names_ = json::parse(ref_->metadata().at("tensors")).get<std::vector<std::string>>();
    offsets_ = json::parse(ref_->metadata().at("offsets"));
    ASSERT_EQ(names_.size(), 3u);
    ASSERT_EQ(std::to_string(std::filesystem::file_size(stories_bin())), ref_->metadata().at("model_bytes"))
        << "stories260K.bin is not the file the fixture was made from";
  }

  // Everything quantize_4bit produced for `name`, against `q`.
  void expect_bnb(const Quantized4bit& q, const std::string& name, bool dq) {
    SCOPED_TRACE(name + (dq ? " (double quant)" : " (plain)"));
    EXPECT_EQ(q.state.type, QuantType::NF4);
    EXPECT_EQ(q.state.blocksize, 64);
    EXPECT_EQ(q.state.shape, ref_->at(name + ".input").shape);
    // 2 codes per byte: 32 bytes per block of 64.
    EXPECT_EQ(bytes_diff(q.packed, tensor_of<uint8_t>(*ref_, name + ".packed"), 32), "") << "packed codes";
    ASSERT_EQ(q.state.nested, dq);
    if (!dq) {
      EXPECT_EQ(bytes_diff(q.state.absmax, tensor_of<float>(*ref_, name + ".absmax"), 1), "") << "absmax";
    } else {
      EXPECT_EQ(bytes_diff(q.state.absmax_q, tensor_of<uint8_t>(*ref_, name + ".dq_absmax"), 1), "") << "uint8 absmax";
      EXPECT_EQ(bytes_diff(q.state.nested_absmax, tensor_of<float>(*ref_, name + ".dq_nested_absmax"), 1), "")
          << "nested absmax";
      EXPECT_EQ(q.state.nested_blocksize, 256);
      EXPECT_EQ(q.state.offset, offsets_.at(name).get<float>()) << "nested offset (mean of absmax)";
    }
  }

  std::unique_ptr<SafeTensorsFile> ref_;
  std::vector<std::string> names_;
  json offsets_;
};

}  // namespace

TEST_F(StoriesNf4Bytes, LoaderGivesTheHfLayoutWeights) {
  // llama2.c's wq / wk permuted per head exactly as its export.py does for transformers.
  const ModelFiles f = open_model_files(stories_bin());
  for (const std::string& name : names_) {
    const std::vector<float> want = tensor_of<float>(*ref_, name + ".input");
    EXPECT_EQ(f.tensors->shape(name), ref_->at(name + ".input").shape) << name;
    EXPECT_EQ(bytes_diff(f.tensors->get(name), want, f.tensors->shape(name).back()), "") << name << " (block = row)";
  }
}

TEST_F(StoriesNf4Bytes, QuantizeTensor4bitIsBitsandbytes) {
  for (const std::string& name : names_) {
    const std::vector<float> w = tensor_of<float>(*ref_, name + ".input");
    for (bool dq : {false, true})
      expect_bnb(quantize_tensor_4bit(w.data(), ref_->at(name + ".input").shape, QuantType::NF4, 64, dq,
                                      ComputeDType::F32),
                 name, dq);
  }
}

TEST_F(StoriesNf4Bytes, ModelLoadStoresBitsandbytesNF4) {
  const ModelFiles f = open_model_files(stories_bin());
  for (bool dq : {false, true}) {
    ModelLoadOptions opt;
    opt.quant.quantize = true;
    opt.quant.type = QuantType::NF4;
    opt.quant.blocksize = 64;
    opt.quant.double_quant = dq;
    const Model m = Model::load(f.spec, *f.tensors, opt);
    for (const std::string& name : names_) {
      const QuantLinear& lin = linear_of(m, name);
      ASSERT_TRUE(lin.is_quantized()) << name;
      expect_bnb(*lin.q4(), name, dq);
    }
  }
}
