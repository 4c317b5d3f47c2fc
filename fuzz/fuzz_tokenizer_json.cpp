// libFuzzer target for the tokenizer.json / tokenizer_config.json parser and the
// tokenizer built from it: any input must either give a working tokenizer or raise
// qlora::Error -- never crash, hang, or read out of bounds.
//
// Input: the tokenizer.json text, optionally followed by a NUL byte and the
// tokenizer_config.json text. Seeds: tests/fixtures/tokenizer/*/tokenizer.json.
// Crashes found are kept in tests/fixtures/tokenizer/fuzz_regressions/ (checked by
// tests/formats/test_tokenizer.cpp).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "base/error.h"
#include "formats/tokenizer.h"
#include "formats/tokenizer_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const size_t nul = all.find('\0');
  const std::string_view tok_json = all.substr(0, nul);
  const std::string_view config = nul == std::string_view::npos ? std::string_view() : all.substr(nul + 1);
  try {
    const qlora::Tokenizer tok(qlora::tokenizer_spec_from_json(tok_json, config, "fuzz"));
    const auto ids = tok.encode("Hello w\xC3\xB6rld 123  don't <s></s>\t\n \xF0\x9F\x98\x80 \xE4\xB8\xAD\xFF");
    (void)tok.decode(ids);
    (void)tok.decode(ids, {.skip_special_tokens = false});
    qlora::StreamDecoder stream(tok);
    for (int32_t id : ids) (void)stream.push(id);
    (void)stream.flush();
    if (tok.vocab_size() > 0) (void)tok.token_to_piece(tok.vocab_size() - 1);
  } catch (const qlora::Error&) {
  }
  return 0;
}
