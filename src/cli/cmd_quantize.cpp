// `qlora quantize` and `qlora dequantize`: bitsandbytes-layout 4-bit and 8-bit checkpoints.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/progress.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "model/random_spec.h"
#include "quant/quantize_checkpoint.h"

namespace {
namespace fs = std::filesystem;

// `verb`: what happened to the converted tensors ("quantized", "dequantized").
void print_report(const qlora::QuantizeReport& r, const std::string& out, const char* verb) {
  std::fprintf(stderr, "%lld tensors %s (%lld parameters), %lld kept; %s -> %s, wrote %s\n",
               static_cast<long long>(r.tensors_quantized), verb, static_cast<long long>(r.params_quantized),
               static_cast<long long>(r.tensors_kept), qlora::human_bytes(static_cast<double>(r.bytes_in)).c_str(),
               qlora::human_bytes(static_cast<double>(r.bytes_out)).c_str(), out.c_str());
}

const bool kQuantize = qlora::cli::register_command(
    "quantize", "Quantize a safetensors file or Hugging Face model directory to bitsandbytes 4-bit or 8-bit",
    [](CLI::App& app) -> qlora::cli::Action {
      struct Opts {
        std::string in, out, quant = "nf4", compute = "fp32";
        int blocksize = 64;
        bool dq = false;
        std::vector<std::string> skip{"lm_head"};
        bool overwrite = false;
      };
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->in, "Input .safetensors file or model directory")->required();
      app.add_option("--out", o->out, "Output file (for a file input) or directory")->required();
      app.add_option("--quant", o->quant, "nf4, fp4 or int8 (LLM.int8, transformers' load_in_8bit layout)")
          ->capture_default_str();
      app.add_option("--blocksize", o->blocksize, "Block size: 32..4096, a power of two")->capture_default_str();
      qlora::cli::add_bool_flag(app, "--double-quant", o->dq,
                                "Quantize the absmax constants too (bnb_4bit_use_double_quant)");
      app.add_option("--compute-dtype", o->compute, "Dtype recorded for dequantization: fp32, bf16, fp16")
          ->capture_default_str();
      app.add_option("--skip", o->skip, "Modules kept in full precision (none: quantize every Linear)")
          ->capture_default_str();
      qlora::cli::add_bool_flag(app, "--overwrite", o->overwrite, "Replace an existing --out (never the input)");
      return [o] {
        qlora::refuse_random_model(o->in, "qlora quantize");
        qlora::QuantizeOptions opt;
        opt.int8 = o->quant == "int8";
        if (!opt.int8) opt.type = qlora::quant_type_from_string(o->quant, "--quant");
        opt.blocksize = o->blocksize;
        opt.double_quant = o->dq;
        opt.compute_dtype = qlora::compute_dtype_from_string(o->compute);
        opt.skip_modules = o->skip == std::vector<std::string>{"none"} ? std::vector<std::string>{} : o->skip;
        opt.overwrite = o->overwrite;
        std::optional<qlora::ProgressBar> bar;
        auto rep = qlora::quantize_checkpoint(o->in, o->out, opt, [&](int64_t d, int64_t t) {
          if (!bar) bar.emplace(t, "quantize", "tensors");
          bar->update(d);
        });
        if (bar) bar->finish();
        print_report(rep, o->out, "quantized");
        return 0;
      };
    });

const bool kDequantize = qlora::cli::register_command(
    "dequantize", "Turn a bitsandbytes 4-bit or 8-bit checkpoint back into a full-precision one",
    [](CLI::App& app) -> qlora::cli::Action {
      struct Opts {
        std::string in, out, dtype = "fp32";
        bool overwrite = false;
      };
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->in, "Input 4-bit .safetensors file or model directory")->required();
      app.add_option("--out", o->out, "Output file or directory")->required();
      app.add_option("--dtype", o->dtype, "Output dtype: fp32, bf16, fp16")->capture_default_str();
      qlora::cli::add_bool_flag(app, "--overwrite", o->overwrite, "Replace an existing --out (never the input)");
      return [o] {
        qlora::refuse_random_model(o->in, "qlora dequantize");
        auto dt = qlora::to_dtype(qlora::compute_dtype_from_string(o->dtype, "--dtype"));
        std::optional<qlora::ProgressBar> bar;
        auto rep = qlora::dequantize_checkpoint(o->in, o->out, dt, o->overwrite, [&](int64_t d, int64_t t) {
          if (!bar) bar.emplace(t, "dequantize", "tensors");
          bar->update(d);
        });
        if (bar) bar->finish();
        print_report(rep, o->out, "dequantized");
        return 0;
      };
    });
}  // namespace
