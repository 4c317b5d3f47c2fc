// `qlora inspect FILE|DIR`: tensors, dtypes, shapes; for 4-bit tensors the quant state
// and bits per parameter.
#include <cstdio>
#include <string>

#include "cli/command.h"
#include "model/random_spec.h"
#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "quant/quant_state.h"
#include "quant/quantize_checkpoint.h"

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

bool is_part(const std::string& n) {
  for (const char* s : {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"}) {
    std::string suf(s);
    if (n.size() >= suf.size() && n.compare(n.size() - suf.size(), suf.size(), suf) == 0) return true;
  }
  return n.find(".quant_state.bitsandbytes__") != std::string::npos;
}

void inspect_safetensors(const std::string& path) {
  qlora::SafeTensorsFile f(path);
  std::printf("%s: %zu tensors\n", path.c_str(), f.tensors().size());
  for (const auto& [k, v] : f.metadata()) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
  int64_t params = 0, bits = 0;
  for (const auto& t : f.tensors()) {
    if (is_part(t.name)) continue;
    if (qlora::is_4bit_in_safetensors(f, t.name)) {
      auto q = qlora::read_4bit_from_safetensors(f, t.name);
      const auto& s = q.state;
      std::printf("  %-60s %s %-16s blocksize %d%s compute %s  %.3f bits/param\n", t.name.c_str(),
                  std::string(qlora::quant_type_name(s.type)).c_str(), shape_str(s.shape).c_str(), s.blocksize,
                  s.nested ? " double-quant" : "", std::string(qlora::torch_dtype_name(s.dtype)).c_str(),
                  q.bits_per_param());
      params += s.numel();
      bits += static_cast<int64_t>(q.bits_per_param() * static_cast<double>(s.numel()) + 0.5);
    } else {
      std::printf("  %-60s %-4s %s\n", t.name.c_str(), std::string(qlora::dtype_name(t.dtype)).c_str(),
                  shape_str(t.shape).c_str());
      params += t.numel();
      bits += t.numel() * static_cast<int64_t>(qlora::dtype_size(t.dtype)) * 8;
    }
  }
  std::printf("  total: %lld parameters, %.3f bits/param on average\n", static_cast<long long>(params),
              params ? static_cast<double>(bits) / static_cast<double>(params) : 0.0);
}

// GGUF: metadata (arrays summarised) and the tensor table with ggml types.
void inspect_gguf(const std::string& path) {
  qlora::GgufFile f(path);
  std::printf("%s: GGUF, %zu metadata keys, %zu tensors\n", path.c_str(), f.metadata().size(), f.tensors().size());
  for (const auto& [k, v] : f.metadata()) {
    std::string val;
    if (v.type == qlora::GgufValueType::STRING) {
      val = std::string(v.str.substr(0, 80));
      if (v.str.size() > 80) val += "...";
      for (auto& c : val)
        if (c == '\n') c = ' ';
    } else if (v.type == qlora::GgufValueType::ARRAY) {
      val = v.type_name();
    } else if (v.type == qlora::GgufValueType::U64) {
      val = std::to_string(f.get_u64(k));
    } else if (v.is_integer()) {
      val = std::to_string(f.get_i64(k));
    } else if (v.is_float()) {
      val = std::to_string(f.get_f64(k));
    } else if (v.type == qlora::GgufValueType::BOOL) {
      val = f.get_bool(k) ? "true" : "false";
    } else {
      val = v.type_name();
    }
    std::printf("  %-45s %s\n", k.c_str(), val.c_str());
  }
  int64_t params = 0, bytes = 0;
  for (const auto& t : f.tensors()) {
    std::printf("  %-40s %-5s %-16s %.3f bits/param\n", t.name.c_str(), std::string(qlora::ggml_type_name(t.type)).c_str(),
                shape_str(t.shape()).c_str(), t.numel() ? 8.0 * static_cast<double>(t.nbytes) / static_cast<double>(t.numel()) : 0.0);
    params += t.numel();
    bytes += static_cast<int64_t>(t.nbytes);
  }
  std::printf("  total: %lld parameters, %.3f bits/param on average\n", static_cast<long long>(params),
              params ? 8.0 * static_cast<double>(bytes) / static_cast<double>(params) : 0.0);
}

bool ends_with_gguf(const std::string& p) { return p.size() >= 5 && p.compare(p.size() - 5, 5, ".gguf") == 0; }

const bool kRegistered = qlora::cli::register_command(
    "inspect", "List tensors, dtypes, shapes and 4-bit quant state of a model file or directory",
    [](CLI::App& app) -> qlora::cli::Action {
      auto path = std::make_shared<std::string>();
      app.add_option("path", *path, "A .safetensors or .gguf file, or a model directory")->required();
      return [path] {
        qlora::refuse_random_model(*path, "qlora inspect");
        if (ends_with_gguf(*path)) {
          inspect_gguf(*path);
          return 0;
        }
        for (const auto& f : qlora::safetensors_files_of(*path)) inspect_safetensors(f);
        return 0;
      };
    });
}  // namespace
