#pragma once
// The merged model written as a bitsandbytes 4-bit (or LLM.int8) checkpoint again
// (`qlora merge --out-quant nf4 [--out-double-quant]`), the layout transformers loads with
// its quantization_config. Re-quantizing W' = dequant(Wq) + ΔW adds a new rounding error, so
// the report says how far it moved the model's predictions.
#include <string>
#include <vector>

#include "export/merge.h"
#include "quant/quantize_checkpoint.h"

namespace qlora {

struct RequantizeReport {
  QuantizeReport quantize;     // tensors and bytes
  int64_t positions = 0;       // probe positions compared
  double mean_kl = 0;          // mean KL(P_merged_fp32 || P_requantized), nats
  double max_abs_logit = 0;    // largest logit difference
  double top1_agreement = 0;   // fraction of positions with the same argmax
};

// Writes the fp32 merge to a temporary directory next to `out_dir`, quantizes it into
// `out_dir` with `q` (quantize_checkpoint), and compares both models' logits on
// `probe_ids`. The temporary directory is removed whatever happens. Refuses an existing
// model in `out_dir` unless `overwrite`. Throws Error naming the file.
RequantizeReport write_merged_requantized(const Model& model, const ModelFiles& source,
                                          const std::vector<WeightedAdapter>& adapters, const std::string& out_dir,
                                          const QuantizeOptions& q, const std::vector<int>& probe_ids, bool overwrite);

}  // namespace qlora
