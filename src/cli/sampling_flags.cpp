#include "cli/sampling_flags.h"

namespace qlora::cli {

std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    switch (s[++i]) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      case '"': out += '"'; break;
      case '\'': out += '\''; break;
      default: out += '\\'; out += s[i];
    }
  }
  return out;
}

void apply_generation_config(const CLI::App& app, const GenerationConfig& gc, SamplingParams& sampling) {
  auto given = [&](const char* name) { return app.count(name) > 0; };
  if (!given("--temperature")) {
    if (gc.do_sample && !*gc.do_sample) sampling.temperature = 0.0f;
    else if (gc.temperature) sampling.temperature = *gc.temperature;
  }
  if (!given("--top-k") && gc.top_k) sampling.top_k = *gc.top_k;
  if (!given("--top-p") && gc.top_p) sampling.top_p = *gc.top_p;
  if (!given("--repetition-penalty") && gc.repetition_penalty) sampling.repetition_penalty = *gc.repetition_penalty;
}

}  // namespace qlora::cli
