#include "model/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <span>
#include <memory>
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

Generation::Generation(const Model& model, const Tokenizer* tok, const std::vector<int>& prompt_ids,
                       const GenerationOptions& opt, TextCallback on_text, PromptCache* cache, int64_t prefill_chunk)
    : model_(model), tok_(tok), opt_(opt), on_text_(std::move(on_text)), cache_(cache), prefill_chunk_(prefill_chunk) {
  setup(prompt_ids);
  const ModelSpec& spec = model.spec();
  const int64_t P = static_cast<int64_t>(prompt_ids.size());
  const int64_t capacity = std::min(spec.max_positions, P + std::max<int64_t>(opt.max_new_tokens, 1));
  int64_t reused = 0;
  if (cache) {
    if (!cache->state) cache->state = std::make_unique<InferenceState>(model, capacity);
    // The shared prefix, but never the whole prompt: its last token must run to give logits.
    while (reused < static_cast<int64_t>(cache->ids.size()) && reused + 1 < P &&
           cache->ids[static_cast<size_t>(reused)] == prompt_ids[static_cast<size_t>(reused)])
      ++reused;
    cache->state->cache().set_length(reused);
    cache->ids.resize(static_cast<size_t>(reused));
    state_ = cache->state.get();
  } else {
    own_ = std::make_unique<InferenceState>(model, capacity);
    state_ = own_.get();
  }
  res_.prompt_tokens_reused = reused;

  t0_ = Clock::now();
  if (opt.max_new_tokens == 0) return;
  prefilled_ = reused;
  prefilling_ = true;
  if (prefill_chunk_ <= 0) {  // the whole prompt now
    prefill_chunk_ = P;
    prefill_step();
  }
}

void Generation::prefill_step() {
  check(prefilling_, "generate", "prefill_step() after the prompt ran");
  const std::vector<int>& prompt = res_.prompt_ids;
  const int64_t P = static_cast<int64_t>(prompt.size());
  const int64_t n = std::min(prefill_chunk_, P - prefilled_);
  const bool last = prefilled_ + n == P;
  std::vector<float> logits(last ? static_cast<size_t>(model_.spec().vocab) : 0);
  forward(model_, *state_, std::span<const int>(prompt).subspan(static_cast<size_t>(prefilled_), static_cast<size_t>(n)),
          last ? logits.data() : nullptr);
  prefilled_ += n;
  if (opt_.cancelled && opt_.cancelled()) {
    prefilling_ = false;
    res_.stop = StopReason::Cancelled;
    return;
  }
  if (!last) return;
  prefilling_ = false;
  prompt_logits_ = logits;  // (for fork())
  sample(logits.data(), /*prompt=*/true);
}

// Checks the request and sets up everything but the state and the prompt pass.
void Generation::setup(const std::vector<int>& prompt_ids) {
  const ModelSpec& spec = model_.spec();
  const GenerationOptions& opt = opt_;
  validate(opt.sampling);
  if (prompt_ids.empty()) fail("generate", "the prompt has no tokens");
  if (static_cast<int64_t>(prompt_ids.size()) > spec.max_positions)
    fail("generate", "the prompt has " + std::to_string(prompt_ids.size()) +
                         " tokens, more than the model's context of " + std::to_string(spec.max_positions));
  if (!tok_ && !opt.stop_strings.empty()) fail("generate", "stop strings need a tokenizer");
  if (opt.max_new_tokens < 0) fail("generate", "the number of new tokens must be >= 0");

  stop_ids_ = opt.stop_ids;
  if (opt.ignore_eos) {
    stop_ids_.clear();
  } else if (stop_ids_.empty()) {
    stop_ids_ = spec.eos_ids;
    if (tok_)
      for (int32_t id = 0; id < tok_->vocab_size(); ++id)
        if (tok_->is_end_of_generation(id)) stop_ids_.push_back(id);
  }

  res_.prompt_ids = prompt_ids;
  if (tok_) {
    stream_ = std::make_unique<StreamDecoder>(*tok_);
    for (int id : prompt_ids) {
      std::string s = stream_->push(id);
      if (opt.echo_prompt && !s.empty() && on_text_) on_text_(s);
    }
  }
  filter_ = std::make_unique<StopStringFilter>(opt.stop_strings);
  sampler_ = std::make_unique<Sampler>(opt.sampling);
  context_ = prompt_ids;
}

Generation::Generation(const Generation& from, const GenerationOptions& opt, TextCallback on_text)
    : model_(from.model_), tok_(from.tok_), opt_(opt), on_text_(std::move(on_text)), cache_(nullptr) {
  setup(from.res_.prompt_ids);
  const ModelSpec& spec = model_.spec();
  const int64_t P = static_cast<int64_t>(from.res_.prompt_ids.size());
  own_ = std::make_unique<InferenceState>(model_, std::min(spec.max_positions, P + std::max<int64_t>(opt.max_new_tokens, 1)));
  state_ = own_.get();
  state_->cache().copy_from(from.state_->cache(), P);
  res_.prompt_tokens_reused = P;
  t0_ = Clock::now();
  if (opt.max_new_tokens == 0) return;
  if (opt.cancelled && opt.cancelled()) {
    res_.stop = StopReason::Cancelled;
    return;
  }
  prompt_logits_ = from.prompt_logits_;
  std::vector<float> logits = prompt_logits_;
  sample(logits.data(), /*prompt=*/true);
}

bool Generation::can_fork() const {
  return state_ && !prefilling_ && produced_ == 1 && res_.decode_steps == 0 && !prompt_logits_.empty() &&
         state_->position() == static_cast<int64_t>(res_.prompt_ids.size()) && can_forward_batch(model_);
}

std::unique_ptr<Generation> Generation::fork(const GenerationOptions& opt, TextCallback on_text) const {
  check(can_fork(), "generate",
        "fork() takes a generation right after its prompt pass, on the host");
  return std::unique_ptr<Generation>(new Generation(*this, opt, std::move(on_text)));
}

Generation::~Generation() = default;

int Generation::next_token() const {
  check(running_, "generate", "next_token() after generation ended");
  return res_.output_ids.back();
}

void Generation::advance(float* logits) {
  check(running_, "generate", "advance() after generation ended");
  ++res_.decode_steps;
  sample(logits, /*prompt=*/false);
}

void Generation::sample(float* logits, bool prompt) {
  running_ = false;
  const int64_t V = model_.spec().vocab;
  // Ids past the tokenizer's vocabulary (an embedding padded beyond it, as Qwen's and others')
  // name no text: never sampled, as transformers' padded rows are never meant to be.
  const int64_t sampled = tok_ ? std::min<int64_t>(V, tok_->vocab_size()) : V;
  std::fill(logits + sampled, logits + V, -std::numeric_limits<float>::infinity());
  // NaN or +infinity in the logits means the weights (or the activations) are broken: say so
  // rather than sample from garbage (an argmax over NaN picks token 0 every time, silently).
  for (int64_t i = 0; i < sampled; ++i)
    if (std::isnan(logits[i]) || logits[i] == std::numeric_limits<float>::infinity())
      fail("generate", "the model's logits " + std::string(prompt ? "after the prompt" : "at generated token " +
                                                                       std::to_string(produced_)) +
                           " are not finite (logit " + std::to_string(i) + " is " +
                           (std::isnan(logits[i]) ? "NaN" : "+inf") +
                           "): the model's weights hold NaN / infinite values, or its activations overflowed " +
                           "(fp16 compute overflows where bf16 / fp32 do not)");
  const int next = sampler_->sample(std::span<float>(logits, static_cast<size_t>(V)), context_);
  ++produced_;
  const auto t1 = Clock::now();
  (prompt ? res_.prompt_seconds : res_.decode_seconds) += std::chrono::duration<double>(t1 - t0_).count();
  t0_ = t1;
  if (std::find(stop_ids_.begin(), stop_ids_.end(), next) != stop_ids_.end()) {
    res_.stop = StopReason::EndOfGeneration;
    return;
  }
  res_.output_ids.push_back(next);
  context_.push_back(next);
  if (stream_) {
    const std::string out = filter_->push(stream_->push(next));
    res_.text += out;
    if (!out.empty() && on_text_) on_text_(out);
    if (filter_->stopped()) {
      res_.stop = StopReason::StopString;
      finished_text_ = true;
      return;
    }
  }
  t0_ = Clock::now();  // exclude the text callback from the timings
  check_continue();
}

void Generation::check_continue() {
  // Before the next token: the length, a cancellation, the end of the context.
  if (produced_ >= opt_.max_new_tokens) {
    res_.stop = StopReason::Length;
    return;
  }
  if (opt_.cancelled && opt_.cancelled()) {
    res_.stop = StopReason::Cancelled;
    return;
  }
  if (state_->position() >= model_.spec().max_positions) {
    res_.stop = StopReason::Context;
    return;
  }
  running_ = true;
}

GenerationResult Generation::finish() {
  if (stream_ && !finished_text_) {
    std::string out = filter_->push(stream_->flush());
    out += filter_->flush();
    if (filter_->stopped()) res_.stop = StopReason::StopString;
    res_.text += out;
    if (!out.empty() && on_text_) on_text_(out);
    finished_text_ = true;
  }
  if (cache_) {
    // The cache holds the prompt (when it ran) and every output token fed back in.
    const std::vector<int>& prompt = res_.prompt_ids;
    cache_->ids = opt_.max_new_tokens > 0
                      ? prompt
                      : std::vector<int>(prompt.begin(), prompt.begin() + res_.prompt_tokens_reused);
    cache_->ids.insert(cache_->ids.end(), res_.output_ids.begin(), res_.output_ids.begin() + res_.decode_steps);
    if (static_cast<int64_t>(cache_->ids.size()) != state_->position()) {  // never trust a cache that disagrees
      cache_->ids.clear();
      state_->reset();
    }
  }
  return std::move(res_);
}

GenerationResult generate(const Model& model, const Tokenizer* tok, const std::vector<int>& prompt_ids,
                          const GenerationOptions& opt, const TextCallback& on_text, PromptCache* cache) {
  try {
    Generation g(model, tok, prompt_ids, opt, on_text, cache);
    std::vector<float> logits(static_cast<size_t>(model.spec().vocab));
    while (g.running()) {
      const int last = g.next_token();
      forward(model, g.state(), std::span<const int>(&last, 1), logits.data());
      g.advance(logits.data());
    }
    return g.finish();
  } catch (...) {
    if (cache) {
      cache->ids.clear();
      if (cache->state) cache->state->reset();
    }
    throw;
  }
}

int64_t forward_next_tokens(const Model& model, InferenceState& work, std::span<Generation* const> gens,
                            std::vector<float>& logits) {
  const int64_t V = model.spec().vocab;
  logits.resize(gens.size() * static_cast<size_t>(V));
  std::vector<InferenceState*> states;
  std::vector<int> tokens;
  for (Generation* g : gens) {
    states.push_back(&g->state());
    tokens.push_back(g->next_token());
  }
  if (gens.size() > 1 && can_forward_batch(model)) {
    forward_batch(model, work, states, tokens, logits.data());
    return 1;
  }
  for (size_t i = 0; i < gens.size(); ++i)
    forward(model, *states[i], std::span<const int>(&tokens[i], 1), logits.data() + i * static_cast<size_t>(V));
  return static_cast<int64_t>(gens.size());
}

BatchGenerationResult generate_batch(const Model& model, const Tokenizer* tok,
                                     const std::vector<std::vector<int>>& prompts,
                                     const std::vector<GenerationOptions>& opts, const BatchTextCallback& on_text) {
  using Clock = std::chrono::steady_clock;
  check(prompts.size() == opts.size(), "generate", "one set of options per prompt");
  BatchGenerationResult out;
  std::vector<std::unique_ptr<Generation>> gens;
  auto t0 = Clock::now();
  for (size_t i = 0; i < prompts.size(); ++i) {
    TextCallback cb;
    if (on_text) cb = [&on_text, i](std::string_view s) { on_text(i, s); };
    // The same prompt again: fork the first generation of it (its prompt pass shared).
    Generation* same = nullptr;
    for (size_t j = 0; j < i && !same; ++j)
      if (prompts[j] == prompts[i] && gens[j]->can_fork()) same = gens[j].get();
    gens.push_back(same ? same->fork(opts[i], cb) : std::make_unique<Generation>(model, tok, prompts[i], opts[i], cb));
  }
  auto t1 = Clock::now();
  out.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();
  const int64_t V = model.spec().vocab;
  InferenceState work(model, 1);
  std::vector<float> logits;
  for (;;) {
    std::vector<Generation*> run;
    for (auto& g : gens)
      if (g->running()) run.push_back(g.get());
    if (run.empty()) break;
    out.decode_passes += forward_next_tokens(model, work, run, logits);
    for (size_t i = 0; i < run.size(); ++i) run[i]->advance(logits.data() + i * static_cast<size_t>(V));
    out.decoded_tokens += static_cast<int64_t>(run.size());
  }
  out.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  for (auto& g : gens) out.results.push_back(g->finish());
  return out;
}

}  // namespace qlora
