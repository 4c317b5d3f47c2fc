#pragma once
// What the backend tests share (tests/model/test_backend.cpp against a checking backend,
// tests/cuda/test_cuda_backend.cpp against the CUDA one): the families whose blocks exercise
// every op kind, deterministic token ids, the test adapter's B, and a packed training batch.
#include <cstdint>
#include <string>
#include <vector>

#include "lora/lora_model.h"
#include "model/model_spec.h"
#include "train/train_model.h"

namespace qlora::test {

// Plain llama, gemma2 (softcaps, sandwich norms, alternating windows), phi3 (fused q/k/v and
// gate/up: slices, partial rotary), opt_350m (post-norm, project_in/out, learned positions),
// bloom (ALiBi, embedding norm), gpt_neox (parallel residual, per-head fused q/k/v), phi (one
// norm for both parallel branches, the head's bias), granite (scaled branches and logits),
// olmo2 (no pre-norms, q/k norms over all heads), gptj (interleaved partial rotary), smollm3
// (a layer without rotary), olmo (weightless norms, clamped q/k/v), nemotron ((1 + w) LayerNorms,
// relu^2).
inline const std::vector<std::string> kBackendFamilies = {"llama", "gemma2",  "phi3",  "opt_350m", "bloom",
                                                           "gpt_neox", "phi", "granite", "olmo2", "gptj",
                                                           "smollm3",  "olmo", "nemotron"};

inline std::string family_fixture_dir(const std::string& f) {
  return std::string(QLORA_FIXTURE_DIR) + "/families/" + f;
}

// n token ids, a different sequence per salt.
inline std::vector<int> some_tokens(const ModelSpec& s, int n, int salt) {
  std::vector<int> t;
  for (int i = 0; i < n; ++i) t.push_back(static_cast<int>((i * 7 + salt * 13 + 3) % s.vocab));
  return t;
}

// B = 0.01 (i * mul % mod) - offset element by element (a non-zero adapter).
inline void set_test_adapter_b(LoraModel& lm, size_t mul, size_t mod, float offset) {
  for (LoraLayer& l : lm.layers())
    for (size_t i = 0; i < l.B.size(); ++i) l.B[i] = 0.01f * static_cast<float>((i * mul) % mod) - offset;
}

// Two sequences of 13 and 9 tokens with ignored targets; the first packs two examples
// (positions restart at 0 after 6 tokens).
struct PackedTestBatch {
  std::vector<int> in1, in2, t1, t2;
  std::vector<int32_t> p1;
  explicit PackedTestBatch(const ModelSpec& s) : in1(some_tokens(s, 13, 4)), in2(some_tokens(s, 9, 5)) {
    t1.assign(in1.begin() + 1, in1.end());
    t2.assign(in2.begin() + 1, in2.end());
    t1.push_back(1);
    t2.push_back(-100);
    t1[2] = -100;
    for (int i = 0; i < 13; ++i) p1.push_back(i < 6 ? i : i - 6);
  }
};

}  // namespace qlora::test
