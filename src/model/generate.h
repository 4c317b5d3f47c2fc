#pragma once
// The generation loop: prompt -> forward (KV cache) -> sample -> forward one token -> ...
// until max_new_tokens, an end-of-generation token, a stop string, or the end of the
// context. Text is streamed as it is produced, only ever in complete UTF-8 characters, and
// never showing (any part of) a stop string.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"

namespace qlora {

class Tokenizer;
class StreamDecoder;
class StopStringFilter;

struct GenerationOptions {
  int64_t max_new_tokens = 128;
  SamplingParams sampling;
  // Generation stops before any of these strings; the text ends just before it.
  std::vector<std::string> stop_strings;
  // Tokens that end generation (not emitted). Empty: the model's eos ids plus the
  // tokenizer's end-of-generation ids.
  std::vector<int> stop_ids;
  // Never stop at a token (stop_ids and the defaults are ignored; stop strings still
  // apply): exactly max_new_tokens, as llama.cpp's --ignore-eos. For timing, and for random
  // models (model/random_model.h), whose eos is a token drawn by chance.
  bool ignore_eos = false;
  // Stream the prompt's own text (decoded from its ids) before the continuation.
  bool echo_prompt = false;
  // Asked before each new token (may be empty): true ends generation there, with
  // StopReason::Cancelled (Ctrl-C in `qlora chat`, a client gone or a shutdown in `serve`).
  std::function<bool()> cancelled;
};

enum class StopReason { Length, EndOfGeneration, StopString, Context, Cancelled };
// "length", "eos", "stop string", "context", "cancelled"
const char* stop_reason_name(StopReason r);

struct GenerationResult {
  std::vector<int> prompt_ids;
  std::vector<int> output_ids;  // generated ids, excluding a final end-of-generation id
  std::string text;             // text of output_ids, cut before a stop string
  StopReason stop = StopReason::Length;
  int64_t prompt_tokens_reused = 0;  // prompt tokens whose keys/values came from a PromptCache (or a fork())
  double prompt_seconds = 0;    // the prompt's forward pass (and the first sample)
  double decode_seconds = 0;    // every later forward + sample
  int64_t decode_steps = 0;     // forward passes of one token
  double prompt_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// Called with each newly available piece of text (complete UTF-8).
using TextCallback = std::function<void(std::string_view)>;

// The KV cache of a conversation, kept from one generate() call to the next (`qlora chat`):
// a call runs only the part of its prompt after the longest prefix it shares with `ids`,
// so each turn of a chat costs its new tokens, not the whole history again.
struct PromptCache {
  std::unique_ptr<InferenceState> state;
  std::vector<int> ids;  // the tokens whose keys and values `state` holds, in order
};

// Generates a continuation of `prompt_ids` (which should already include BOS when the
// model wants one). `tokenizer` may be null: then no text is produced and stop strings
// are not allowed. Throws Error for an empty prompt, a prompt longer than the context, or
// invalid sampling parameters.
// With `cache`, the prompt's shared prefix is taken from it and the cache is left holding
// this call's prompt and output (emptied if the call throws).
GenerationResult generate(const Model& model, const Tokenizer* tokenizer, const std::vector<int>& prompt_ids,
                          const GenerationOptions& opt, const TextCallback& on_text = {}, PromptCache* cache = nullptr);

// One generation, step by step: generate() runs one to the end; `qlora serve` runs several
// at once, their next tokens through forward_batch together (model/model.h). The same
// checks, stops, streaming and result as generate(), which is built on it.
class Generation {
 public:
  // Validates the request (throws Error as generate()), runs the prompt (its shared prefix
  // from `cache`, as generate()) and samples the first token. `model`, `tokenizer` and
  // `cache` are borrowed for the object's life.
  // prefill_chunk > 0: the prompt is not run here but prefill_step() by prefill_step(), at most
  // that many tokens each (a server interleaves them with other requests' decoding steps).
  Generation(const Model& model, const Tokenizer* tokenizer, const std::vector<int>& prompt_ids,
             const GenerationOptions& opt, TextCallback on_text = {}, PromptCache* cache = nullptr,
             int64_t prefill_chunk = 0);
  ~Generation();
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // True while another token is wanted: then run next_token() at state().position() (one
  // forward of one token) and pass its logits to advance(). False once a stop (length, eos,
  // stop string, context, cancelled) ended it.
  bool running() const { return running_; }
  // True while the prompt is still to be run (prefill_chunk > 0): call prefill_step() until it
  // is false; the first token is sampled by the last step.
  bool prefilling() const { return prefilling_; }
  void prefill_step();  // REQUIRES prefilling()
  int next_token() const;  // REQUIRES running()
  InferenceState& state() { return *state_; }
  // Samples from the logits (V) of next_token()'s forward (used as scratch: penalties and
  // temperature are applied in place), streams the text, and checks whether generation goes
  // on. REQUIRES running().
  void advance(float* logits);
  // The result (the held-back text flushed; with a cache, the cache updated). Call once,
  // when running() is false.
  GenerationResult finish();

  // Another generation of the same prompt that starts from this one's prompt pass: its keys
  // and values copied, its first token sampled (with opt's sampling) from the same prompt
  // logits, so that N continuations of one prompt run the prompt once. Everything else as a
  // Generation(model, tokenizer, prompt, opt, on_text) would do; with the same sampling its
  // tokens are this one's exactly. REQUIRES can_fork(): right after the prompt pass (nothing
  // advanced yet) and can_forward_batch(model) (a host cache). Throws Error otherwise.
  std::unique_ptr<Generation> fork(const GenerationOptions& opt, TextCallback on_text = {}) const;
  bool can_fork() const;

 private:
  Generation(const Generation& from, const GenerationOptions& opt, TextCallback on_text);  // fork()
  void setup(const std::vector<int>& prompt_ids);
  void sample(float* logits, bool prompt);
  void check_continue();

  using Clock = std::chrono::steady_clock;
  const Model& model_;
  const Tokenizer* tok_;
  GenerationOptions opt_;
  TextCallback on_text_;
  PromptCache* cache_;
  std::vector<int> stop_ids_, context_;
  std::unique_ptr<InferenceState> own_;
  InferenceState* state_ = nullptr;
  std::unique_ptr<Sampler> sampler_;
  std::unique_ptr<StreamDecoder> stream_;
  std::unique_ptr<StopStringFilter> filter_;
  GenerationResult res_;
  Clock::time_point t0_;
  int64_t produced_ = 0;  // sampling steps done (tokens sampled, the stop token included)
  int64_t prefill_chunk_ = 0, prefilled_ = 0;  // prompt tokens in the cache so far (prefilling)
  bool prefilling_ = false;
  std::vector<float> prompt_logits_;  // the prompt pass's logits, before sampling (fork())
  bool running_ = false, finished_text_ = false;
};

// Several generations at once (`qlora generate --parallel N`, HF's num_return_sequences,
// llama.cpp's batched example): each prompt runs alone (one prompt given N times runs once, the
// others fork()ed from it), then every step decodes one token of
// each generation still running through one forward_batch pass (one at a time with
// forward() where can_forward_batch(model) is false). results[i] is what generate(model,
// tokenizer, prompts[i], opts[i], on_text(i, ...)) gives, up to the products' summation order
// over several rows (model/model.h forward_batch). Throws Error as generate().
// One decoding step of several running generations: runs each one's next_token() (together
// through forward_batch when the model can, else one by one) and leaves their logits in
// `logits` (N, V), row i for gens[i], for advance(). Returns the forward passes it took.
// Throws Error as forward_batch / forward.
int64_t forward_next_tokens(const Model& model, InferenceState& work, std::span<Generation* const> gens,
                            std::vector<float>& logits);

struct BatchGenerationResult {
  std::vector<GenerationResult> results;
  double prompt_seconds = 0;  // every prompt's forward (and first sample), wall clock
  double decode_seconds = 0;  // the batched decoding steps, wall clock
  int64_t decode_passes = 0;  // forward passes (of up to N tokens each)
  int64_t decoded_tokens = 0;
  double decode_tokens_per_second() const { return decode_seconds > 0 ? decoded_tokens / decode_seconds : 0.0; }
};
using BatchTextCallback = std::function<void(size_t, std::string_view)>;
BatchGenerationResult generate_batch(const Model& model, const Tokenizer* tokenizer,
                                     const std::vector<std::vector<int>>& prompts,
                                     const std::vector<GenerationOptions>& opts, const BatchTextCallback& on_text = {});

// Incremental stop-string filter (exposed for tests): push() text pieces in, get back what
// can be shown now; stopped() once a stop string appeared (everything from it on is
// dropped). flush() returns the held-back tail at the end.
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops);
  std::string push(std::string_view piece);
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace qlora
