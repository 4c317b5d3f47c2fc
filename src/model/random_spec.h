#pragma once
// `--model random:...`: a model of a given shape whose weights are generated in memory
// (model/random_model.h) instead of read from a file. Models of 33B or 65B parameters
// cannot be kept here as files of real weights, yet their speed and memory are what
// issue 13 measures; a random model of the same shape costs the same time and memory.
// It is NOT a trained model: every place that loads one says so (random_model_notice).
//
// Syntax (the part after "random:" is a comma-separated list):
//   random:PRESET[,key=value...]      a known shape, optionally with some keys overridden
//   random:key=value,...              an explicit shape: hidden, layers, ffn, heads and vocab
//                                     are required
// Keys: hidden, layers, ffn, heads, kv_heads (default: heads), head_dim (default:
// hidden / heads), vocab, tied (0/1), max_pos, rope_theta, norm_eps, seed (default 0).
// Presets: random_model_presets().
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/model_spec.h"

namespace qlora {

inline constexpr std::string_view kRandomModelPrefix = "random:";

// A parsed `random:` model source.
struct RandomModelSpec {
  ModelSpec spec;     // validated; bos/eos are those of the byte tokenizer (1, 2)
  uint64_t seed = 0;  // every weight is a pure function of (seed, tensor name, position)
  std::string preset; // "" for an explicit shape
  // The source in one normal form ("random:llama-7b", "random:llama-7b,layers=2,seed=3"):
  // what adapters and metrics record as the base model.
  std::string canonical;
};

// True when `model` names a random model (starts with "random:"), whatever follows.
bool is_random_model(std::string_view model);

// Parses `model` ("random:..."). Throws Error naming `model` and the problem: an unknown
// preset or key (listing the valid ones), a value that is not a number of the right kind,
// a key given twice, a missing required key of an explicit shape, or a shape that
// ModelSpec::validate refuses.
RandomModelSpec parse_random_model(std::string_view model);

// The preset names, in size order: smollm2-135m, tinyllama-1.1b, llama-7b, llama-13b,
// llama-33b, llama-65b, llama3-8b.
std::vector<std::string> random_model_presets();

// The warning every command prints when it loads one, e.g.
// "random weights (llama-7b shape, seed 0): NOT a trained model — for speed and memory
// measurements only".
std::string random_model_notice(const RandomModelSpec& r);

// Throws Error when `model` is a random model: `command` ("qlora merge") would write or
// read real weights, and a random model has none worth keeping.
void refuse_random_model(std::string_view model, std::string_view command);

}  // namespace qlora
