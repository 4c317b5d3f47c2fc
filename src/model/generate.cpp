#include "model/generate.h"

#include <algorithm>
#include <chrono>
#include <span>
#include <optional>

#include "base/error.h"
#include "formats/tokenizer.h"

namespace qlora {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Length: return "length";
    case StopReason::EndOfGeneration: return "eos";
    case StopReason::StopString: return "stop string";
    case StopReason::Context: return "context";
    case StopReason::Cancelled: return "cancelled";
  }
  return "?";
}

double GenerationResult::prompt_tokens_per_second() const {
  return prompt_seconds > 0 ? static_cast<double>(prompt_ids.size()) / prompt_seconds : 0.0;
}
double GenerationResult::decode_tokens_per_second() const {
  return decode_seconds > 0 ? static_cast<double>(decode_steps) / decode_seconds : 0.0;
}

// ---- stop strings ------------------------------------------------------------------------

StopStringFilter::StopStringFilter(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopStringFilter::push(std::string_view piece) {
  if (stopped_) return {};
  held_.append(piece);
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    std::string out = held_.substr(0, first);
    held_.clear();
    stopped_ = true;
    return out;
  }
  // Hold back the longest tail that could still grow into a stop string.
  size_t keep = 0;
  for (const std::string& s : stops_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStringFilter::flush() {
  std::string out;
  out.swap(held_);
  return stopped_ ? std::string() : out;
}

// ---- the loop ----------------------------------------------------------------------------

namespace {

GenerationResult generate_impl(const Model& model, const Tokenizer* tok, const std::vector<int>& prompt_ids,
                               const GenerationOptions& opt, const TextCallback& on_text, PromptCache* cache) {
  using Clock = std::chrono::steady_clock;
  const ModelSpec& spec = model.spec();
  validate(opt.sampling);
  if (prompt_ids.empty()) fail("generate", "the prompt has no tokens");
  if (static_cast<int64_t>(prompt_ids.size()) > spec.max_positions)
    fail("generate", "the prompt has " + std::to_string(prompt_ids.size()) +
                         " tokens, more than the model's context of " + std::to_string(spec.max_positions));
  if (!tok && !opt.stop_strings.empty()) fail("generate", "stop strings need a tokenizer");
  if (opt.max_new_tokens < 0) fail("generate", "the number of new tokens must be >= 0");

  std::vector<int> stop_ids = opt.stop_ids;
  if (opt.ignore_eos) {
    stop_ids.clear();
  } else if (stop_ids.empty()) {
    stop_ids = spec.eos_ids;
    if (tok)
      for (int32_t id = 0; id < tok->vocab_size(); ++id)
        if (tok->is_end_of_generation(id)) stop_ids.push_back(id);
  }
  auto is_stop = [&](int id) { return std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end(); };

  GenerationResult res;
  res.prompt_ids = prompt_ids;
  auto emit = [&](const std::string& s) {
    if (!s.empty() && on_text) on_text(s);
  };

  std::optional<StreamDecoder> stream;
  if (tok) {
    stream.emplace(*tok);
    for (int id : prompt_ids) {
      std::string s = stream->push(id);
      if (opt.echo_prompt) emit(s);
    }
  }
  StopStringFilter filter(opt.stop_strings);

  const int64_t P = static_cast<int64_t>(prompt_ids.size());
  const int64_t capacity = std::min(spec.max_positions, P + std::max<int64_t>(opt.max_new_tokens, 1));
  std::unique_ptr<InferenceState> own;
  int64_t reused = 0;
  if (cache) {
    if (!cache->state) cache->state = std::make_unique<InferenceState>(model, capacity);
    // The shared prefix, but never the whole prompt: its last token must run to give logits.
    while (reused < static_cast<int64_t>(cache->ids.size()) && reused + 1 < P &&
           cache->ids[static_cast<size_t>(reused)] == prompt_ids[static_cast<size_t>(reused)])
      ++reused;
    cache->state->cache().set_length(reused);
    cache->ids.resize(static_cast<size_t>(reused));
  } else {
    own = std::make_unique<InferenceState>(model, capacity);
  }
  InferenceState& state = cache ? *cache->state : *own;
  res.prompt_tokens_reused = reused;
  std::vector<float> logits(static_cast<size_t>(spec.vocab));
  Sampler sampler(opt.sampling);
  std::vector<int> context = prompt_ids;

  auto t0 = Clock::now();
  if (opt.max_new_tokens > 0)
    forward(model, state, std::span<const int>(prompt_ids).subspan(static_cast<size_t>(reused)), logits.data());
  bool finished_text = false;
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    if (opt.cancelled && opt.cancelled()) {
      res.stop = StopReason::Cancelled;
      break;
    }
    if (i > 0) {
      if (state.position() >= spec.max_positions) {
        res.stop = StopReason::Context;
        break;
      }
      const int last = res.output_ids.back();
      forward(model, state, std::span<const int>(&last, 1), logits.data());
      ++res.decode_steps;
    }
    const int next = sampler.sample(logits, context);
    auto t1 = Clock::now();
    if (i == 0)
      res.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();
    else
      res.decode_seconds += std::chrono::duration<double>(t1 - t0).count();
    t0 = t1;
    if (is_stop(next)) {
      res.stop = StopReason::EndOfGeneration;
      break;
    }
    res.output_ids.push_back(next);
    context.push_back(next);
    if (stream) {
      const std::string out = filter.push(stream->push(next));
      res.text += out;
      emit(out);
      if (filter.stopped()) {
        res.stop = StopReason::StopString;
        finished_text = true;
        break;
      }
    }
    t0 = Clock::now();  // exclude the text callback from the timings
  }
  if (stream && !finished_text) {
    std::string out = filter.push(stream->flush());
    out += filter.flush();
    if (filter.stopped()) res.stop = StopReason::StopString;
    res.text += out;
    emit(out);
  }
  if (cache) {
    // The cache holds the prompt (when it ran) and every output token fed back in.
    cache->ids = opt.max_new_tokens > 0 ? prompt_ids : std::vector<int>(prompt_ids.begin(), prompt_ids.begin() + reused);
    cache->ids.insert(cache->ids.end(), res.output_ids.begin(), res.output_ids.begin() + res.decode_steps);
    if (static_cast<int64_t>(cache->ids.size()) != state.position()) {  // never trust a cache that disagrees
      cache->ids.clear();
      state.reset();
    }
  }
  return res;
}

}  // namespace

GenerationResult generate(const Model& model, const Tokenizer* tok, const std::vector<int>& prompt_ids,
                          const GenerationOptions& opt, const TextCallback& on_text, PromptCache* cache) {
  try {
    return generate_impl(model, tok, prompt_ids, opt, on_text, cache);
  } catch (...) {
    if (cache) {
      cache->ids.clear();
      if (cache->state) cache->state->reset();
    }
    throw;
  }
}

}  // namespace qlora
