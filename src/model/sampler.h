#pragma once
// Choosing the next token from logits, in the order transformers applies its logits
// processors: repetition penalty -> temperature -> top-k -> top-p -> sample.
// temperature 0 is greedy (argmax after the repetition penalty; ties go to the lowest id).
// The random stream is a seeded 64-bit generator with a fixed float conversion, so a
// seed gives the same tokens on every platform.
#include <cstdint>
#include <span>
#include <vector>

namespace qlora {

struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy
  int top_k = 0;                    // 0: off
  float top_p = 1.0f;               // 1: off
  float repetition_penalty = 1.0f;  // 1: off; >1 discourages tokens already in the context
  uint64_t seed = 0;
};

// Throws Error naming the option when a parameter is out of range
// (temperature < 0, top_k < 0, top_p outside (0, 1], repetition_penalty <= 0).
void validate(const SamplingParams& p);

// xoshiro256** seeded with splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  // Uniform in [0, 1) with 24 random bits.
  float uniform();

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  const SamplingParams& params() const { return p_; }
  // Picks a token from `logits` (modified in place). `context` holds the tokens the
  // repetition penalty applies to (prompt and generated so far).
  int sample(std::span<float> logits, std::span<const int> context);

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<int> idx_;
  std::vector<float> probs_;
  std::vector<uint8_t> seen_;
};

// The individual steps, exposed for tests.
// logit <- logit < 0 ? logit * penalty : logit / penalty, once per distinct token in context.
void apply_repetition_penalty(std::span<float> logits, std::span<const int> context, float penalty);
int argmax(std::span<const float> logits);

}  // namespace qlora
