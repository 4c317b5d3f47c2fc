#pragma once
// The merged model (export/merge.h) written as a GGUF file that llama.cpp loads:
// `qlora merge ... --out model.gguf --gguf-type f16|bf16|f32|q8_0|q4_0|q4_k_m`.
#include <string>
#include <vector>

#include "export/merge.h"
#include "formats/ggml_types.h"

namespace qlora {

struct GgufExportOptions {
  GgmlType type = GgmlType::F16;  // 2-D weights: F32, F16, BF16, Q8_0 or Q4_0 (norms stay F32)
  // llama.cpp's Q4_K_M mixture instead of one type (type is then ignored): Q4_K, with Q6_K
  // for the output head and for attn_v / ffn_down in the layers llama.cpp gives more bits,
  // and its fallbacks (Q5_0 / Q8_0) for rows that are not a multiple of 256 —
  // gguf_mixture_type() below.
  bool q4_k_m = false;
  std::string name;               // general.name ("" = the output file's stem)
  bool log = true;
};

// Writes `out_path`: llama.cpp's metadata for the architecture (llama for llama/mistral,
// with q/k rows in its rotary layout; qwen2), the tokenizer metadata (copied from a GGUF
// source; from any other source written from its tokenizer by export/gguf_tokenizer_writer.h,
// byte-level BPE only), and every tensor under its GGUF name. A weight whose rows do not fit the quantized
// type's 32-element blocks falls back to F16 (as llama.cpp's quantizer does), with a note.
// Refuses an existing file unless `overwrite`, and a source whose tokenizer cannot be
// written as GGUF metadata (SentencePiece-style, e.g. llama2.c). Throws Error naming the file.
void write_merged_gguf(const Model& model, const ModelFiles& source, const std::vector<WeightedAdapter>& adapters,
                       const std::string& out_path, const GgufExportOptions& opt, bool overwrite);

// "f16" -> F16, ...; "q4_k_m" sets the mixture. Throws Error naming `where` for anything else.
void set_gguf_export_type(GgufExportOptions& opt, const std::string& s, const std::string& where);

// The type llama.cpp's quantizer (llama-quant.cpp, Q4_K_M, no importance matrix) gives
// the 2-D weight `gguf_name` ("blk.7.attn_v.weight") of `cols` columns in a model of
// `n_layers` layers (`tied`: token_embd doubles as the output head). 1-D tensors stay F32.
// Throws Error where the mixture needs a type not written here (Q5_K: 80-layer 70B models).
GgmlType gguf_q4_k_m_type(const std::string& gguf_name, size_t dims, int64_t cols, int64_t n_layers, bool tied,
                          bool seventy_b);

}  // namespace qlora
