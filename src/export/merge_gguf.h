#pragma once
// The merged model (export/merge.h) written as a GGUF file that llama.cpp loads:
// `qlora merge ... --out model.gguf --gguf-type f16|bf16|q8_0|q4_0`.
#include <string>
#include <vector>

#include "export/merge.h"
#include "formats/ggml_types.h"

namespace qlora {

struct GgufExportOptions {
  GgmlType type = GgmlType::F16;  // 2-D weights: F32, F16, BF16, Q8_0 or Q4_0 (norms stay F32)
  std::string name;               // general.name ("" = the output file's stem)
  bool log = true;
};

// Writes `out_path`: llama.cpp's metadata for the architecture (llama for llama/mistral,
// with q/k rows in its rotary layout; qwen2), the tokenizer metadata copied from the source
// GGUF, and every tensor under its GGUF name. A weight whose rows do not fit the quantized
// type's 32-element blocks falls back to F16 (as llama.cpp's quantizer does), with a note.
// Refuses an existing file unless `overwrite`, and a source that is not a GGUF (whose
// tokenizer cannot be written as GGUF metadata yet). Throws Error naming the file.
void write_merged_gguf(const Model& model, const ModelFiles& source, const std::vector<WeightedAdapter>& adapters,
                       const std::string& out_path, const GgufExportOptions& opt, bool overwrite);

// "f16" -> F16, ...; throws Error naming `where` for anything else.
GgmlType gguf_export_type_from_string(const std::string& s, const std::string& where);

}  // namespace qlora
