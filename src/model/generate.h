#pragma once
// The generation loop: prompt -> forward (KV cache) -> sample -> forward one token -> ...
// until max_new_tokens, an end-of-generation token, a stop string, or the end of the
// context. Text is streamed as it is produced, only ever in complete UTF-8 characters, and
// never showing (any part of) a stop string.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"

namespace qlora {

class Tokenizer;

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
  int64_t prompt_tokens_reused = 0;  // prompt tokens whose keys/values came from a PromptCache
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
