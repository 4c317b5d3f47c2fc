// IBM Granite (model_type "granite", GraniteForCausalLM: granite-3.x 2B / 8B and their
// instruct models): Llama's block with four multipliers -- the embeddings times
// embedding_multiplier, attention scores scaled by attention_multiplier (instead of
// 1/sqrt(head_dim)), each branch output times residual_multiplier before its residual add,
// and the logits divided by logits_scaling. GGUF both ways as llama.cpp's "granite" (q/k rows
// permuted as its llama converter does; the multipliers under embedding_scale,
// attention.scale, residual_scale and logit_scale).
#include <cmath>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void granite_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
  const float attn = config::get_float(j, "attention_multiplier", where, 1.0f);
  s.embed_multiplier = config::get_float(j, "embedding_multiplier", where, 1.0f);
  s.residual_multiplier = config::get_float(j, "residual_multiplier", where, 1.0f);
  s.logit_divisor = config::get_float(j, "logits_scaling", where, 1.0f);
  for (float m : {attn, s.embed_multiplier, s.residual_multiplier, s.logit_divisor})
    if (!(m > 0.0f))
      fail(where, "granite's attention_multiplier, embedding_multiplier, residual_multiplier and logits_scaling "
                  "must be positive");
  s.attn_scale = attn;
}

void granite_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias) fail("config.json", "granite has biases on all attention Linears or none");
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = s.mlp_bias;
  j["attention_multiplier"] = s.attn_scale > 0.0f ? s.attn_scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  j["embedding_multiplier"] = s.embed_multiplier;
  j["residual_multiplier"] = s.residual_multiplier;
  j["logits_scaling"] = s.logit_divisor;
}

void granite_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  if (hp.attention_scale > 0.0f) s.attn_scale = hp.attention_scale;
  s.embed_multiplier = hp.embedding_scale;
  s.residual_multiplier = hp.residual_scale;
  s.logit_divisor = hp.logit_scale;
}

}  // namespace

const ModelFamily kGranite{"granite", "GraniteForCausalLM", "granite", 0, 2048, 10000.0f, false, false,
                           granite_read, granite_write, granite_gguf};

}  // namespace qlora::families
