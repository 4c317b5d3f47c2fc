#pragma once
// What `generate` and `chat` share for sampling: the backslash escapes of --escape, and the
// sampling settings from the command line over the model's generation_config.json.
#include <CLI/CLI.hpp>
#include <string>

#include "formats/hf_config.h"
#include "model/generate.h"

namespace qlora::cli {

// "\n", "\t", "\r", "\\", "\"", "\'" -> the characters; any other "\x" stays as written.
std::string unescape(const std::string& s);

// `gen.sampling` as given on the command line, except that options the user did not give
// (`app.count(name) == 0`) take generation_config.json's values: do_sample false means
// greedy; temperature, top_k, top_p and repetition_penalty when present.
void apply_generation_config(const CLI::App& app, const GenerationConfig& gc, SamplingParams& sampling);

}  // namespace qlora::cli
