// config.json -> ModelSpec and generation_config.json: real configs (SmolLM2, Qwen2,
// Mistral as published on the Hub), transformers' defaults, and clean errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/hf_config.h"

using namespace qlora;
using nlohmann::json;

namespace {

// HuggingFaceTB/SmolLM2-135M-Instruct/config.json
const char* kSmolLM2 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
  "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
  "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 9,
  "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
  "use_cache": true, "vocab_size": 49152})";

// Qwen/Qwen2.5-0.5B-Instruct/config.json
const char* kQwen2 = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

std::string error_of(const std::string& text) {
  try {
    spec_from_hf_config(json::parse(text), "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(HfConfig, SmolLM2) {
  const ModelSpec s = spec_from_hf_config(json::parse(kSmolLM2), "config.json");
  EXPECT_EQ(s.family, "llama");
  EXPECT_EQ(s.hidden, 576);
  EXPECT_EQ(s.n_layers, 30);
  EXPECT_EQ(s.n_heads, 9);
  EXPECT_EQ(s.n_kv_heads, 3);
  EXPECT_EQ(s.head_dim, 64);
  EXPECT_EQ(s.ffn, 1536);
  EXPECT_EQ(s.vocab, 49152);
  EXPECT_EQ(s.max_positions, 8192);
  EXPECT_FLOAT_EQ(s.rope_theta, 100000.0f);
  EXPECT_FLOAT_EQ(s.norm_eps, 1e-5f);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_FALSE(s.qkv_bias);
  EXPECT_EQ(s.bos_id, 1);
  EXPECT_EQ(s.eos_ids, std::vector<int>{2});
  EXPECT_EQ(s.pad_id, 2);
  EXPECT_EQ(s.num_params(), 134515008);  // SmolLM2-135M: 134,515,008 parameters
}

TEST(HfConfig, Qwen2HasQkvBias) {
  const ModelSpec s = spec_from_hf_config(json::parse(kQwen2), "config.json");
  EXPECT_EQ(s.family, "qwen2");
  EXPECT_TRUE(s.qkv_bias);
  EXPECT_FALSE(s.o_bias);
  EXPECT_EQ(s.head_dim, 64);
  EXPECT_EQ(s.n_kv_heads, 2);
  bool has_q_bias = false;
  for (const auto& t : s.tensors()) has_q_bias |= t.name == "model.layers.0.self_attn.q_proj.bias";
  EXPECT_TRUE(has_q_bias);
  EXPECT_EQ(s.num_params(), 494032768);  // Qwen2.5-0.5B: 494,032,768 parameters
}

TEST(HfConfig, DefaultsAndListsOfEosIds) {
  const ModelSpec s = spec_from_hf_config(
      json::parse(R"({"model_type":"llama","hidden_size":64,"intermediate_size":100,"num_hidden_layers":2,
                     "num_attention_heads":4,"vocab_size":10,"eos_token_id":[2,7],"head_dim":32})"),
      "c");
  EXPECT_EQ(s.n_kv_heads, 4);
  EXPECT_EQ(s.head_dim, 32);
  EXPECT_EQ(s.q_dim(), 128);
  EXPECT_EQ(s.max_positions, 2048);
  EXPECT_FLOAT_EQ(s.rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(s.norm_eps, 1e-6f);
  EXPECT_FALSE(s.tied_embeddings);
  EXPECT_EQ(s.eos_ids, (std::vector<int>{2, 7}));
  EXPECT_EQ(s.bos_id, -1);
}

TEST(HfConfig, UnsupportedOrMalformedConfigsAreCleanErrors) {
  EXPECT_NE(error_of(R"({"model_type":"gpt_bigcode"})").find("model_type 'gpt_bigcode' is not supported"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"hidden_size":64})").find("model_type"), std::string::npos);
  std::string base = R"({"model_type":"llama","hidden_size":64,"intermediate_size":100,"num_hidden_layers":2,
                       "num_attention_heads":4,"vocab_size":10)";
  EXPECT_EQ(error_of(base + "}"), "");
  EXPECT_NE(error_of(base + R"(,"hidden_act":"gelu"})").find("hidden_act"), std::string::npos);
  EXPECT_NE(error_of(base + R"(,"rope_scaling":{"rope_type":"llama3","factor":8.0}})").find("rope_scaling"),
            std::string::npos);
  EXPECT_EQ(error_of(base + R"(,"rope_scaling":{"rope_type":"default"}})"), "");
  EXPECT_NE(error_of(base + R"(,"num_key_value_heads":3})").find("not a multiple"), std::string::npos);
  EXPECT_NE(error_of(base + R"(,"num_hidden_layers":"2"})").find("num_hidden_layers"), std::string::npos);
  EXPECT_NE(error_of(base + R"(,"vocab_size":0})").find("vocabulary size must be positive"), std::string::npos);
  EXPECT_NE(error_of(R"({"model_type":"llama","hidden_size":64})").find("missing key"), std::string::npos);
  EXPECT_NE(error_of(base + R"(,"eos_token_id":"x"})").find("eos_token_id"), std::string::npos);
  EXPECT_NE(error_of(base + R"(,"eos_token_id":12})").find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(error_of("[1,2]").find("JSON object"), std::string::npos);
}

TEST(HfConfig, GenerationConfig) {
  // HuggingFaceTB/SmolLM2-135M-Instruct/generation_config.json, with sampling settings added.
  const GenerationConfig g = generation_config_from_json(
      json::parse(R"({"bos_token_id":1,"eos_token_id":[2,0],"pad_token_id":2,"do_sample":true,
                     "temperature":0.2,"top_p":0.9,"top_k":50,"repetition_penalty":1.1,"max_new_tokens":64,
                     "transformers_version":"4.42.3"})"),
      "generation_config.json");
  EXPECT_EQ(g.bos_id, 1);
  EXPECT_EQ(g.eos_ids, (std::vector<int>{2, 0}));
  EXPECT_EQ(g.pad_id, 2);
  EXPECT_EQ(g.do_sample, true);
  EXPECT_FLOAT_EQ(*g.temperature, 0.2f);
  EXPECT_FLOAT_EQ(*g.top_p, 0.9f);
  EXPECT_EQ(g.top_k, 50);
  EXPECT_FLOAT_EQ(*g.repetition_penalty, 1.1f);
  EXPECT_EQ(g.max_new_tokens, 64);
  const GenerationConfig empty = generation_config_from_json(json::object(), "g");
  EXPECT_FALSE(empty.temperature.has_value());
  EXPECT_TRUE(empty.eos_ids.empty());
}
