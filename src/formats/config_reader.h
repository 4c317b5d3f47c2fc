#pragma once
// Reading config.json values with errors a user can act on: each names the file, the key and
// what it holds. Shared by the config.json reader (hf_config.cpp) and the family files
// (formats/families/), which read their own keys.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_spec.h"

namespace qlora::config {

using nlohmann::json;

// A config value as JSON, short and escaped (a config.json is input like any other).
std::string shown(const json& v);
// The value of `key`, or null when absent or JSON null.
const json* find_key(const json& j, const char* key);
// `key` as an integer / number / boolean; `dflt` when absent (an Error when absent without
// a default, or of the wrong type).
int64_t get_int(const json& j, const char* key, const std::string& where, std::optional<int64_t> dflt = {});
float get_float(const json& j, const char* key, const std::string& where, float dflt);
bool get_bool(const json& j, const char* key, const std::string& where, bool dflt);
// A float as Python's json writes it: a number, or (NaN / infinities, which JSON lacks)
// transformers 5's {"__float__": "Infinity"} or the string "Infinity" / "inf" (either sign).
// nullopt for anything else.
std::optional<double> python_float(const json& v);
// Python's json.dumps writes NaN, Infinity and -Infinity as bare words (transformers 4's
// save_pretrained: Mamba2's time_step_limit [0.0, Infinity]), which JSON has not: the text with
// each such word outside strings replaced by {"__float__": "<word>"} (python_float reads it),
// the rest unchanged.
std::string python_json_literals(std::string_view text);
// An id or a list of ids (eos_token_id may be either).
std::vector<int> get_ids(const json& j, const char* key, const std::string& where);
// layer_types as one flag per layer, true for `flagged`, false for `other`, the only values
// allowed; nullopt when the key is absent or null. An Error (naming `where`) when it does not
// list n_layers entries or holds another type.
std::optional<std::vector<bool>> layer_type_flags(const json& j, int64_t n_layers, const std::string& where,
                                                  const char* flagged, const char* other);
// layer_types as one flag per layer, true for "sliding_attention" (the other value allowed is
// "full_attention"); nullopt when the key is absent or null. An Error when it does not list
// n_layers entries or holds another type.
std::optional<std::vector<bool>> sliding_layer_types(const json& j, int64_t n_layers, const std::string& where);
// Every interval-th layer flagged ((l + 1) % interval == 0), layers of them.
std::vector<bool> every_nth_layer(int64_t layers, int64_t interval);
// The layers without rotary (ModelSpec::nope_layers) of SmolLM3's and Llama 4's keys: no_rope_layers
// (one 0 / 1 per layer, or a boolean, 1 = rotates) or, when absent or null (or, with
// `empty_is_default`, [] -- Llama 4's released configs), every no_rope_layer_interval-th layer
// (default 4). Empty when every layer rotates. An Error naming the key for anything else.
std::vector<bool> nope_layers(const json& j, int64_t n_layers, const std::string& where, bool empty_is_default);
// A plain MLP's GELU-family activation under `key` (`dflt` when absent): gelu_new,
// gelu_pytorch_tanh and gelu_fast are the tanh GELU, gelu the erf one, relu ReLU when
// `relu_ok`. Anything else is an Error naming `family` and what it accepts.
Activation gelu_family_activation(const json& j, const char* key, const std::string& where, const std::string& family,
                                  const char* dflt, bool relu_ok);
// max_position_embeddings before the spec has it (yarn's default factor needs it), 0 if absent.
int64_t max_positions_hint(const json& j);
// j[shared] = j[own] when j has `own` and not `shared`: a family's own spelling of a shared
// key (gpt2's n_embd for hidden_size), for ModelFamily::normalize_config.
void alias_key(json& j, const char* shared, const char* own);
// The rope type of a rope_parameters / rope_scaling object ("rope_type", or the older
// "type") and its parameters, as transformers' rope init functions read them; `key` names
// the object in errors. Unsupported types are an Error.
RopeScaling parse_rope_scaling(const json& rp, const char* key, int64_t max_positions, const std::string& where);
// LongRope ("longrope", or phi3's older "su" and "yarn"): short_factor, long_factor,
// original_max_position_embeddings (from rp, else `original_max`), factor and
// attention_factor as transformers' _compute_longrope_parameters derives them.
RopeScaling parse_longrope(const json& rp, const char* key, int64_t max_positions, int64_t original_max,
                           const std::string& where);
// transformers 5's rope_parameters keyed by layer type ({"full_attention": {...},
// "sliding_attention": {...}}): the full layers' rope_theta (default `full_theta`) and scaling
// into s.rope_theta / s.rope_scaling, the sliding layers' into s.rope_theta_local /
// s.rope_scaling_local, and s.rope_local set. False (s untouched) when rope_parameters is
// absent or not in that form; an Error when one of the two objects is missing.
bool layer_type_rope(const json& j, const std::string& where, ModelSpec& s, float full_theta, float sliding_theta);
// The inverse of parse_rope_scaling: the rope_scaling object of `rs` (null for none), in the
// form transformers 4 and 5 both read. An Error for what config.json cannot express (a GGUF's
// rope_freqs tensor).
nlohmann::ordered_json rope_scaling_json(const RopeScaling& rs);
// One rope_parameters entry: {"rope_type", "rope_theta", and rope_scaling_json's fields}.
nlohmann::ordered_json rope_parameters_json(float theta, const RopeScaling& rs);
// config.json's layer_types of the spec's windows: "sliding_attention" / "full_attention" per layer.
nlohmann::ordered_json layer_types_json(const ModelSpec& s);

}  // namespace qlora::config
