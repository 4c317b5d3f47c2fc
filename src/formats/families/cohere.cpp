// Cohere (model_type "cohere", CohereForCausalLM: Command R 35B / 104B (plus), Aya 23 and
// Aya Expanse): one LayerNorm without bias feeding attention and the SwiGLU MLP in parallel
// (x + attn(ln(x)) + mlp(ln(x))), rotary in adjacent pairs (Cohere's rotate_half interleaves),
// the logits multiplied by logit_scale, a tied head; with use_qk_norm (Command R+) a LayerNorm
// per head of q and of k with each head's own weights. GGUF both ways as llama.cpp's "command-r".
// Cohere 2 (model_type "cohere2": Command R7B, Command A): the same block with sliding windows
// on three layers of four (layer_types, or sliding_window_pattern 4) and rotary on those
// only -- the full-attention layers are NoPE; llama.cpp's "cohere2".
#include <algorithm>
#include <vector>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void cohere_block(ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.norm_bias = false;
  s.parallel_residual = s.shared_branch_norm = true;
  s.rope_interleaved = true;
}

void cohere_read(const json& j, const std::string& where, ModelSpec& s) {
  cohere_block(s);
  s.norm_eps = config::get_float(j, "layer_norm_eps", where, 1e-5f);
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.logit_multiplier = config::get_float(j, "logit_scale", where, 0.0625f);
  if (!(s.logit_multiplier > 0.0f)) fail(where, "logit_scale must be positive");
  // Command R+: a LayerNorm per head of q and of k, each head with its own weights (no bias).
  s.qk_norm = s.qk_norm_head_weights = config::get_bool(j, "use_qk_norm", where, false);
}

// Cohere 2's layers: sliding (with rotary) or full (without), from layer_types or every
// `pattern`-th layer full.
void cohere2_layers(ModelSpec& s, int64_t window, const std::vector<bool>& slides) {
  s.sliding_window = window;
  s.sliding_layers = slides;
  s.nope_layers.assign(slides.size(), false);
  for (size_t l = 0; l < slides.size(); ++l) s.nope_layers[l] = !slides[l];
}

void cohere2_read(const json& j, const std::string& where, ModelSpec& s) {
  cohere_read(j, where, s);
  const int64_t window = config::get_int(j, "sliding_window", where, 4096);
  if (window <= 0) fail(where, "sliding_window must be positive, got " + std::to_string(window));
  std::vector<bool> slides(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    slides = std::move(*lt);
  } else {
    const int64_t pattern = config::get_int(j, "sliding_window_pattern", where, 4);
    if (pattern <= 0) fail(where, "sliding_window_pattern must be positive");
    for (int64_t l = 0; l < s.n_layers; ++l) slides[static_cast<size_t>(l)] = (l + 1) % pattern != 0;
  }
  cohere2_layers(s, window, slides);
}

void cohere_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.norm_bias || !s.parallel_residual || !s.shared_branch_norm ||
      !s.rope_interleaved || s.mlp != MlpKind::SwiGLU || s.mlp_bias || s.qkv_bias != s.o_bias)
    fail("config.json", "not a cohere block");
  j["layer_norm_eps"] = s.norm_eps;
  j["attention_bias"] = s.qkv_bias;
  j["logit_scale"] = s.logit_multiplier;
  j["use_qk_norm"] = s.qk_norm_head_weights;
  if (s.qk_norm && !s.qk_norm_head_weights) fail("config.json", "cohere's q/k norms have a weight per head");
}

void cohere2_write(const ModelSpec& s, ordered_json& j) {
  cohere_write(s, j);
  j.erase("use_qk_norm");
  ordered_json types = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) {
    if (s.layer_slides(l) != s.layer_rotates(l))
      fail("config.json", "cohere2 rotates exactly its sliding layers; this model does not");
    types.push_back(s.layer_slides(l) ? "sliding_attention" : "full_attention");
  }
  j["sliding_window"] = s.sliding_window;
  j["layer_types"] = types;
}

void cohere_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  cohere_block(s);
  s.logit_multiplier = hp.logit_scale;
  s.qk_norm = s.qk_norm_head_weights = hp.qk_norm_tensors;  // (Command R+: attn_q_norm (head_dim, heads))
}

// llama.cpp's cohere2: the window from attention.sliding_window, three sliding layers of four
// (its fixed pattern), rotary on the sliding ones only.
void cohere2_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  cohere_gguf(hp, s);
  std::vector<bool> slides = hp.swa_layers;
  if (slides.empty())
    for (int64_t l = 0; l < hp.num_layers; ++l) slides.push_back((l + 1) % 4 != 0);
  cohere2_layers(s, hp.sliding_window > 0 ? hp.sliding_window : 4096, slides);
}

}  // namespace

const ModelFamily kCohere{"cohere", "CohereForCausalLM", "command-r", 0, 8192, 10000.0f, true, false,
                          cohere_read, cohere_write, cohere_gguf};
const ModelFamily kCohere2{"cohere2", "Cohere2ForCausalLM", "cohere2", 0, 8192, 10000.0f, true, false,
                           cohere2_read, cohere2_write, cohere2_gguf};

}  // namespace qlora::families
