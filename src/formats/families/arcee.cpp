// Arcee (model_type "arcee", ArceeForCausalLM: AFM-4.5B): Llama's attention with a plain
// up_proj / relu^2 / down_proj MLP (no gate; hidden_act "relu2"). GGUF both ways as llama.cpp's
// "arcee" (q/k rows permuted as its llama converter does).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void arcee_read(const json& j, const std::string& where, ModelSpec& s) {
  s.mlp = MlpKind::Plain;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
  const json* a = config::find_key(j, "hidden_act");
  const std::string act = a && a->is_string() ? a->get<std::string>() : (a ? "" : "relu2");
  if (act == "relu2")
    s.act = Activation::Relu2;
  else if (act == "relu")
    s.act = Activation::Relu;
  else
    fail(where, "hidden_act " + (a ? config::shown(*a) : std::string("?")) + " is not supported for arcee (relu2, relu)");
}

void arcee_write(const ModelSpec& s, ordered_json& j) {
  if (s.mlp != MlpKind::Plain || s.qkv_bias != s.o_bias || (s.act != Activation::Relu2 && s.act != Activation::Relu))
    fail("config.json", "not an arcee block");
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = s.mlp_bias;
  j["hidden_act"] = s.act == Activation::Relu2 ? "relu2" : "relu";
}

void arcee_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) {
  s.mlp = MlpKind::Plain;
  s.act = Activation::Relu2;  // (llama.cpp's arcee graph: relu^2)
}

}  // namespace

const ModelFamily kArcee{"arcee", "ArceeForCausalLM", "arcee", 0, 4096, 10000.0f, false, false, arcee_read, arcee_write,
                         arcee_gguf, {}, false, {}, true};

}  // namespace qlora::families
