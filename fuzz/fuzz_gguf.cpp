// libFuzzer target for the GGUF reader: any byte string must either parse or raise
// qlora::Error — never crash, hang, read out of bounds or allocate from a bogus count.
// When it parses, the typed getters, the llama hyper-parameter/tokenizer readers and
// dequantization of (small) tensors run too.
//
//   cmake -S . -B build-fuzz -DQLORA_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ \
//         -DQLORA_BUILD_TESTS=OFF -DQLORA_BUILD_BENCH=OFF
//   cmake --build build-fuzz --target fuzz_gguf
//   mkdir -p fuzz/corpus-gguf && cp tests/fixtures/gguf/*.gguf fuzz/corpus-gguf/
//   build-fuzz/fuzz_gguf fuzz/corpus-gguf -max_len=16384 -max_total_time=300
// Crash inputs go to tests/fixtures/gguf/fuzz_regressions/ (replayed by test_gguf).
#include <cstddef>
#include <cstdint>
#include <span>

#include "base/error.h"
#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  try {
    GgufFile f = GgufFile::from_bytes(std::span<const uint8_t>(data, size), "fuzz");
    for (const auto& [key, v] : f.metadata()) {
      (void)v.type_name();
      try {
        if (v.is_integer()) (void)f.get_i64(key);
        if (v.is_float()) (void)f.get_f32(key);
        if (v.type == GgufValueType::ARRAY) {
          if (v.elem_type == GgufValueType::STRING) (void)f.get_string_array(key);
          else if (v.elem_type == GgufValueType::F32 || v.elem_type == GgufValueType::F64) (void)f.get_f32_array(key);
          else if (v.elem_type != GgufValueType::ARRAY && v.elem_type != GgufValueType::BOOL) (void)f.get_int_array(key);
        }
      } catch (const Error&) {
      }
    }
    try {
      GgufLlamaHParams hp = read_gguf_llama_hparams(f);
      for (const auto& t : f.tensors())
        if (ggml_traits(t.type).can_dequantize && t.numel() <= (1 << 16)) (void)gguf_tensor_to_f32_hf(f, t, hp);
    } catch (const Error&) {
    }
    try {
      (void)read_gguf_tokenizer(f);
    } catch (const Error&) {
    }
    for (const auto& t : f.tensors()) {
      (void)gguf_to_hf_tensor_name(t.name);
      if (ggml_traits(t.type).can_dequantize && t.numel() <= (1 << 16)) (void)f.tensor_to_f32(t);
    }
  } catch (const Error&) {
  }
  return 0;
}
