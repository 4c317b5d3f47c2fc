#include "quant/quantize_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "base/atomic_file.h"
#include "base/error.h"
#include "base/json_error.h"
#include "base/float_formats.h"
#include "base/mapped_file.h"
#include "formats/config_reader.h"
#include "formats/safetensors.h"
#include "quant/blockwise.h"
#include "quant/int8.h"
#include "quant/int8_safetensors.h"
#include "quant/quant_state.h"

namespace qlora {
namespace fs = std::filesystem;

namespace {

bool has_component(const std::string& name, const std::string& module) {
  // "model.lm_head.weight" contains the component "lm_head"; "xlm_head" does not.
  if (module.empty()) return false;  // (no component is empty; and find("") would not advance)
  size_t pos = 0;
  while ((pos = name.find(module, pos)) != std::string::npos) {
    bool left = pos == 0 || name[pos - 1] == '.';
    size_t r = pos + module.size();
    bool right = r == name.size() || name[r] == '.';
    if (left && right) return true;
    pos = r;
  }
  return false;
}

bool ends_with(const std::string& s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Tensor names that belong to a 4-bit weight's quant state rather than being tensors of
// their own.
bool is_quant_state_part(const std::string& name) {
  static const char* kSuffixes[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};
  for (const char* s : kSuffixes)
    if (ends_with(name, s)) return true;
  return name.find(".quant_state.bitsandbytes__") != std::string::npos;
}

// Files copied from a model directory next to the weights.
const char* kSideFiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                            "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                            "generation_config.json", "chat_template.jinja", "chat_template.json"};

void copy_file_atomic(const std::string& from, const std::string& to) {
  write_file_atomic(to, read_file_bytes(from));
}

struct Inputs {
  std::vector<std::unique_ptr<SafeTensorsFile>> files;
  bool is_dir = false;
};

Inputs open_inputs(const std::string& in) {
  Inputs r;
  r.is_dir = fs::is_directory(in);
  for (const auto& p : safetensors_files_of(in)) r.files.push_back(std::make_unique<SafeTensorsFile>(p));
  return r;
}

// Refuses, before anything is written, an output that is the input itself or (without
// `overwrite`) one that already exists: a file, or a directory holding a model.
void check_output(const std::string& in, const std::string& out, bool is_dir, bool overwrite) {
  std::error_code ec;
  if (fs::exists(out, ec) && fs::equivalent(out, in, ec))
    fail(out, std::string("is the input ") + (is_dir ? "model's own directory" : "file itself") +
                  ": write the output somewhere else");
  if (!is_dir) {
    if (fs::is_directory(out, ec)) fail(out, "is a directory; --out names the output file for a file input");
    if (!overwrite && fs::exists(out, ec))
      fail(out, "already exists; pass --overwrite to replace it, or choose another --out");
    return;
  }
  if (fs::exists(out, ec) && !fs::is_directory(out, ec))
    fail(out, "exists and is not a directory; --out names the output directory for a directory input");
  if (const auto n = model_file_in_dir(out); n && !overwrite)
    fail(out, "already holds a model (" + *n + "); pass --overwrite to replace it, or choose another --out");
}

std::string output_file(const std::string& out, bool is_dir) {
  if (!is_dir) return out;
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) fail(out, "cannot create output directory: " + ec.message());
  return (fs::path(out) / "model.safetensors").string();
}

void copy_side_files(const std::string& in, const std::string& out) {
  for (const char* f : kSideFiles) {
    auto src = fs::path(in) / f;
    if (fs::exists(src)) copy_file_atomic(src.string(), (fs::path(out) / f).string());
  }
}

nlohmann::json read_config(const std::string& dir) {
  auto p = (fs::path(dir) / "config.json").string();
  if (!fs::exists(p)) return nlohmann::json::object();
  const std::string text = read_text_file(p);
  try {
    return nlohmann::json::parse(config::python_json_literals(text));  // (transformers 4's bare Infinity)
  } catch (const nlohmann::json::exception& e) {
    fail(p, "not valid JSON" + json_error_at(e, text));
  }
}

}  // namespace

std::vector<std::string> safetensors_files_of(const std::string& path) {
  if (!fs::exists(path)) fail(path, "no such file or directory");
  if (!fs::is_directory(path)) return {path};
  auto single = fs::path(path) / "model.safetensors";
  if (fs::exists(single)) return {single.string()};
  auto index = fs::path(path) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    nlohmann::json j;
    const std::string text = read_text_file(index.string());
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail(index.string(), "not valid JSON" + json_error_at(e, text));
    }
    check(j.contains("weight_map") && j["weight_map"].is_object(), index.string(), "missing object 'weight_map'");
    std::set<std::string> shards;
    for (auto& [k, v] : j["weight_map"].items()) {
      check(v.is_string(), index.string(), "weight_map value for '" + k + "' is not a string");
      auto s = v.get<std::string>();
      check(s.find('/') == std::string::npos && s.find("..") == std::string::npos, index.string(),
            "shard name '" + s + "' must be a plain file name");
      shards.insert(s);
    }
    std::vector<std::string> out;
    for (const auto& s : shards) {
      auto p = fs::path(path) / s;
      check(fs::exists(p), index.string(), "lists shard '" + s + "' which does not exist");
      out.push_back(p.string());
    }
    return out;
  }
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(path))
    if (e.path().extension() == ".safetensors") out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  check(!out.empty(), path, "directory holds no .safetensors files");
  return out;
}

bool should_quantize_4bit(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                          const QuantizeOptions& opt) {
  if (!dtype_is_float(dtype) || shape.size() != 2 || !ends_with(name, ".weight")) return false;
  for (const char* e : {"embed", "wte", "wpe"})
    if (name.find(e) != std::string::npos) return false;
  for (const auto& m : opt.skip_modules)
    if (has_component(name, m)) return false;
  return true;
}

QuantizeReport quantize_checkpoint(const std::string& in, const std::string& out, const QuantizeOptions& opt,
                                   const std::function<void(int64_t, int64_t)>& progress) {
  if (!opt.int8) check_blocksize(opt.blocksize);
  for (const std::string& m : opt.skip_modules)
    if (m.empty())
      fail("--skip", "has an empty module name; give names such as lm_head (a path component of the weights' "
                     "names), or none to quantize every Linear");
  Inputs inputs = open_inputs(in);
  check_output(in, out, inputs.is_dir, opt.overwrite);
  // (config.json read before any weights are written: a bad one stops the run with nothing written)
  const nlohmann::json cfg_in = inputs.is_dir ? read_config(in) : nlohmann::json::object();
  const std::string out_file = output_file(out, inputs.is_dir);

  int64_t total = 0, done = 0;
  for (const auto& f : inputs.files) total += static_cast<int64_t>(f->tensors().size());

  QuantizeReport rep;
  SafeTensorsWriter w;
  w.set_metadata("format", "pt");
  for (const auto& f : inputs.files) {
    for (const auto& t : f->tensors()) {
      check(!is_quant_state_part(t.name) && !f->find(t.name + ".quant_state.bitsandbytes__nf4") &&
                !f->find(t.name + ".quant_state.bitsandbytes__fp4"),
            f->path(), "tensor '" + t.name + "' is already 4-bit quantized; dequantize first");
      check(!(t.dtype == DType::I8 && f->find(t.name.substr(0, t.name.rfind('.')) + ".SCB")) &&
                !(is_int8_state_part(t.name) && f->find(t.name.substr(0, t.name.rfind('.')) + ".weight")),
            f->path(), "tensor '" + t.name + "' is already 8-bit quantized; dequantize first");
      rep.bytes_in += static_cast<int64_t>(t.end - t.begin);
      if (should_quantize_4bit(t.name, t.dtype, t.shape, opt)) {
        // bitsandbytes upcasts bf16/fp16 weights to float32 before scaling; so do we.
        std::vector<float> x = f->to_float(t);
        if (opt.int8) {
          write_int8_to_safetensors(w, t.name, quantize_int8_rowwise(x.data(), t.shape[0], t.shape[1]));
        } else {
          Quantized4bit q = quantize_tensor_4bit(x.data(), t.shape, opt.type, opt.blocksize, opt.double_quant,
                                                 opt.compute_dtype);
          write_4bit_to_safetensors(w, t.name, q);
        }
        rep.tensors_quantized++;
        rep.params_quantized += t.numel();
      } else {
        w.add(t.name, t.dtype, t.shape, f->data(t));
        rep.tensors_kept++;
      }
      if (progress) progress(++done, total);
    }
  }
  w.write(out_file);
  rep.bytes_out = static_cast<int64_t>(fs::file_size(out_file));

  if (inputs.is_dir) {
    copy_side_files(in, out);
    nlohmann::json cfg = cfg_in;
    // For 8-bit, the bnb_4bit_* fields hold transformers' defaults, as it writes them.
    nlohmann::json qc = {
        {"quant_method", "bitsandbytes"},
        {"_load_in_4bit", !opt.int8},
        {"_load_in_8bit", opt.int8},
        {"load_in_4bit", !opt.int8},
        {"load_in_8bit", opt.int8},
        {"bnb_4bit_quant_type", opt.int8 ? std::string("fp4") : std::string(quant_type_name(opt.type))},
        {"bnb_4bit_use_double_quant", opt.int8 ? false : opt.double_quant},
        {"bnb_4bit_compute_dtype", opt.int8 ? std::string("float32") : std::string(torch_dtype_name(opt.compute_dtype))},
        {"bnb_4bit_quant_storage", "uint8"},
        {"llm_int8_enable_fp32_cpu_offload", false},
        {"llm_int8_has_fp16_weight", false},
        // transformers writes null for its default (keep lm_head in full precision).
        {"llm_int8_skip_modules", opt.skip_modules.empty() || opt.skip_modules == std::vector<std::string>{"lm_head"}
                                      ? nlohmann::json(nullptr)
                                      : nlohmann::json(opt.skip_modules)},
        {"llm_int8_threshold", 6.0},
    };
    cfg["quantization_config"] = qc;
    write_file_atomic((fs::path(out) / "config.json").string(), cfg.dump(2) + "\n");
  }
  return rep;
}

QuantizeReport dequantize_checkpoint(const std::string& in, const std::string& out, DType dtype, bool overwrite,
                                     const std::function<void(int64_t, int64_t)>& progress) {
  check(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16, "--dtype",
        "must be fp32, bf16 or fp16");
  Inputs inputs = open_inputs(in);
  check_output(in, out, inputs.is_dir, overwrite);
  // (config.json read before any weights are written: a bad one stops the run with nothing written)
  const nlohmann::json cfg_in = inputs.is_dir ? read_config(in) : nlohmann::json::object();
  const std::string out_file = output_file(out, inputs.is_dir);
  int64_t total = 0, done = 0;
  for (const auto& f : inputs.files) total += static_cast<int64_t>(f->tensors().size());

  QuantizeReport rep;
  SafeTensorsWriter w;
  w.set_metadata("format", "pt");
  for (const auto& f : inputs.files) {
    for (const auto& t : f->tensors()) {
      rep.bytes_in += static_cast<int64_t>(t.end - t.begin);
      if (progress) progress(++done, total);
      if (is_quant_state_part(t.name)) continue;
      if (is_int8_state_part(t.name) && f->find(t.name.substr(0, t.name.rfind('.')) + ".weight")) continue;
      std::vector<uint8_t> bytes;
      if (is_int8_in_safetensors(*f, t.name)) {
        const Quantized8bit q = read_int8_from_safetensors(*f, t.name);
        std::vector<float> x(q.codes.size());
        dequantize_int8_vectorwise(q, x.data());
        bytes.resize(x.size() * dtype_size(dtype));
        convert_from_f32(dtype, x.data(), bytes.data(), x.size());
        w.add_owned(t.name, dtype, {q.rows, q.cols}, std::move(bytes));
        rep.tensors_quantized++;
        rep.params_quantized += q.rows * q.cols;
      } else if (is_4bit_in_safetensors(*f, t.name)) {
        Quantized4bit q = read_4bit_from_safetensors(*f, t.name);
        const int64_t n = q.state.numel();
        bytes.resize(static_cast<size_t>(n) * dtype_size(dtype));
        if (dtype == DType::F32)
          dequantize_tensor_4bit(q, reinterpret_cast<float*>(bytes.data()));
        else
          dequantize_tensor_4bit(q, reinterpret_cast<uint16_t*>(bytes.data()), dtype);
        w.add_owned(t.name, dtype, q.state.shape, std::move(bytes));
        rep.tensors_quantized++;
        rep.params_quantized += n;
      } else if (dtype_is_float(t.dtype) && t.dtype != dtype) {
        std::vector<float> x = f->to_float(t);
        bytes.resize(x.size() * dtype_size(dtype));
        convert_from_f32(dtype, x.data(), bytes.data(), x.size());
        w.add_owned(t.name, dtype, t.shape, std::move(bytes));
        rep.tensors_kept++;
      } else {
        w.add(t.name, t.dtype, t.shape, f->data(t));
        rep.tensors_kept++;
      }
    }
  }
  w.write(out_file);
  rep.bytes_out = static_cast<int64_t>(fs::file_size(out_file));
  if (inputs.is_dir) {
    copy_side_files(in, out);
    nlohmann::json cfg = cfg_in;
    cfg.erase("quantization_config");
    cfg["torch_dtype"] = dtype == DType::F32 ? "float32" : dtype == DType::BF16 ? "bfloat16" : "float16";
    write_file_atomic((fs::path(out) / "config.json").string(), cfg.dump(2) + "\n");
  }
  return rep;
}

}  // namespace qlora
