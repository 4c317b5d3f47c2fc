#include "formats/llama2c_tokenizer.h"

#include <cmath>
#include <cstring>

#include "base/error.h"
#include "base/mapped_file.h"

namespace qlora {

TokenizerSpec tokenizer_spec_from_llama2c(std::span<const uint8_t> bytes, std::string_view where_sv,
                                          int32_t expected_vocab) {
  const std::string where(where_sv);
  size_t pos = 0;
  auto read_i32 = [&](const char* what) {
    if (bytes.size() - pos < 4) fail(where, std::string("truncated: file ends inside ") + what);
    int32_t v;
    std::memcpy(&v, bytes.data() + pos, 4);
    pos += 4;
    return v;
  };
  auto read_f32 = [&](const char* what) {
    if (bytes.size() - pos < 4) fail(where, std::string("truncated: file ends inside ") + what);
    float v;
    std::memcpy(&v, bytes.data() + pos, 4);
    pos += 4;
    return v;
  };
  const int32_t max_len = read_i32("the header");
  if (max_len <= 0 || max_len > (1 << 20)) fail(where, "bad max_token_length " + std::to_string(max_len));

  TokenizerSpec spec;
  spec.source = where;
  spec.merge_mode = MergeMode::kScore;
  while (pos < bytes.size() && (expected_vocab < 0 || static_cast<int32_t>(spec.vocab.size()) < expected_vocab)) {
    const std::string idx = "token " + std::to_string(spec.vocab.size());
    const float score = read_f32(idx.c_str());
    const int32_t len = read_i32(idx.c_str());
    if (len < 0) fail(where, idx + ": length " + std::to_string(len) + " is negative (not a llama2.c tokenizer, or a damaged one)");
    if (len > max_len)
      fail(where, idx + ": length " + std::to_string(len) + " exceeds max_token_length " + std::to_string(max_len));
    if (bytes.size() - pos < static_cast<size_t>(len)) fail(where, "truncated: file ends inside " + idx);
    if (!std::isfinite(score)) fail(where, idx + ": score is not finite");
    spec.vocab.emplace_back(reinterpret_cast<const char*>(bytes.data() + pos), static_cast<size_t>(len));
    spec.scores.push_back(score);
    pos += static_cast<size_t>(len);
  }
  if (expected_vocab >= 0 && static_cast<int32_t>(spec.vocab.size()) != expected_vocab)
    fail(where, "has " + std::to_string(spec.vocab.size()) + " tokens, the model expects " +
                    std::to_string(expected_vocab));
  if (spec.vocab.size() < 3) fail(where, "fewer than 3 tokens (<unk>, <s>, </s> are required)");

  spec.byte_fallback = true;
  spec.unk_id = 0;
  spec.bos_id = 1;
  spec.eos_id = 2;
  for (int32_t id = 0; id < 3; ++id) {
    AddedToken a;
    a.id = id;
    a.content = spec.vocab[static_cast<size_t>(id)];
    a.special = true;
    if (!a.content.empty()) spec.added_tokens.push_back(a);
  }
  // Spaces stay ' ' as the file spells them: the dummy prefix is a plain space.
  spec.normalizer = {{NormalizerStep::Kind::kPrepend, "", " "}};
  DecoderStep bf;
  bf.kind = DecoderStep::Kind::kByteFallback;
  DecoderStep fuse;
  fuse.kind = DecoderStep::Kind::kFuse;
  DecoderStep strip;
  strip.kind = DecoderStep::Kind::kStrip;
  strip.content = " ";
  strip.start = 1;
  spec.decoder = {bf, fuse, strip};
  spec.prefix_ids = {1};
  return spec;
}

TokenizerSpec load_llama2c_tokenizer(const std::string& path, int32_t expected_vocab) {
  MappedFile f(path);
  return tokenizer_spec_from_llama2c(f.bytes(), path, expected_vocab);
}

}  // namespace qlora
