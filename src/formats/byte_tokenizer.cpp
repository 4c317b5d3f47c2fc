// The built-in byte-level tokenizer of random models (byte_tokenizer.h).
#include "formats/byte_tokenizer.h"

#include <cstdio>
#include <string>

#include "base/error.h"

namespace qlora {

TokenizerSpec byte_tokenizer_spec(int64_t vocab, const std::string& where) {
  if (vocab < kByteTokenizerMinVocab)
    fail(where, "vocab " + std::to_string(vocab) + " is too small for the built-in byte tokenizer, which needs " +
                    std::to_string(kByteTokenizerMinVocab) +
                    " ids (<unk>, <s>, </s> and 256 bytes): use vocab >= 259 or pass --tokenizer PATH");
  TokenizerSpec s;
  s.source = where + " (built-in byte tokenizer)";
  s.vocab.reserve(static_cast<size_t>(vocab));
  s.vocab = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    s.vocab.emplace_back(name);
  }
  for (int64_t id = kByteTokenizerMinVocab; id < vocab; ++id) s.vocab.push_back("<extra_" + std::to_string(id) + ">");
  // No merges: with byte fallback every character becomes its UTF-8 bytes.
  s.merge_mode = MergeMode::kRank;
  s.byte_fallback = true;
  s.unk_id = 0;
  for (int32_t id = 0; id < 3; ++id) {
    AddedToken t;
    t.id = id;
    t.content = s.vocab[static_cast<size_t>(id)];
    s.added_tokens.push_back(t);
  }
  DecoderStep bytes, fuse;
  bytes.kind = DecoderStep::Kind::kByteFallback;
  fuse.kind = DecoderStep::Kind::kFuse;
  s.decoder = {bytes, fuse};
  s.prefix_ids = {1};
  s.bos_id = 1;
  s.eos_id = 2;
  s.chat_template =
      "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant: {% endif %}";
  s.chat_template_source = s.source + " chat template";
  return s;
}

}  // namespace qlora
