// config.json -> ModelSpec and generation_config.json: real configs (SmolLM2, Qwen2,
// Mistral as published on the Hub), transformers' defaults, and clean errors.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "export/merge.h"
#include "formats/config_reader.h"
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
  EXPECT_NE(error_of(R"({"model_type":"rwkv"})").find("model_type 'rwkv' is not supported"),
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

// meta-llama/Llama-3.2-1B/config.json (rope_type llama3 in the older rope_scaling form)
TEST(HfConfig, Llama32RopeScaling) {
  const ModelSpec s = spec_from_hf_config(json::parse(R"({"architectures":["LlamaForCausalLM"],"attention_bias":false,
    "attention_dropout":0.0,"bos_token_id":128000,"eos_token_id":128001,"head_dim":64,"hidden_act":"silu",
    "hidden_size":2048,"initializer_range":0.02,"intermediate_size":8192,"max_position_embeddings":131072,
    "mlp_bias":false,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":16,"num_key_value_heads":8,
    "pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
    "original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,"tie_word_embeddings":true,
    "torch_dtype":"bfloat16","transformers_version":"4.45.0.dev0","use_cache":true,"vocab_size":128256})"),
                                          "config.json");
  EXPECT_EQ(s.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_FLOAT_EQ(s.rope_scaling.factor, 32.0f);
  EXPECT_EQ(s.rope_scaling.original_max_positions, 8192);
  EXPECT_FLOAT_EQ(s.rope_theta, 500000.0f);
}

// google/gemma-3-1b-it/config.json (transformers 4 form: rope_local_base_freq,
// sliding_window_pattern, null soft caps)
TEST(HfConfig, Gemma3Text1B) {
  const ModelSpec s = spec_from_hf_config(json::parse(R"({"architectures":["Gemma3ForCausalLM"],"attention_bias":false,
    "attention_dropout":0.0,"attn_logit_softcapping":null,"bos_token_id":2,"cache_implementation":"hybrid",
    "eos_token_id":[1,106],"final_logit_softcapping":null,"head_dim":256,"hidden_activation":"gelu_pytorch_tanh",
    "hidden_size":1152,"initializer_range":0.02,"intermediate_size":6912,"max_position_embeddings":32768,
    "model_type":"gemma3_text","num_attention_heads":4,"num_hidden_layers":26,"num_key_value_heads":1,"pad_token_id":0,
    "query_pre_attn_scalar":256,"rms_norm_eps":1e-06,"rope_local_base_freq":10000,"rope_scaling":null,
    "rope_theta":1000000,"sliding_window":512,"sliding_window_pattern":6,"torch_dtype":"bfloat16",
    "transformers_version":"4.50.0.dev0","use_cache":true,"vocab_size":262144})"),
                                          "config.json");
  EXPECT_TRUE(s.qk_norm && s.sandwich_norms && s.norm_unit_offset && s.embed_scale && s.tied_embeddings);
  EXPECT_EQ(s.mlp, MlpKind::GeGLU);
  EXPECT_EQ(s.attn_softcap, 0.0f);
  EXPECT_EQ(s.final_softcap, 0.0f);
  EXPECT_FLOAT_EQ(s.attn_scale, 1.0f / 16.0f);
  EXPECT_EQ(s.sliding_window, 512);
  EXPECT_TRUE(s.rope_local);
  EXPECT_FLOAT_EQ(s.rope_theta_local, 10000.0f);
  EXPECT_FLOAT_EQ(s.rope_theta, 1000000.0f);
  for (int64_t l = 0; l < 26; ++l) EXPECT_EQ(s.layer_slides(l), (l + 1) % 6 != 0) << "layer " << l;
  EXPECT_EQ(s.eos_ids, (std::vector<int>{1, 106}));
}

// Qwen's sliding windows as transformers' Qwen2Config reads them: only with
// use_sliding_window, on the layers from max_window_layers on (default 28) or those
// layer_types names; Qwen2.5's configs (use_sliding_window false, a sliding_window value
// all the same) have none.
TEST(HfConfig, QwenSlidingWindowLayers) {
  const std::string base = R"({"model_type":"qwen2","hidden_size":64,"intermediate_size":100,"num_hidden_layers":4,
                       "num_attention_heads":4,"vocab_size":10,)";
  auto spec = [&](const std::string& rest) { return spec_from_hf_config(json::parse(base + rest), "config.json"); };
  EXPECT_EQ(spec(R"("use_sliding_window":false,"sliding_window":4096,"max_window_layers":2})").sliding_window, 0);
  const ModelSpec a = spec(R"("use_sliding_window":true,"sliding_window":16,"max_window_layers":2})");
  EXPECT_EQ(a.sliding_window, 16);
  EXPECT_EQ(a.sliding_layers, (std::vector<bool>{false, false, true, true}));
  const ModelSpec b = spec(R"("use_sliding_window":true,"sliding_window":16,"max_window_layers":2,
      "layer_types":["sliding_attention","full_attention","sliding_attention","full_attention"]})");
  EXPECT_EQ(b.sliding_layers, (std::vector<bool>{true, false, true, false}));
  EXPECT_EQ(spec(R"("use_sliding_window":true,"sliding_window":16})").sliding_window, 0);  // 28 >= 4 layers
  EXPECT_EQ(spec(R"("use_sliding_window":true,"sliding_window":null,"max_window_layers":0})").sliding_window, 0);
}

TEST(HfConfig, NewFamilyOptionsThatAreNotSupportedSaySo) {
  const std::string base = R"({"hidden_size":64,"intermediate_size":100,"num_hidden_layers":2,
                       "num_attention_heads":4,"vocab_size":10,)";
  EXPECT_NE(error_of(base + R"("model_type":"gemma2","layer_types":["full_attention"]})").find("layer_types"),
            std::string::npos);
  EXPECT_NE(error_of(base + R"("model_type":"qwen2","use_sliding_window":true,"layer_types":["full_attention"]})")
                .find("layer_types"),
            std::string::npos);
  EXPECT_NE(error_of(base + R"("model_type":"llama","rope_parameters":{"rope_type":"axial","factor":2.0}})")
                .find("rope_type 'axial' is not supported"),
            std::string::npos);
  // dynamic NTK runs to factor x the trained context, which stays the original in rope_scaling
  const ModelSpec dyn = spec_from_hf_config(
      json::parse(base + R"("model_type":"llama","max_position_embeddings":2048,"rope_scaling":{"type":"dynamic","factor":2.0}})"),
      "config.json");
  EXPECT_EQ(dyn.rope_scaling.type, RopeScaling::Type::Dynamic);
  EXPECT_EQ(dyn.rope_scaling.original_max_positions, 2048);
  EXPECT_EQ(dyn.max_positions, 4096);
  // (a vision-language config needs its language model's: test_vision_language.cpp)
  EXPECT_NE(error_of(base + R"("model_type":"gemma3"})").find("text_config"), std::string::npos);
  EXPECT_NE(error_of(base + R"("model_type":"llama","rope_scaling":{"rope_type":"yarn","factor":4.0}})")
                .find("original_max_position_embeddings"),
            std::string::npos);
  EXPECT_NE(error_of(base + R"("model_type":"gemma","hidden_act":"silu"})").find("gelu_pytorch_tanh"),
            std::string::npos);
}

// Qwen3.5's config.json (the real 0.8B's shape, inside Qwen3_5ForConditionalGeneration) and the
// ways a hybrid config can be wrong, each a message naming the key.
TEST(HfConfig, Qwen35HybridConfigsAndTheirErrors) {
  const std::string text = R"({"hidden_size":1024,"num_hidden_layers":24,"num_attention_heads":8,
    "num_key_value_heads":2,"head_dim":256,"intermediate_size":3584,"vocab_size":248320,
    "linear_num_key_heads":16,"linear_num_value_heads":16,"linear_key_head_dim":128,"linear_value_head_dim":128,
    "rope_parameters":{"rope_type":"default","rope_theta":10000000,"partial_rotary_factor":0.25,
                       "mrope_interleaved":true,"mrope_section":[11,11,10]},"model_type":"qwen3_5_text")";
  const ModelSpec s = spec_from_hf_config(
      json::parse(R"({"model_type":"qwen3_5","tie_word_embeddings":true,"text_config":)" + text + "}}"),
      "config.json");
  EXPECT_EQ(s.hf_wrapper, "qwen3_5");
  EXPECT_EQ(s.family, "qwen3_5_text");
  ASSERT_TRUE(s.hybrid());
  EXPECT_EQ(s.kv_layers(), 6) << "every fourth layer attends (full_attention_interval's default)";
  EXPECT_TRUE(s.layer_is_linear_attn(0));
  EXPECT_FALSE(s.layer_is_linear_attn(3));
  EXPECT_EQ(s.rope_dims(), 64);
  EXPECT_TRUE(s.tied_embeddings) << "the outer config's flag";
  EXPECT_EQ(s.la_conv_dim(), 2 * 16 * 128 + 16 * 128);
  auto err = [&](const std::string& extra) { return error_of(text + "," + extra + "}"); };
  EXPECT_EQ(err(R"("full_attention_interval":4)"), "");
  EXPECT_NE(err(R"("layer_types":["linear_attention"])").find("one type per layer"), std::string::npos);
  EXPECT_NE(err(R"("linear_num_value_heads":24)").find("not a multiple of linear_num_key_heads"), std::string::npos);
  EXPECT_NE(err(R"("linear_key_head_dim":0)").find("linear attention head"), std::string::npos);
  EXPECT_NE(err(R"("full_attention_interval":0)").find("full_attention_interval"), std::string::npos);
  EXPECT_NE(err(R"("linear_conv_kernel_dim":0)").find("linear_conv_kernel_dim"), std::string::npos);
}

// GLM-4.5-Air's config.json as published (transformers 4.54's keys: top-level rope_theta and
// partial_rotary_factor, n_routed_experts, the MTP layer counted apart): 106B parameters without
// the MTP layer, half of each 128-wide head rotated, layer 0 dense.
TEST(HfConfig, Glm45AirConfig) {
  const std::string cfg = R"({"architectures":["Glm4MoeForCausalLM"],"attention_bias":true,"attention_dropout":0.0,
    "pad_token_id":151329,"eos_token_id":[151329,151336,151338],"head_dim":128,"hidden_act":"silu","hidden_size":4096,
    "partial_rotary_factor":0.5,"initializer_range":0.02,"intermediate_size":10944,"max_position_embeddings":131072,
    "model_type":"glm4_moe","moe_intermediate_size":1408,"norm_topk_prob":true,"num_attention_heads":96,"n_group":1,
    "topk_group":1,"n_routed_experts":128,"n_shared_experts":1,"routed_scaling_factor":1.0,"num_experts_per_tok":8,
    "first_k_dense_replace":1,"num_hidden_layers":46,"num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_scaling":null,
    "rope_theta":1000000,"num_nextn_predict_layers":1,"tie_word_embeddings":false,"torch_dtype":"bfloat16",
    "use_cache":true,"use_qk_norm":false,"vocab_size":151552})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "glm4_moe");
  EXPECT_EQ(s.head_dim, 128);
  EXPECT_EQ(s.rope_dims(), 64);
  EXPECT_EQ(s.rope_theta, 1e6f);
  EXPECT_TRUE(s.qkv_bias);
  EXPECT_FALSE(s.o_bias);
  EXPECT_FALSE(s.qk_norm);
  EXPECT_FALSE(s.layer_moe(0));
  EXPECT_TRUE(s.layer_moe(1));
  EXPECT_EQ(s.layer_ffn(0), 10944);
  EXPECT_EQ(s.layer_ffn(1), 1408);  // (the shared expert)
  EXPECT_EQ(s.n_experts, 128);
  EXPECT_EQ(s.experts_per_token, 8);
  EXPECT_EQ(s.mtp_layers, 1);
  EXPECT_NEAR(static_cast<double>(s.num_params()) / 1e9, 106.8, 0.5);
}

// DeepSeek-V3's and DeepSeek-V2-Lite's config.json as published (their remote-code keys, the yarn
// rope_scaling whose mscale_all_dim scales the softmax): the parameter counts transformers 5.23
// gives these configs (AutoModelForCausalLM on the meta device: 671,026,404,352 and
// 15,706,484,224; V3's counted here with its 58 x 256 score-bias values, a buffer there), and
// transformers' softmax scales (0.1352337788608801, 0.1147213867929261).
TEST(HfConfig, DeepseekV3AndV2LiteConfigs) {
  const ModelSpec v3 = spec_from_hf_config(json::parse(R"({"architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"}, "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true, "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true, "v_head_dim": 128, "vocab_size": 129280})"), "config.json");
  EXPECT_EQ(v3.family, "deepseek_v3");
  ASSERT_TRUE(v3.mla());
  EXPECT_EQ(v3.head_dim, 192);
  EXPECT_EQ(v3.rope_dims(), 64);
  EXPECT_EQ(v3.n_kv_heads, 128);
  EXPECT_EQ(v3.mla_q_rank, 1536);
  EXPECT_EQ(v3.mla_kv_rank, 512);
  EXPECT_EQ(v3.mla_v_dim, 128);
  EXPECT_TRUE(v3.rope_interleaved);
  EXPECT_TRUE(v3.moe_sigmoid_router);
  EXPECT_EQ(v3.moe_groups, 8);
  EXPECT_EQ(v3.moe_topk_groups, 4);
  EXPECT_EQ(v3.moe_dense_layers, 3);
  EXPECT_EQ(v3.mtp_layers, 1);
  EXPECT_FLOAT_EQ(v3.attn_scale, 0.1352337788608801f);
  EXPECT_EQ(v3.num_params(), 671026404352 + 58 * 256);
  const auto lin = v3.block_linears(3);
  EXPECT_STREQ(lin[0].module, "self_attn.q_a_proj");
  EXPECT_EQ(lin[kMlaQbLinear].out, 128 * 192);
  EXPECT_EQ(lin[2].out, 128 * (128 + 128));
  EXPECT_EQ(lin[3].in, 128 * 128);

  const ModelSpec v2 = spec_from_hf_config(json::parse(R"({"architectures": ["DeepseekV2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2", "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false, "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": null, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"}, "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": true, "tie_word_embeddings": false, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16", "transformers_version": "4.39.3", "use_cache": true, "v_head_dim": 128, "vocab_size": 102400})"), "config.json");
  EXPECT_EQ(v2.family, "deepseek_v2");
  EXPECT_EQ(v2.mla_q_rank, 0);
  EXPECT_FALSE(v2.layer_has_linear(0, kMlaQbLinear));
  EXPECT_STREQ(v2.block_linears(0)[0].module, "self_attn.q_proj");
  EXPECT_TRUE(v2.moe_softmax_f32);
  EXPECT_FALSE(v2.moe_has_score_bias());
  EXPECT_EQ(v2.moe_groups, 1);
  EXPECT_EQ(v2.experts_per_token, 6);
  EXPECT_EQ(v2.layer_ffn(1), 2 * 1408);
  EXPECT_FLOAT_EQ(v2.attn_scale, 0.1147213867929261f);
  EXPECT_EQ(v2.num_params(), 15706484224);

  // Forms that are not DeepSeek's are refused by name.
  auto err = [&](const std::string& patch) {
    json c = json::parse(R"({"architectures": ["DeepseekV2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2", "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false, "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": null, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"}, "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": true, "tie_word_embeddings": false, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16", "transformers_version": "4.39.3", "use_cache": true, "v_head_dim": 128, "vocab_size": 102400})");
    c.merge_patch(json::parse(patch));
    try {
      (void)spec_from_hf_config(c, "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err(R"({"topk_method":"noaux_tc"})").find("topk_method"), std::string::npos);
  EXPECT_NE(err(R"({"v_head_dim":256})").find("v_head_dim"), std::string::npos);
  EXPECT_NE(err(R"({"n_group":3,"topk_method":"group_limited_greedy"})").find("n_group"), std::string::npos);
  EXPECT_NE(err(R"({"num_key_value_heads":4})").find("num_key_value_heads"), std::string::npos);
  EXPECT_EQ(err(R"({"n_group":8,"topk_group":3,"topk_method":"group_limited_greedy"})"), "");
}

// MiniMax-M2's shape in its released config's keys (the legacy rotary_dim, no rope_theta: the
// class default 5e6): transformers 5.23 reads rotary_dim as partial_rotary_factor 0.5 and counts
// 228,689,748,992 parameters (AutoModel on the meta device; the score biases, 62 x 256, are a
// buffer there and counted here).
TEST(HfConfig, MiniMaxM2Config) {
  const std::string cfg = R"({"architectures":["MiniMaxM2ForCausalLM"],"model_type":"minimax_m2","hidden_size":3072,
    "intermediate_size":1536,"num_hidden_layers":62,"num_attention_heads":48,"num_key_value_heads":8,"head_dim":128,
    "num_local_experts":256,"num_experts_per_tok":8,"vocab_size":200064,"rotary_dim":64,"max_position_embeddings":196608,
    "rms_norm_eps":1e-06,"tie_word_embeddings":false,"scoring_func":"sigmoid","use_routing_bias":true,
    "use_qk_norm":true,"qk_norm_type":"per_layer","shared_intermediate_size":0})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "minimax_m2");
  EXPECT_EQ(s.rope_dims(), 64);
  EXPECT_EQ(s.rope_theta, 5e6f);
  EXPECT_TRUE(s.qk_norm_full);
  EXPECT_TRUE(s.moe_sigmoid_router);
  EXPECT_EQ(s.moe_score_bias, "mlp.e_score_correction_bias");
  EXPECT_EQ(s.num_params(), 228689748992 + 62 * 256);
  json bad = json::parse(cfg);
  bad["shared_intermediate_size"] = 1024;
  EXPECT_THROW((void)spec_from_hf_config(bad, "config.json"), Error);
  bad = json::parse(cfg);
  bad["qk_norm_type"] = "per_head";
  EXPECT_THROW((void)spec_from_hf_config(bad, "config.json"), Error);
}

// Gemma 4's dense text model as its config.json is published (global_head_dim, the key/value
// heads the full-attention layers share with attention_k_eq_v) and as transformers 5 saves it
// (per_layer_config): the same spec. The forms that are not run yet are refused by name.
TEST(HfConfig, Gemma4DenseConfigsAndTheirErrors) {
  const std::string text = R"({"model_type":"gemma4_text","hidden_size":3840,"intermediate_size":15360,
    "num_hidden_layers":12,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":256,"global_head_dim":512,
    "num_global_key_value_heads":2,"attention_k_eq_v":true,"vocab_size":262144,"sliding_window":1024,
    "hidden_size_per_layer_input":0,"num_kv_shared_layers":0,"enable_moe_block":false,"final_logit_softcapping":30.0,
    "rope_parameters":{"full_attention":{"rope_type":"proportional","partial_rotary_factor":0.25,"rope_theta":1000000.0},
                       "sliding_attention":{"rope_type":"default","rope_theta":10000.0}})";
  const ModelSpec s = spec_from_hf_config(json::parse(text + "}"), "config.json");
  EXPECT_EQ(s.family, "gemma4_text");
  ASSERT_TRUE(s.has_global_geometry());
  for (int64_t l = 0; l < 12; ++l) EXPECT_EQ(s.layer_global(l), l == 5 || l == 11) << "every sixth layer, the last one full";
  const ModelSpec::AttentionGeometry g = s.layer_geometry(5), local = s.layer_geometry(0);
  EXPECT_EQ(g.head_dim, 512);
  EXPECT_EQ(g.kv_heads, 2);
  EXPECT_TRUE(g.k_eq_v);
  EXPECT_EQ(local.head_dim, 256);
  EXPECT_EQ(local.kv_heads, 8);
  EXPECT_FALSE(s.layer_has_linear(5, 2)) << "no v_proj where the values are the key projection";
  EXPECT_TRUE(s.layer_has_linear(4, 2));
  EXPECT_EQ(s.block_linears(5)[0].out, 16 * 512);
  EXPECT_EQ(s.block_linears(5)[3].in, 16 * 512);
  EXPECT_EQ(s.block_linears(4)[1].out, 8 * 256);
  EXPECT_EQ(s.kv_dims()[5], 2 * 512);
  EXPECT_EQ(s.rope_scaling.type, RopeScaling::Type::Proportional);
  EXPECT_EQ(s.attn_scale, 1.0f);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_NE(s.summary().find("full-attention layers 16/2 x 512"), std::string::npos) << s.summary();

  // transformers 5's saved form of the same geometry
  json saved = json::parse(text + "}");
  saved.erase("global_head_dim");
  saved.erase("num_global_key_value_heads");
  saved["per_layer_config"] = {{"5", {{"head_dim", 512}, {"num_key_value_heads", 2}}},
                               {"11", {{"head_dim", 512}, {"num_key_value_heads", 2}}}};
  const ModelSpec t = spec_from_hf_config(saved, "config.json");
  EXPECT_EQ(t.global_head_dim, 512);
  EXPECT_EQ(t.global_kv_heads, 2);
  EXPECT_EQ(t.tensors().size(), s.tensors().size());

  // (without attention_k_eq_v the full-attention layers keep num_key_value_heads, as transformers does)
  const ModelSpec u = spec_from_hf_config(json::parse(text + R"(,"attention_k_eq_v":false})"), "config.json");
  EXPECT_EQ(u.layer_geometry(5).kv_heads, 8);
  EXPECT_TRUE(u.layer_has_linear(5, 2));

  auto err = [&](const std::string& extra) { return error_of(text + "," + extra + "}"); };
  EXPECT_EQ(err(R"("sliding_window":512)"), "");
  // E2B / E4B's form: per-layer inputs (the class default: 256 values per layer), the last
  // layers reusing earlier layers' keys and values, their MLPs twice as wide
  const ModelSpec e = spec_from_hf_config(
      json::parse(text + R"(,"hidden_size_per_layer_input":256,"num_kv_shared_layers":4,"use_double_wide_mlp":true})"),
      "config.json");
  EXPECT_EQ(e.ple_dim, 256);
  EXPECT_EQ(e.ple_vocab, 262144) << "vocab_size_per_layer_input's class default";
  EXPECT_TRUE(e.layer_kv_shared(8));
  EXPECT_FALSE(e.layer_kv_shared(7));
  EXPECT_EQ(e.kv_source(11), 5) << "the last full-attention layer before the shared ones";
  EXPECT_EQ(e.kv_source(9), 7) << "the last sliding one";
  EXPECT_EQ(e.kv_layers(), 8);
  EXPECT_EQ(e.kv_layer(11), e.kv_layer(5));
  EXPECT_EQ(e.layer_ffn(8), 2 * 15360);
  EXPECT_EQ(e.layer_ffn(7), 15360);
  EXPECT_FALSE(e.layer_has_linear(8, 1));
  EXPECT_TRUE(e.layer_has_linear(8, kPleGateLinear));
  EXPECT_NE(err(R"("num_kv_shared_layers":12)").find("num_kv_shared_layers"), std::string::npos);
  EXPECT_NE(err(R"("num_kv_shared_layers":7)").find("no earlier full-attention layer"), std::string::npos)
      << "layer 5 (full) is shared: no full-attention layer before the shared ones";
  EXPECT_NE(err(R"("hidden_size_per_layer_input":8,"vocab_size_per_layer_input":0)").find("vocab_size_per_layer_input"),
            std::string::npos);
  EXPECT_NE(err(R"("enable_moe_block":true)").find("num_experts, top_k_experts and moe_intermediate_size"),
            std::string::npos);
  // 26B-A4B's block: 128 experts of 704, 8 per token, beside the dense MLP
  const ModelSpec moe = spec_from_hf_config(
      json::parse(text + R"(,"enable_moe_block":true,"num_experts":128,"top_k_experts":8,"moe_intermediate_size":704})"),
      "config.json");
  EXPECT_TRUE(moe.moe_gemma4);
  EXPECT_EQ(moe.n_experts, 128);
  EXPECT_EQ(moe.experts_per_token, 8);
  EXPECT_TRUE(moe.norm_topk);
  EXPECT_NE(moe.block_linears()[4].module, nullptr) << "the dense MLP stays beside the experts";
  EXPECT_NE(err(R"("use_bidirectional_attention":"all")").find("use_bidirectional_attention"), std::string::npos);
  EXPECT_EQ(err(R"("use_bidirectional_attention":"vision")"), "");
  EXPECT_NE(err(R"("attn_logit_softcapping":50.0)").find("attn_logit_softcapping"), std::string::npos);
  EXPECT_NE(err(R"("per_layer_config":{"4":{"head_dim":512}})").find("sliding layer"), std::string::npos);
  EXPECT_NE(err(R"("per_layer_config":{"5":{"head_dim":512},"11":{"head_dim":256}})").find("one geometry"),
            std::string::npos);
  EXPECT_NE(err(R"("per_layer_config":{"5":{"head_dim":512}})").find("overrides 1 layers"), std::string::npos);
  EXPECT_NE(err(R"("per_layer_config":{"5":{"intermediate_size":1},"11":{"intermediate_size":1}})").find("intermediate_size"),
            std::string::npos);
  EXPECT_NE(err(R"("per_layer_config":{"x":{}})").find("not a layer index"), std::string::npos);
  EXPECT_NE(err(R"("global_head_dim":511)").find("global_head_dim"), std::string::npos);
  EXPECT_NE(err(R"("num_global_key_value_heads":3)").find("num_global_key_value_heads"), std::string::npos);
}

// Llama 4 Scout as released (Llama4ForConditionalGeneration's config.json, its text_config as the
// Hub has it: attn_temperature_tuning 4, no_rope_layers []), read to transformers' parameter
// count (AutoModelForCausalLM of the text config on the meta device: 107,769,861,120).
TEST(HfConfig, Llama4ScoutConfig) {
  const char* scout = R"({"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "boi_token_index": 200080, "eoi_token_index": 200081, "image_token_index": 200092, "tie_word_embeddings": false,
    "text_config": {"model_type": "llama4_text", "attention_bias": false, "attention_chunk_size": 8192, "attn_scale": 0.1, "attn_temperature_tuning": 4, "bos_token_id": 200000, "eos_token_id": [200001, 200007, 200008], "pad_token_id": 200018, "floor_scale": 8192, "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "interleave_moe_layer_step": 1, "intermediate_size": 8192, "intermediate_size_mlp": 16384, "max_position_embeddings": 10485760, "no_rope_layers": [], "num_attention_heads": 40, "num_experts_per_tok": 1, "num_hidden_layers": 48, "num_key_value_heads": 8, "num_local_experts": 16, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "rope_theta": 500000.0, "use_qk_norm": true, "vocab_size": 202048},
    "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 1408}})";
  const ModelSpec s = spec_from_hf_config(json::parse(scout), "config.json");
  EXPECT_EQ(s.family, "llama4_text");
  EXPECT_EQ(s.hf_wrapper, "llama4");
  EXPECT_EQ(s.num_params(), 107769861120);
  EXPECT_TRUE(s.moe_llama4);
  EXPECT_EQ(s.moe_layer_count(), 48);
  EXPECT_EQ(s.layer_ffn(0), 8192);  // (the shared expert's width)
  EXPECT_EQ(s.ffn, 16384);
  EXPECT_TRUE(s.rope_interleaved);
  EXPECT_EQ(s.rope_scaling.type, RopeScaling::Type::Llama3);
  for (int64_t l = 0; l < 48; ++l) {
    EXPECT_EQ(s.layer_rotates(l), (l + 1) % 4 != 0) << l;
    EXPECT_EQ(s.layer_slides(l), (l + 1) % 4 != 0) << l;
    EXPECT_EQ(s.layer_q_pos_scaled(l), (l + 1) % 4 == 0) << l;
  }
  EXPECT_TRUE(s.window_chunked);
  EXPECT_EQ(s.sliding_window, 8192);
  EXPECT_EQ(first_visible_key(s, 8191), 0);
  EXPECT_EQ(first_visible_key(s, 8192), 8192);
  EXPECT_EQ(first_visible_key(s, 20000), 16384);
  EXPECT_TRUE(s.qk_l2_norm);
  EXPECT_FLOAT_EQ(s.q_pos_scale(8190), 1.0f);
  EXPECT_FLOAT_EQ(s.q_pos_scale(8191), 1.0f + 0.1f * std::log(2.0f));  // (positions counted from 1)
  EXPECT_EQ(s.eos_ids, (std::vector<int>{200001, 200007, 200008}));

  auto with = [&](const std::string& patch) {
    json c = json::parse(scout);
    c["text_config"].merge_patch(json::parse(patch));
    return c;
  };
  // attention_chunk_size absent: Llama4TextConfig's 8192; null: no chunks
  json absent = json::parse(scout);
  absent["text_config"].erase("attention_chunk_size");
  EXPECT_EQ(spec_from_hf_config(absent, "config.json").sliding_window, 8192);
  json no_chunks = json::parse(scout);
  no_chunks["text_config"]["attention_chunk_size"] = nullptr;  // (a merge patch's null would erase it)
  EXPECT_EQ(spec_from_hf_config(no_chunks, "config.json").sliding_window, 0);
  EXPECT_EQ(spec_from_hf_config(with(R"({"attn_temperature_tuning": false})"), "config.json").q_pos_scale_beta, 0.0f);
  // Maverick's interleave: experts on the odd layers, dense MLPs of intermediate_size_mlp between
  const ModelSpec m = spec_from_hf_config(with(R"({"interleave_moe_layer_step": 2, "num_local_experts": 128, "use_qk_norm": false})"), "config.json");
  EXPECT_FALSE(m.layer_moe(0));
  EXPECT_TRUE(m.layer_moe(1));
  EXPECT_EQ(m.layer_ffn(0), 16384);
  EXPECT_EQ(m.layer_ffn(1), 8192);
  EXPECT_FALSE(m.qk_l2_norm);
  auto err = [&](const std::string& patch) {
    try {
      (void)spec_from_hf_config(with(patch), "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err(R"({"moe_layers": [0, 48]})").find("moe_layers"), std::string::npos);
  EXPECT_NE(err(R"({"no_rope_layers": [1, 0]})").find("no_rope_layers"), std::string::npos);
  EXPECT_NE(err(R"({"interleave_moe_layer_step": 0})").find("interleave_moe_layer_step"), std::string::npos);
  EXPECT_NE(err(R"({"attn_temperature_tuning": "yes"})").find("attn_temperature_tuning"), std::string::npos);
  EXPECT_NE(err(R"({"attention_chunk_size": -1})").find("attention_chunk_size"), std::string::npos);
}

// LFM2-1.2B's config.json as published (Lfm2Config's own spellings: block_ff_dim, full_attn_idxs,
// norm_eps; keys transformers ignores, block_dim, use_pos_enc, ...), read to transformers' parameter
// count (AutoModelForCausalLM on the meta device: 1,170,340,608) and its MLP width (2/3 of 12288
// rounded up to a multiple of 256: 8192).
TEST(HfConfig, Lfm2PublishedConfig) {
  const char* lfm2 = R"({"architectures": ["Lfm2ForCausalLM"], "block_auto_adjust_ff_dim": true, "block_dim": 2048, "block_ff_dim": 12288, "block_ffn_dim_multiplier": 1.0, "block_mlp_init_scale": 1.0, "block_multiple_of": 256, "block_norm_eps": 1e-05, "block_out_init_scale": 1.0, "block_use_swiglu": true, "block_use_xavier_init": true, "bos_token_id": 1, "conv_L_cache": 3, "conv_bias": false, "conv_dim": 2048, "conv_dim_out": 2048, "conv_use_xavier_init": true, "eos_token_id": 7, "full_attn_idxs": [2, 5, 8, 10, 12, 14], "hidden_size": 2048, "initializer_range": 0.02, "max_position_embeddings": 128000, "model_type": "lfm2", "norm_eps": 1e-05, "num_attention_heads": 32, "num_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pad_token_id": 0, "rope_theta": 1000000.0, "torch_dtype": "bfloat16", "use_cache": true, "use_pos_enc": true, "vocab_size": 65536})";
  const ModelSpec s = spec_from_hf_config(json::parse(lfm2), "config.json");
  EXPECT_EQ(s.family, "lfm2");
  EXPECT_EQ(s.num_params(), 1170340608);
  EXPECT_EQ(s.ffn, 8192);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_FLOAT_EQ(s.norm_eps, 1e-5f);
  EXPECT_TRUE(s.la_short_conv);
  EXPECT_TRUE(s.qk_norm);
  EXPECT_EQ(s.la_conv_kernel, 3);
  EXPECT_EQ(s.la_state_floats(), 2 * 2048);
  const std::vector<int64_t> attention = {2, 5, 8, 10, 12, 14};
  for (int64_t l = 0; l < 16; ++l)
    EXPECT_EQ(s.layer_is_linear_attn(l), std::find(attention.begin(), attention.end(), l) == attention.end()) << l;
  EXPECT_EQ(s.state_layers(), 10);

  auto with = [&](const std::string& patch) {
    json c = json::parse(lfm2);
    c.merge_patch(json::parse(patch));
    return c;
  };
  // layer_types wins over full_attn_idxs; without either every layer attends (Lfm2Config's default)
  const ModelSpec lt = spec_from_hf_config(with(R"({"layer_types": ["conv", "full_attention", "conv", "conv", "conv", "conv", "conv", "conv", "conv", "conv", "conv", "conv", "conv", "conv", "conv", "conv"]})"), "config.json");
  EXPECT_FALSE(lt.layer_is_linear_attn(1));
  EXPECT_TRUE(lt.layer_is_linear_attn(2));
  json none = json::parse(lfm2);
  none.erase("full_attn_idxs");
  EXPECT_FALSE(spec_from_hf_config(none, "config.json").hybrid());
  // no adjustment: the MLP is block_ff_dim wide; no multiplier: 2/3 of it, not rounded
  EXPECT_EQ(spec_from_hf_config(with(R"({"block_auto_adjust_ff_dim": false})"), "config.json").ffn, 12288);
  json nomult = json::parse(lfm2);
  nomult["block_ffn_dim_multiplier"] = nullptr;
  nomult["block_ff_dim"] = 1000;
  EXPECT_EQ(spec_from_hf_config(nomult, "config.json").ffn, 666);
  auto err = [&](const std::string& patch) {
    try {
      (void)spec_from_hf_config(with(patch), "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err(R"({"conv_bias": true})").find("conv_bias"), std::string::npos);
  EXPECT_NE(err(R"({"full_attn_idxs": [16]})").find("full_attn_idxs"), std::string::npos);
  EXPECT_NE(err(R"({"layer_types": ["conv"]})").find("layer_types"), std::string::npos);
  EXPECT_NE(err(R"({"conv_L_cache": 0})").find("conv_L_cache"), std::string::npos);
}

// granite-4.0-h-350m's published config (Mamba2 layers, attention on 4 of 32 without positions,
// the MLP fused under shared_mlp; dense), read to transformers' parameter count (AutoModelForCausalLM
// on the meta device: 340,332,224), and the spellings the family accepts or refuses.
TEST(HfConfig, GraniteMoeHybridPublishedConfig) {
  const char* cfg = R"({"architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid", "attention_bias": false, "attention_multiplier": 0.015625, "embedding_multiplier": 12, "eos_token_id": 100257, "hidden_size": 768, "intermediate_size": 2048, "logits_scaling": 3, "layer_types": ["mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "attention", "mamba", "mamba", "attention", "mamba", "mamba", "mamba", "attention", "mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "mamba", "attention", "mamba", "mamba", "mamba", "mamba"], "mamba_conv_bias": true, "mamba_d_conv": 4, "mamba_d_head": 32, "mamba_d_state": 128, "mamba_n_groups": 1, "mamba_n_heads": 48, "mamba_proj_bias": false, "max_position_embeddings": 32768, "num_attention_heads": 12, "num_experts_per_tok": 0, "num_hidden_layers": 32, "num_key_value_heads": 4, "num_local_experts": 0, "position_embedding_type": "nope", "residual_multiplier": 0.246, "rms_norm_eps": 1e-05, "rope_theta": 10000, "shared_intermediate_size": 2048, "tie_word_embeddings": true, "vocab_size": 100352})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "granitemoehybrid");
  EXPECT_EQ(s.num_params(), 340332224);
  EXPECT_EQ(s.ffn, 2048);
  EXPECT_TRUE(s.fused_gate_up);
  EXPECT_TRUE(s.la_mamba2);
  EXPECT_EQ(s.la_v_heads, 48);
  EXPECT_EQ(s.la_v_dim, 32);
  EXPECT_EQ(s.la_k_heads, 1);
  EXPECT_EQ(s.la_k_dim, 128);
  EXPECT_EQ(s.la_conv_dim(), 1536 + 2 * 128);
  EXPECT_EQ(s.la_state_floats(), 3 * (1536 + 256) + 48 * 32 * 128);
  EXPECT_TRUE(s.la_conv_bias);
  EXPECT_FALSE(s.la_proj_bias);
  EXPECT_EQ(s.la_dt_min, 0.0f);
  EXPECT_TRUE(std::isinf(s.la_dt_max));
  EXPECT_EQ(s.state_layers(), 28);
  for (int64_t l : {10, 13, 17, 27}) EXPECT_FALSE(s.layer_is_linear_attn(l)) << l;
  EXPECT_TRUE(s.layer_is_linear_attn(0));
  for (int64_t l = 0; l < 32; ++l) EXPECT_FALSE(s.layer_rotates(l)) << l;
  EXPECT_FLOAT_EQ(s.embed_multiplier, 12.0f);
  EXPECT_FLOAT_EQ(s.attn_scale, 0.015625f);
  EXPECT_FLOAT_EQ(s.logit_divisor, 3.0f);

  auto with = [&](const std::string& patch) {
    json c = json::parse(cfg);
    c.merge_patch(json::parse(patch));
    return c;
  };
  // transformers 5's spellings: layer_types renamed, time_step_limit's infinity as it saves it
  json t5 = with(R"({"time_step_limit": [0.001, {"__float__": "Infinity"}]})");
  for (json& e : t5["layer_types"]) e = e == "mamba" ? "linear_attention" : "full_attention";
  const ModelSpec s5 = spec_from_hf_config(t5, "config.json");
  EXPECT_EQ(s5.state_layers(), 28);
  EXPECT_FALSE(s5.layer_is_linear_attn(10));
  EXPECT_FLOAT_EQ(s5.la_dt_min, 0.001f);
  EXPECT_TRUE(std::isinf(s5.la_dt_max));
  // written back for a merge (the infinity as transformers 5 writes it) and read again
  const ModelSpec back = spec_from_hf_config(json::parse(hf_config_json(s5, DType::F32)), "config.json");
  EXPECT_FLOAT_EQ(back.la_dt_min, 0.001f);
  EXPECT_TRUE(std::isinf(back.la_dt_max));
  EXPECT_EQ(back.num_params(), s5.num_params());
  EXPECT_EQ(back.linear_attn_layers, s5.linear_attn_layers);
  EXPECT_EQ(back.nope_layers, s5.nope_layers);
  // granite-4.0-micro's form: every layer attends, with the rotary
  json micro = with(R"({"position_embedding_type": "rope"})");
  for (json& e : micro["layer_types"]) e = "attention";
  const ModelSpec m = spec_from_hf_config(micro, "config.json");
  EXPECT_FALSE(m.hybrid());
  EXPECT_TRUE(m.layer_rotates(0));
  auto err = [&](const std::string& patch) {
    try {
      (void)spec_from_hf_config(with(patch), "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // with experts (granite-4.0-h-tiny's form: 64 of intermediate_size routing 6, the shared_mlp beside
  // them): transformers' count on the meta device, 2,757,824,192
  const ModelSpec moe = spec_from_hf_config(with(R"({"num_local_experts": 64, "num_experts_per_tok": 6, "intermediate_size": 512})"),
                                            "config.json");
  EXPECT_EQ(moe.num_params(), 2757824192);
  EXPECT_TRUE(moe.moe_granite);
  EXPECT_TRUE(moe.shared_expert);
  EXPECT_FALSE(moe.shared_expert_gate);
  EXPECT_EQ(moe.expert_ffn, 512);
  EXPECT_EQ(moe.ffn, 2048);
  EXPECT_NE(err(R"({"num_local_experts": 4, "num_experts_per_tok": 5})").find("num_experts_per_tok"), std::string::npos);
  EXPECT_NE(err(R"({"position_embedding_type": "alibi"})").find("position_embedding_type"), std::string::npos);
  EXPECT_NE(err(R"({"mamba_n_heads": 50})").find("mamba_n_heads"), std::string::npos);
  EXPECT_NE(err(R"({"mamba_n_groups": 5})").find("mamba_n_groups"), std::string::npos);
  EXPECT_NE(err(R"({"mamba_d_head": 16})").find("mamba_d_head"), std::string::npos);
  EXPECT_NE(err(R"({"time_step_limit": [1.0, 0.5]})").find("time_step_limit"), std::string::npos);
  EXPECT_NE(err(R"({"time_step_limit": "inf"})").find("time_step_limit"), std::string::npos);
  EXPECT_NE(err(R"({"layer_types": ["mamba"]})").find("layer_types"), std::string::npos);
}

// Bamba-9B's shape (hidden 4096, 32 layers, attention on 9 / 18 / 27, Mamba2 of 128 heads of 64 with
// a state of 128), read to transformers' count on the meta device (9,780,235,392); half of each head
// rotates whatever partial_rotary_factor the file names (BambaConfig forces 0.5), and the merge writes
// attn_rotary_emb back (llama.cpp's converter reads the rotary width from it).
TEST(HfConfig, BambaConfig) {
  const char* cfg = R"({"architectures": ["BambaForCausalLM"], "model_type": "bamba", "hidden_size": 4096, "num_hidden_layers": 32, "attn_layer_indices": [9, 18, 27], "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "mamba_n_heads": 128, "mamba_d_state": 128, "mamba_n_groups": 1, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_d_head": "auto", "attn_rotary_emb": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-05})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "bamba");
  EXPECT_EQ(s.num_params(), 9780235392);
  EXPECT_EQ(s.rotary_dim, 64);
  EXPECT_EQ(s.head_dim, 128);
  EXPECT_FALSE(s.fused_gate_up);
  EXPECT_EQ(s.state_layers(), 29);
  EXPECT_FALSE(s.layer_is_linear_attn(18));
  EXPECT_TRUE(s.layer_is_linear_attn(17));
  EXPECT_EQ(s.la_v_dim, 64);
  const ModelSpec back = spec_from_hf_config(json::parse(hf_config_json(s, DType::F32)), "config.json");
  EXPECT_EQ(back.num_params(), s.num_params());
  EXPECT_EQ(back.linear_attn_layers, s.linear_attn_layers);
  EXPECT_EQ(back.rotary_dim, 64);
  EXPECT_EQ(json::parse(hf_config_json(s, DType::F32)).at("attn_rotary_emb").get<int64_t>(), 64);
  for (const char* patch : {R"({"partial_rotary_factor": 0.25})", R"({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}})"}) {
    json p = json::parse(cfg);
    p.merge_patch(json::parse(patch));
    EXPECT_EQ(spec_from_hf_config(p, "config.json").rotary_dim, 64) << patch;
  }
  json bad = json::parse(cfg);
  bad["attn_layer_indices"] = json::array({40});
  EXPECT_THROW((void)spec_from_hf_config(bad, "config.json"), Error);
  json z = json::parse(cfg);
  z["z_loss_coefficient"] = 1e-4;
  try {
    (void)spec_from_hf_config(z, "config.json");
    ADD_FAILURE() << "a z-loss was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("z_loss_coefficient"), std::string::npos);
  }
  // (Granite 4.0's rotary embedding rotates whole heads: a partial_rotary_factor there is refused by name)
  json g = json::parse(cfg);
  g["model_type"] = "granitemoehybrid";
  g["partial_rotary_factor"] = 0.5;
  try {
    (void)spec_from_hf_config(g, "config.json");
    ADD_FAILURE() << "granitemoehybrid took a partial rotary";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("partial_rotary_factor"), std::string::npos) << e.what();
  }
}

// Mamba-Codestral-7B's shape (Mamba2Config's defaults: hidden 4096, 64 layers, 128 heads of 64, 8
// groups, state 128, vocab 32768), read to transformers' count on the meta device (7,285,403,648): every
// layer a Mamba2 mixer, no attention, no MLP; written back with Mamba2Config's own key names.
TEST(HfConfig, Mamba2Config) {
  const char* cfg = R"({"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "hidden_size": 4096, "num_hidden_layers": 64, "num_heads": 128, "head_dim": 64, "state_size": 128, "n_groups": 8, "vocab_size": 32768, "expand": 2, "conv_kernel": 4, "use_conv_bias": true, "use_bias": false, "layer_norm_epsilon": 1e-05, "residual_in_fp32": true, "rms_norm": true, "tie_word_embeddings": false})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "mamba2");
  EXPECT_EQ(s.num_params(), 7285403648);
  EXPECT_TRUE(s.no_mlp);
  EXPECT_EQ(s.state_layers(), 64);
  EXPECT_EQ(s.la_k_heads, 8);
  EXPECT_FLOAT_EQ(s.norm_eps, 1e-5f);
  const json back = json::parse(hf_config_json(s, DType::F32));
  EXPECT_EQ(back.at("head_dim").get<int64_t>(), 64);
  EXPECT_EQ(back.at("num_heads").get<int64_t>(), 128);
  EXPECT_FALSE(back.contains("num_attention_heads"));
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
  EXPECT_TRUE(s.residual_fp32);
  json p = json::parse(cfg);
  p["residual_in_fp32"] = false;
  p["rms_norm"] = false;  // (gone from transformers 5's Mamba2Config: ignored there, and here)
  const ModelSpec r = spec_from_hf_config(p, "config.json");
  EXPECT_FALSE(r.residual_fp32);
  EXPECT_FALSE(json::parse(hf_config_json(r, DType::F32)).at("residual_in_fp32").get<bool>());
  p["num_heads"] = 100;
  EXPECT_THROW((void)spec_from_hf_config(p, "config.json"), Error);
}

// state-spaces/mamba-130m-hf's config.json (hidden 768, 24 layers, state 16, time_step_rank 48,
// vocab 50280, tied) reads to transformers 5.23's count on the meta device (129,135,360): every
// layer a Mamba mixer of 1536 channels; "auto" is ceil(hidden / 16); written back and read again.
TEST(HfConfig, MambaConfig) {
  const char* cfg = R"({"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24, "state_size": 16, "vocab_size": 50280, "expand": 2, "conv_kernel": 4, "use_bias": false, "use_conv_bias": true, "time_step_rank": 48, "layer_norm_epsilon": 1e-05, "residual_in_fp32": true, "intermediate_size": 1536, "pad_vocab_size_multiple": 8, "tie_word_embeddings": true})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "mamba");
  EXPECT_EQ(s.num_params(), 129135360);
  EXPECT_TRUE(s.la_mamba1 && s.no_mlp && s.tied_embeddings && !s.la_bcdt_norm);
  EXPECT_EQ(s.state_layers(), 24);
  EXPECT_EQ(s.la_value_dim(), 1536);
  EXPECT_EQ(s.la_dt_rank, 48);
  EXPECT_EQ(s.la_state_floats(), 3 * 1536 + 1536 * 16);
  const json back = json::parse(hf_config_json(s, DType::F32));
  EXPECT_EQ(back.at("intermediate_size").get<int64_t>(), 1536);
  EXPECT_EQ(back.at("time_step_rank").get<int64_t>(), 48);
  EXPECT_FALSE(back.contains("num_attention_heads"));
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
  json a = json::parse(cfg);
  a["time_step_rank"] = "auto";
  a["hidden_size"] = 100;
  a.erase("intermediate_size");
  const ModelSpec r = spec_from_hf_config(a, "config.json");
  EXPECT_EQ(r.la_dt_rank, 7);  // (ceil(100 / 16))
  EXPECT_EQ(r.la_value_dim(), 200);
  a["time_step_rank"] = 1.5;
  EXPECT_THROW((void)spec_from_hf_config(a, "config.json"), Error);
}

// tiiuae/falcon-mamba-7b's config.json (hidden 4096, 64 layers, expand 16 but intermediate_size 8192 --
// transformers 5 sets the file's intermediate_size over expand x hidden --, time_step_rank 256, vocab
// 65024, untied, mixer_rms_eps 1e-6) reads to transformers 5.23's count on the meta device
// (7,272,665,088), with the weightless dt / B / C norms at mixer_rms_eps.
TEST(HfConfig, FalconMambaConfig) {
  const char* cfg = R"({"architectures": ["FalconMambaForCausalLM"], "model_type": "falcon_mamba", "hidden_size": 4096, "num_hidden_layers": 64, "state_size": 16, "vocab_size": 65024, "expand": 16, "conv_kernel": 4, "use_bias": false, "use_conv_bias": true, "time_step_rank": 256, "layer_norm_epsilon": 1e-05, "residual_in_fp32": true, "intermediate_size": 8192, "mixer_rms_eps": 1e-06, "tie_word_embeddings": false})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "falcon_mamba");
  EXPECT_EQ(s.num_params(), 7272665088);
  EXPECT_EQ(s.la_value_dim(), 8192);
  EXPECT_TRUE(s.la_bcdt_norm);
  EXPECT_FLOAT_EQ(s.la_bcdt_eps, 1e-6f);
  EXPECT_FLOAT_EQ(s.norm_eps, 1e-5f);
  const json back = json::parse(hf_config_json(s, DType::F32));
  EXPECT_FLOAT_EQ(back.at("mixer_rms_eps").get<float>(), 1e-6f);
  EXPECT_EQ(back.at("intermediate_size").get<int64_t>(), 8192);
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
}

// ai21labs/Jamba-v0.1's config.json (hidden 4096, 32 layers: attention every 8th from 4, experts every
// 2nd from 1 -- 16 of 14336, top 2 --, Mamba expand 2, state 16, dt rank 256) reads to transformers 5.23's
// count on the meta device (51,570,323,328): the layer pattern, no rotary, the mixers' dt / B / C norm
// weights; written back as a period and offset and read again to the same count.
TEST(HfConfig, JambaConfig) {
  const char* cfg = R"({"architectures": ["JambaForCausalLM"], "model_type": "jamba", "vocab_size": 65536, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "num_experts": 16, "num_experts_per_tok": 2, "expert_layer_period": 2, "expert_layer_offset": 1, "attn_layer_period": 8, "attn_layer_offset": 4, "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 256, "mamba_conv_bias": true, "mamba_proj_bias": false, "rms_norm_eps": 1e-06, "tie_word_embeddings": false, "use_mamba_kernels": true, "max_position_embeddings": 262144})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "jamba");
  EXPECT_EQ(s.num_params(), 51570323328);
  EXPECT_TRUE(s.la_mamba1 && s.la_bcdt_norm && s.la_bcdt_weights && !s.no_mlp);
  EXPECT_EQ(s.state_layers(), 28);
  EXPECT_FALSE(s.layer_is_linear_attn(4));
  EXPECT_TRUE(s.layer_is_linear_attn(5));
  EXPECT_FALSE(s.layer_rotates(4));
  EXPECT_TRUE(s.layer_moe(1) && !s.layer_moe(2));
  EXPECT_FALSE(s.norm_topk);
  EXPECT_FALSE(s.all_linear_adapts_experts());
  const json back = json::parse(hf_config_json(s, DType::F32));
  EXPECT_EQ(back.at("attn_layer_period").get<int64_t>(), 8);
  EXPECT_EQ(back.at("attn_layer_offset").get<int64_t>(), 4);
  EXPECT_EQ(back.at("expert_layer_period").get<int64_t>(), 2);
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
  json bad = json::parse(cfg);
  bad["attn_layer_offset"] = 8;
  EXPECT_THROW((void)spec_from_hf_config(bad, "config.json"), Error);
  // (3 layers: attention's offset 4 never reached -- Mamba only --, written back so and read the same)
  json small = json::parse(cfg);
  small["num_hidden_layers"] = 3;
  const ModelSpec m = spec_from_hf_config(small, "config.json");
  EXPECT_EQ(m.state_layers(), 3);
  EXPECT_EQ(spec_from_hf_config(json::parse(hf_config_json(m, DType::F32)), "config.json").num_params(), m.num_params());
}

// NVIDIA-Nemotron-Nano-9B-v2's sizes (hidden 4480, 56 layers of the hybrid_override_pattern below:
// 27 Mamba2, 4 attention, 25 MLP; 128 Mamba heads of 80 in 8 groups, state 128 -- an inner width of
// 10240, not expand x hidden; 40 heads of 128 with 8 key/value heads; MLP 15680, vocab 131072), as a
// transformers 4 save writes it (time_step_limit [0.0, Infinity], a bare word JSON lacks), read from
// the file to transformers 5.23's count on the meta device (8,888,227,328 parameters).
TEST(HfConfig, NemotronHConfig) {
  const std::string cfg = R"({"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "hidden_size": 4480, "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-", "intermediate_size": 15680, "mamba_head_dim": 80, "mamba_num_heads": 128, "n_groups": 8, "ssm_state_size": 128, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 131072, "conv_kernel": 4, "chunk_size": 128, "expand": 2, "layer_norm_epsilon": 1e-05, "mlp_hidden_act": "relu2", "mamba_hidden_act": "silu", "use_bias": false, "use_conv_bias": true, "tie_word_embeddings": false, "time_step_limit": [0.0, Infinity], "time_step_min": 0.001, "time_step_max": 0.1, "residual_in_fp32": false, "max_position_embeddings": 131072, "num_hidden_layers": 56, "attention_bias": false, "mlp_bias": false})";
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "qlora_test_nemotron_h";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << cfg;
  const ModelSpec s = read_hf_config((dir / "config.json").string());
  std::filesystem::remove_all(dir);
  EXPECT_EQ(s.family, "nemotron_h");
  EXPECT_EQ(s.n_layers, 56);
  EXPECT_EQ(s.num_params(), 8888227328);
  EXPECT_EQ(s.state_layers(), 27);
  EXPECT_EQ(s.kv_layers(), 4);
  int64_t mlp = 0;
  for (int64_t l = 0; l < s.n_layers; ++l) mlp += s.layer_has_mlp(l) ? 1 : 0;
  EXPECT_EQ(mlp, 25);
  EXPECT_TRUE(s.layer_is_linear_attn(0));
  EXPECT_FALSE(s.layer_has_mixer(1));
  EXPECT_FALSE(s.layer_has_linear(1, 0));  // (an MLP layer: no q_proj)
  EXPECT_TRUE(s.layer_has_linear(1, 5));
  EXPECT_FALSE(s.layer_has_linear(0, 5));  // (a Mamba layer: no up_proj)
  EXPECT_EQ(s.la_value_dim(), 10240);
  EXPECT_FLOAT_EQ(s.la_dt_min, 0.001f);  // (transformers' mixer: [time_step_min, inf), time_step_limit unused)
  EXPECT_TRUE(std::isinf(s.la_dt_max));
  EXPECT_FALSE(s.layer_rotates(14));
  // Written back in NemotronHConfig's own names, read to the same model.
  const json back = json::parse(hf_config_json(s, DType::F32));
  EXPECT_EQ(back.at("layers_block_type").size(), 56u);
  EXPECT_EQ(back.at("layers_block_type")[14].get<std::string>(), "attention");
  EXPECT_EQ(back.at("mamba_head_dim").get<int64_t>(), 80);
  // (and the older pattern, which llama.cpp's converter reads first)
  EXPECT_EQ(back.at("hybrid_override_pattern").get<std::string>(), "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-");
  EXPECT_FALSE(back.at("tie_word_embeddings").get<bool>());
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
  // The older spellings (mamba_n_groups, layer_types of transformers 5) read the same.
  json legacy = json::parse(config::python_json_literals(cfg));
  legacy.erase("hybrid_override_pattern");
  legacy["layer_types"] = back.at("layers_block_type");
  legacy["mamba_n_groups"] = legacy["n_groups"];
  legacy.erase("n_groups");
  EXPECT_EQ(spec_from_hf_config(legacy, "config.json").num_params(), s.num_params());
  auto err = [&](const char* key, const json& v, const char* says) {
    json c = json::parse(config::python_json_literals(cfg));
    c[key] = v;
    try {
      (void)spec_from_hf_config(c, "config.json");
      ADD_FAILURE() << key << " " << v.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  err("hybrid_override_pattern", "M-X*", "kind");
  err("mlp_hidden_act", "silu", "mlp_hidden_act");
  err("mamba_num_heads", 0, "mamba_num_heads");
  err("n_groups", 3, "mamba_n_groups");
}

// NVIDIA-Nemotron-3-Nano-30B-A3B's config.json (hidden 2688, 52 layers "MEMEM*EMEM...": 23 Mamba2, 6
// attention, 23 MoE; 128 ungated relu^2 experts of 1856, 6 per token, DeepSeek-V3's sigmoid router in one
// group with routed_scaling_factor 2.5, a shared expert of 3712; 64 Mamba heads of 64), read to transformers
// 5.23's count on the meta device (31,577,937,344 parameters; the routers' e_score_correction_bias is a
// buffer there, 23 x 128 values more here) and written back to the same model.
TEST(HfConfig, Nemotron3NanoConfig) {
  const json cfg = json::parse(R"({"architectures": ["NemotronHForCausalLM"], "attention_bias": false, "chunk_size": 128, "conv_kernel": 4, "eos_token_id": 2, "expand": 2, "head_dim": 128, "hidden_size": 2688, "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME", "intermediate_size": 1856, "layer_norm_epsilon": 1e-05, "mamba_head_dim": 64, "mamba_hidden_act": "silu", "mamba_num_heads": 64, "mamba_proj_bias": false, "max_position_embeddings": 262144, "mlp_bias": false, "mlp_hidden_act": "relu2", "model_type": "nemotron_h", "moe_intermediate_size": 1856, "moe_shared_expert_intermediate_size": 3712, "n_group": 1, "n_groups": 8, "n_routed_experts": 128, "n_shared_experts": 1, "norm_eps": 1e-05, "norm_topk_prob": true, "num_attention_heads": 32, "num_experts_per_tok": 6, "num_hidden_layers": 52, "num_key_value_heads": 2, "rescale_prenorm_residual": true, "rope_theta": 10000, "routed_scaling_factor": 2.5, "ssm_state_size": 128, "tie_word_embeddings": false, "time_step_floor": 0.0001, "time_step_max": 0.1, "time_step_min": 0.001, "topk_group": 1, "torch_dtype": "bfloat16", "use_bias": false, "use_conv_bias": true, "vocab_size": 131072})");
  const ModelSpec s = spec_from_hf_config(cfg, "config.json");
  EXPECT_EQ(s.family, "nemotron_h");
  EXPECT_EQ(s.num_params(), 31577937344 + 23 * 128);
  EXPECT_EQ(s.moe_layer_count(), 23);
  EXPECT_EQ(s.state_layers(), 23);
  EXPECT_EQ(s.kv_layers(), 6);
  EXPECT_TRUE(s.moe_ungated);
  EXPECT_EQ(s.expert_gu_rows(), 1856);
  EXPECT_TRUE(s.layer_moe(1));
  EXPECT_FALSE(s.layer_moe(0));
  EXPECT_FALSE(s.layer_moe(5));  // (attention)
  EXPECT_EQ(s.layer_ffn(1), 3712);  // (the shared expert's slots)
  EXPECT_TRUE(s.moe_sigmoid_router);
  EXPECT_FLOAT_EQ(s.moe_routed_scale, 2.5f);
  EXPECT_FALSE(s.all_linear_adapts_experts());  // (PEFT's module names reach the shared experts only)
  const json back = json::parse(hf_config_json(s, DType::BF16));
  EXPECT_EQ(back.at("hybrid_override_pattern").get<std::string>(), cfg.at("hybrid_override_pattern").get<std::string>());
  EXPECT_EQ(back.at("layers_block_type")[1].get<std::string>(), "moe");
  EXPECT_EQ(back.at("n_routed_experts").get<int64_t>(), 128);
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
  // Dense MLP layers ("-": up and down, no gate) beside the MoE ones, as transformers builds them
  // (3,459,176,640 parameters on the meta device for "MEM-M*E-"; 2 x 128 score-bias values more here).
  json mixed = cfg;
  mixed["hybrid_override_pattern"] = "MEM-M*E-";
  mixed["num_hidden_layers"] = 8;
  const ModelSpec ms = spec_from_hf_config(mixed, "config.json");
  EXPECT_EQ(ms.num_params(), 3459176640 + 2 * 128);
  EXPECT_EQ(ms.block_linears(3)[4].module, nullptr);  // (no gate_proj on the dense layer)
  EXPECT_STREQ(ms.block_linears(3)[5].module, "mlp.up_proj");
  EXPECT_STREQ(ms.block_linears(1)[5].module, "mlp.shared_expert.up_proj");
  EXPECT_EQ(ms.layer_ffn(3), 1856);
  // Nemotron 3 Super's latent experts (moe_latent_size) are refused by name.
  json latent = cfg;
  latent["moe_latent_size"] = 1024;
  try {
    (void)spec_from_hf_config(latent, "config.json");
    ADD_FAILURE() << "moe_latent_size was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("latent"), std::string::npos) << e.what();
  }
}

// ApertusConfig()'s defaults ("Apertus-8B style": hidden 4096, 32 layers of 32 heads, MLP 14336, vocab
// 131072, llama3 rotary with theta 12e6), as a config.json that leaves the rotary out: transformers 5.23's
// meta-device count is 6,979,596,352 parameters (the layers' xIELU alpha_p / alpha_n among them; their
// beta and eps are buffers, 2 x 32 values more here); the llama3 rotary the class fills in is read.
TEST(HfConfig, ApertusConfig) {
  const json cfg = json::parse(R"({"architectures": ["ApertusForCausalLM"], "model_type": "apertus", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 131072, "hidden_act": "xielu", "max_position_embeddings": 65536, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false})");
  const ModelSpec s = spec_from_hf_config(cfg, "config.json");
  EXPECT_EQ(s.family, "apertus");
  EXPECT_EQ(s.num_params(), 6979596352 + 2 * 32);
  EXPECT_EQ(s.act, Activation::Xielu);
  EXPECT_EQ(s.mlp, MlpKind::Plain);
  EXPECT_TRUE(s.qk_norm);
  EXPECT_EQ(s.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_FLOAT_EQ(s.rope_theta, 12000000.0f);
  const json back = json::parse(hf_config_json(s, DType::BF16));
  EXPECT_EQ(back.at("hidden_act").get<std::string>(), "xielu");
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
  EXPECT_FLOAT_EQ(s.norm_eps, 1e-5f);
  // An unscaled rotary is written as such (else ApertusConfig, and the reader, would take llama3).
  json plain = cfg;
  plain["rope_scaling"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
  const ModelSpec ps = spec_from_hf_config(plain, "config.json");
  EXPECT_EQ(ps.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_EQ(spec_from_hf_config(json::parse(hf_config_json(ps, DType::BF16)), "config.json").rope_scaling.type,
            RopeScaling::Type::None);
  json bad = cfg;
  bad["hidden_act"] = "silu";
  try {
    (void)spec_from_hf_config(bad, "config.json");
    ADD_FAILURE() << "hidden_act silu was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("xielu"), std::string::npos) << e.what();
  }
}

// StarCoder's shape (bigcode/starcoder, GPT-BigCode: n_embd 6144, 40 layers, 48 heads sharing one key/value
// head, n_inner 24576, 8192 positions, vocab 49152, tied), read to transformers' count on the meta device
// (15,517,456,384 parameters); multi_query false gives a key/value head per head, per-head q | k | v rows.
TEST(HfConfig, GptBigCodeConfig) {
  const json cfg = json::parse(R"({"architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode", "n_embd": 6144, "n_layer": 40, "n_head": 48, "n_inner": 24576, "n_positions": 8192, "vocab_size": 49152, "multi_query": true, "activation_function": "gelu_pytorch_tanh", "layer_norm_epsilon": 1e-05, "scale_attn_weights": true, "attention_softmax_in_fp32": true, "bos_token_id": 0, "eos_token_id": 0})");
  const ModelSpec s = spec_from_hf_config(cfg, "config.json");
  EXPECT_EQ(s.family, "gpt_bigcode");
  EXPECT_EQ(s.num_params(), 15517456384);
  EXPECT_EQ(s.n_kv_heads, 1);
  EXPECT_FALSE(s.qkv_per_head);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_EQ(s.act, Activation::GeluTanh);
  const json back = json::parse(hf_config_json(s, DType::F32));
  EXPECT_TRUE(back.at("multi_query").get<bool>());
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
  json mha = cfg;
  mha["multi_query"] = false;
  const ModelSpec m = spec_from_hf_config(mha, "config.json");
  EXPECT_EQ(m.n_kv_heads, 48);
  EXPECT_TRUE(m.qkv_per_head);
  mha["num_key_value_heads"] = 1;  // (transformers reads multi_query alone, and so do we)
  EXPECT_EQ(spec_from_hf_config(mha, "config.json").n_kv_heads, 48);
}

// MPT-7B's shape (d_model 4096, 32 heads, 32 layers, 2048 positions, vocab 50432, tied), read to
// transformers' count on the meta device (6,649,286,656 parameters); what transformers' MptAttention
// does not run is refused by name.
TEST(HfConfig, MptConfig) {
  const json cfg = json::parse(R"({"architectures": ["MPTForCausalLM"], "model_type": "mpt", "d_model": 4096, "n_heads": 32, "n_layers": 32, "expansion_ratio": 4, "max_seq_len": 2048, "vocab_size": 50432, "no_bias": true, "norm_type": "low_precision_layernorm", "learned_pos_emb": true, "attn_config": {"alibi": true, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0, "attn_type": "multihead_attention", "attn_uses_sequence_id": false, "clip_qkv": null, "prefix_lm": false, "qk_ln": false, "softmax_scale": null}, "logit_scale": null, "tie_word_embeddings": true})");
  const ModelSpec s = spec_from_hf_config(cfg, "config.json");
  EXPECT_EQ(s.family, "mpt");
  EXPECT_EQ(s.num_params(), 6649286656);
  EXPECT_EQ(s.positional, PositionalKind::Alibi);
  EXPECT_TRUE(s.alibi_mpt);
  EXPECT_FALSE(s.norm_bias);
  EXPECT_EQ(s.ffn, 4 * 4096);
  const json back = json::parse(hf_config_json(s, DType::F32));
  EXPECT_EQ(back.at("d_model").get<int64_t>(), 4096);
  EXPECT_EQ(back.at("attn_config").at("alibi_bias_max").get<int64_t>(), 8);
  EXPECT_EQ(spec_from_hf_config(back, "config.json").num_params(), s.num_params());
  auto refused = [&](const char* key, const json& v, const char* says) {
    json c = cfg;
    if (std::string(key) == "expansion_ratio") c[key] = v;
    else c["attn_config"][key] = v;
    try {
      (void)spec_from_hf_config(c, "config.json");
      ADD_FAILURE() << key << " " << v.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  refused("qk_ln", true, "qk_ln");
  refused("attn_type", "multiquery_attention", "multi-head only");
  refused("alibi", false, "ALiBi only");
  refused("expansion_ratio", 2, "expansion_ratio");
  refused("softmax_scale", 0, "softmax_scale");
  refused("attn_type", 5, "multi-head only");
  json bad = cfg;
  bad["attn_config"] = "x";
  EXPECT_THROW((void)spec_from_hf_config(bad, "config.json"), Error);
}

TEST(HfConfig, PythonJsonLiteralsOutsideStringsOnly) {
  EXPECT_EQ(config::python_json_literals(R"({"a": [0.0, Infinity, -Infinity, NaN], "b": "NaN Infinity", "c\"Infinity": 1})"),
            R"({"a": [0.0, {"__float__": "Infinity"}, {"__float__": "-Infinity"}, {"__float__": "NaN"}], "b": "NaN Infinity", "c\"Infinity": 1})");
  const json j = json::parse(config::python_json_literals(R"([Infinity, -Infinity])"));
  EXPECT_EQ(config::python_float(j[0]).value(), std::numeric_limits<double>::infinity());
  EXPECT_EQ(config::python_float(j[1]).value(), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(config::python_json_literals("{\"InfinityX\": 1}"), "{\"InfinityX\": 1}");
}

// LFM2-8B-A1B's shape (Lfm2MoeConfig's widths: hidden 2048, dense MLPs of 7168 on the first 2 layers,
// 32 experts of 1792 routing 4; 24 layers, attention on 6), read to transformers' parameter count
// (AutoModelForCausalLM on the meta device: 8,339,929,856 parameters, plus the 22 x 32 values of the
// expert_bias buffers its files hold, which num_params counts as stored tensors).
TEST(HfConfig, Lfm2MoeConfig) {
  const char* cfg = R"({"architectures": ["Lfm2MoeForCausalLM"], "model_type": "lfm2_moe", "hidden_size": 2048, "intermediate_size": 7168, "moe_intermediate_size": 1792, "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 8, "num_experts": 32, "num_experts_per_tok": 4, "num_dense_layers": 2, "norm_topk_prob": true, "use_expert_bias": true, "routed_scaling_factor": 1.0, "conv_L_cache": 3, "conv_bias": false, "norm_eps": 1e-05, "rope_theta": 1000000.0, "vocab_size": 65536, "max_position_embeddings": 128000, "tie_embedding": true, "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "conv", "full_attention", "conv", "conv", "conv", "full_attention", "conv", "conv", "conv", "full_attention", "conv", "conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv"]})";
  const ModelSpec s = spec_from_hf_config(json::parse(cfg), "config.json");
  EXPECT_EQ(s.family, "lfm2_moe");
  EXPECT_EQ(s.num_params(), 8339929856 + 22 * 32);
  EXPECT_EQ(s.ffn, 7168);
  EXPECT_EQ(s.expert_ffn, 1792);
  EXPECT_FALSE(s.layer_moe(1));
  EXPECT_TRUE(s.layer_moe(2));
  EXPECT_TRUE(s.moe_sigmoid_router);
  EXPECT_FLOAT_EQ(s.moe_sigmoid_norm_eps, 1e-6f);
  EXPECT_EQ(s.state_layers(), 18);
  EXPECT_FALSE(s.all_linear_adapts_experts());  // (PEFT 0.21's all-linear: the Linears only, measured)
  auto err = [&](const char* key, const json& v) {
    json c = json::parse(cfg);
    if (v.is_null()) c.erase(key);
    else c[key] = v;
    try {
      (void)spec_from_hf_config(c, "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err("use_expert_bias", false).find("use_expert_bias"), std::string::npos);
  EXPECT_NE(err("num_dense_layers", 25).find("num_dense_layers"), std::string::npos);
  EXPECT_NE(err("layer_types", nullptr).find("layer_types"), std::string::npos);  // (Lfm2MoeConfig has no default)
}
