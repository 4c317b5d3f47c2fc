// StarCoder2 (model_type "starcoder2", Starcoder2ForCausalLM: 3B, 7B, 15B): grouped-query
// attention with a sliding window on every layer, full rotary, LayerNorms (with biases), a
// plain c_fc / tanh-GELU / c_proj MLP, biases on every Linear (use_bias) and a tied head
// by default. GGUF both ways as llama.cpp's "starcoder2", whose graph has no sliding window
// (a GGUF carries none, as llama.cpp's converter writes it).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr HfRename kStarcoder2Renames[] = {
    {".mlp.c_fc.", ".mlp.up_proj."},
    {".mlp.c_proj.", ".mlp.down_proj."},
};

void starcoder2_read(const json& j, const std::string& where, ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.act = config::gelu_family_activation(j, "hidden_act", where, "starcoder2", "gelu_pytorch_tanh", /*relu_ok=*/false);
  s.norm_eps = config::get_float(j, "norm_epsilon", where, 1e-5f);
  s.qkv_bias = s.o_bias = s.mlp_bias = config::get_bool(j, "use_bias", where, true);
  s.sliding_window = config::get_int(j, "sliding_window", where, 0);
  if (s.sliding_window < 0)
    fail(where, "sliding_window must be positive or null, got " + std::to_string(s.sliding_window));
}

void starcoder2_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.mlp != MlpKind::Plain || s.fused_qkv || s.parallel_residual)
    fail("config.json", "not a starcoder2 block");
  if (s.qkv_bias != s.o_bias || s.qkv_bias != s.mlp_bias) fail("config.json", "starcoder2 has biases on every Linear or none");
  j["hidden_act"] = s.act == Activation::Gelu ? "gelu" : "gelu_pytorch_tanh";
  j["norm_epsilon"] = s.norm_eps;
  j["use_bias"] = s.qkv_bias;
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
  j["residual_dropout"] = 0.0;
  j["embedding_dropout"] = 0.0;
}

void starcoder2_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.act = Activation::GeluTanh;
}

}  // namespace

const ModelFamily kStarcoder2 = [] {
  ModelFamily f{"starcoder2", "Starcoder2ForCausalLM", "starcoder2", 0, 4096, 10000.0f, true, false, starcoder2_read,
                starcoder2_write, starcoder2_gguf, {}, false, kStarcoder2Renames, true};
  return f;
}();

}  // namespace qlora::families
