#include "cli/sampling_flags.h"

#include <charconv>
#include <cstdint>

#include "base/text_excerpt.h"

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

CLI::Validator seed_check() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        uint64_t v = 0;
        const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size())
          return "a seed is a whole number from 0 to 18446744073709551615, not " + excerpt(s);
        return "";
      },
      "SEED");
}

void add_sampling_flags(CLI::App& app, SamplingFlags& f, const std::string& seed_help, const std::string& stop_help) {
  app.add_option("--temperature", f.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  app.add_option("--top-k", f.top_k, "Keep the k most likely tokens (0 = off)")->capture_default_str();
  app.add_option("--top-p", f.top_p, "Nucleus sampling threshold (1 = off)")->capture_default_str();
  app.add_option("--repetition-penalty", f.repetition_penalty, "Penalty for tokens already seen (1 = off)")
      ->capture_default_str();
  app.add_option("--seed", f.seed, seed_help)->capture_default_str()->check(seed_check());
  app.add_option("--stop", f.stops, stop_help)->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

GenerationOptions generation_options(const CLI::App& app, const SamplingFlags& f, const GenerationConfig& gc,
                                     int64_t max_new_tokens, bool escape) {
  GenerationOptions gen;
  gen.max_new_tokens = max_new_tokens;
  gen.sampling = {f.temperature, f.top_k, f.top_p, f.repetition_penalty, f.seed};
  apply_generation_config(app, gc, gen.sampling);
  validate(gen.sampling);
  for (const std::string& s : f.stops) gen.stop_strings.push_back(escape ? unescape(s) : s);
  return gen;
}

}  // namespace qlora::cli
