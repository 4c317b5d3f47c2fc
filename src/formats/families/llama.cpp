// The llama family proper (LLaMA 1/2/3, SmolLM, TinyLlama, ...) and Mistral.
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void llama_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
}

void llama_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias)
    fail("config.json", "a llama model with biases on q/k/v but not o (or the reverse) has no config.json form");
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = s.mlp_bias;
}

// Mistral's sliding window applies to every layer (transformers' mask kv > q - window).
void mistral_read(const json& j, const std::string& where, ModelSpec& s) {
  s.sliding_window = config::get_int(j, "sliding_window", where, 0);
  if (s.sliding_window < 0)
    fail(where, "sliding_window must be positive or null, got " + std::to_string(s.sliding_window));
}

void mistral_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias || s.o_bias || s.mlp_bias) fail("config.json", "mistral has no config.json switch for biases");
  // Written even when off: a config without the key gets the class default (4096 in some
  // transformers versions), which would change the model.
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
}

}  // namespace

const ModelFamily kLlama{"llama", "LlamaForCausalLM", "llama", 0, 2048, 10000.0f, false, false,
                         llama_read, llama_write, nullptr};
const ModelFamily kMistral{"mistral", "MistralForCausalLM", "mistral", 0, 4096 * 32, 10000.0f, false, false,
                           mistral_read, mistral_write, nullptr, "llama"};

}  // namespace qlora::families
