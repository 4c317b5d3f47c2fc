#include "cli/model_flags.h"

#include <omp.h>

#include "base/error.h"
#include "quant/blockwise.h"

namespace qlora::cli {

void add_model_flags(CLI::App& app, ModelFlags& f, const std::string& compute_help) {
  app.add_option("--model,-m", f.model, "Model: Hugging Face directory, .safetensors, .gguf or llama2.c .bin")
      ->required();
  app.add_option("--tokenizer", f.tokenizer, "Tokenizer (directory, tokenizer.json, llama2.c .bin, .gguf)");
  app.add_option("--quant", f.quant, "Linear layer storage: none, nf4, fp4")->capture_default_str();
  app.add_flag("--double-quant", f.double_quant, "Quantize the absmax constants too (8-bit, blocks of 256)");
  app.add_option("--blocksize", f.blocksize, "4-bit block size (32..4096)")->capture_default_str();
  app.add_option("--compute-dtype", f.compute_dtype, compute_help)->capture_default_str();
  app.add_option("--threads,-t", f.threads, "Threads (default: all cores)");
}

ModelLoadOptions load_options(const ModelFlags& f) {
  if (f.threads < 0) fail("--threads", "must be >= 0");
  if (f.threads > 0) omp_set_num_threads(f.threads);
  ModelLoadOptions load;
  load.compute_dtype = compute_dtype_from_string(f.compute_dtype);
  if (f.quant == "none") {
    load.quant.quantize = false;
  } else {
    load.quant.type = quant_type_from_string(f.quant, "--quant");
    check_blocksize(f.blocksize, "--blocksize");
    load.quant.blocksize = f.blocksize;
    load.quant.double_quant = f.double_quant;
  }
  return load;
}

}  // namespace qlora::cli
