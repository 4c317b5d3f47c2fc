#pragma once
// What `generate` and `chat` share for sampling: the backslash escapes of --escape, and the
// sampling settings from the command line over the model's generation_config.json.
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "formats/hf_config.h"
#include "model/generate.h"

namespace qlora::cli {

// The sampling options of generate and chat (defaults as llama.cpp's).
struct SamplingFlags {
  float temperature = 0.8f, top_p = 0.95f, repetition_penalty = 1.0f;
  int top_k = 40;
  uint64_t seed = 42;
  std::vector<std::string> stops;
};

// A --seed option's check: a whole number 0 .. 2^64 - 1 as typed (CLI11 alone wraps -1 and
// saturates 99999999999999999999 to the same seed, silently).
CLI::Validator seed_check();

// Adds --temperature, --top-k, --top-p, --repetition-penalty, --seed (`seed_help`) and the
// repeatable --stop (`stop_help`).
void add_sampling_flags(CLI::App& app, SamplingFlags& f, const std::string& seed_help, const std::string& stop_help);

// The GenerationOptions the flags describe for `max_new_tokens`: sampling over
// generation_config.json's defaults (apply_generation_config), stop strings unescaped when
// `escape`. Throws Error naming the option for out-of-range sampling values.
GenerationOptions generation_options(const CLI::App& app, const SamplingFlags& f, const GenerationConfig& gc,
                                     int64_t max_new_tokens, bool escape);

// "\n", "\t", "\r", "\\", "\"", "\'" -> the characters; any other "\x" stays as written.
std::string unescape(const std::string& s);

// `gen.sampling` as given on the command line, except that options the user did not give
// (`app.count(name) == 0`) take generation_config.json's values: do_sample false means
// greedy; temperature, top_k, top_p and repetition_penalty when present.
void apply_generation_config(const CLI::App& app, const GenerationConfig& gc, SamplingParams& sampling);

}  // namespace qlora::cli
