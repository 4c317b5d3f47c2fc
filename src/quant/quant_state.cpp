// QuantState, 4-bit tensor quantization with optional double quantization, and the
// bitsandbytes / transformers serialization of a 4-bit Linear weight.
//
// Format facts (bitsandbytes 0.50 functional.py, QuantState.as_dict(packed=True)):
//   <w>                     packed codes, uint8 [(n+1)/2, 1]
//   <w>.absmax              float32 [blocks], or uint8 [blocks] when nested
//   <w>.quant_map           float32 [16]
//   <w>.nested_absmax       float32 [ceil(blocks / nested_blocksize)]    (nested only)
//   <w>.nested_quant_map    float32 [256]                               (nested only)
//   <w>.quant_state.bitsandbytes__<nf4|fp4>   uint8 bytes of json.dumps({quant_type,
//       blocksize, dtype, shape[, nested_blocksize, nested_dtype, nested_offset]})
#include "quant/quant_state.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/float_formats.h"
#include "base/parallel.h"
#include "base/json_error.h"
#include "formats/safetensors.h"
#include "quant/blockwise.h"
#include "quant/torch_mean.h"

namespace qlora {
namespace {

constexpr int kNestedBlocksize = 256;  // bitsandbytes' quantize_4bit: quantize_blockwise(..., blocksize=256)

int64_t shape_numel(const std::vector<int64_t>& shape, std::string_view where) {
  int64_t n = 1;
  for (int64_t d : shape) {
    check(d >= 0, where, "negative dimension in shape");
    check(d == 0 || n <= std::numeric_limits<int64_t>::max() / d, where, "shape has too many elements");
    n *= d;
  }
  return n;
}

// Python's repr() of a float (what json.dumps writes): the shortest digits that round-trip,
// positional for decimal exponents -4..15 (always with a ".0" or more), otherwise
// d[.ddd]e[+-]XX.
std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // "-d.ddde+XX"
  std::string sign;
  if (!sci.empty() && sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp10 = std::stoi(sci.substr(e + 1));
  if (exp10 >= -4 && exp10 < 16) {
    std::string s;
    if (exp10 < 0) {
      s = "0." + std::string(static_cast<size_t>(-exp10 - 1), '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp10 + 1) {
      s = digits + std::string(static_cast<size_t>(exp10 + 1 - static_cast<int>(digits.size())), '0') + ".0";
    } else {
      s = digits.substr(0, static_cast<size_t>(exp10 + 1)) + "." + digits.substr(static_cast<size_t>(exp10 + 1));
    }
    return sign + s;
  }
  std::string s = digits.substr(0, 1);
  if (digits.size() > 1) s += "." + digits.substr(1);
  const int a = std::abs(exp10);
  s += exp10 < 0 ? "e-" : "e+";
  if (a < 10) s += "0";
  s += std::to_string(a);
  return sign + s;
}

// json.dumps(dict) with Python's default separators, keys in bitsandbytes' order.
std::string quant_state_json(const QuantState& s) {
  std::string j = "{\"quant_type\": \"" + std::string(quant_type_name(s.type)) + "\"";
  j += ", \"blocksize\": " + std::to_string(s.blocksize);
  j += ", \"dtype\": \"" + std::string(torch_dtype_name(s.dtype)) + "\"";
  j += ", \"shape\": [";
  for (size_t i = 0; i < s.shape.size(); ++i) j += (i ? ", " : "") + std::to_string(s.shape[i]);
  j += "]";
  if (s.nested) {
    j += ", \"nested_blocksize\": " + std::to_string(s.nested_blocksize);
    j += ", \"nested_dtype\": \"float32\"";
    j += ", \"nested_offset\": " + python_float_repr(static_cast<double>(s.offset));
  }
  j += "}";
  return j;
}

// --- reading -------------------------------------------------------------------------

class Reader {
 public:
  Reader(const SafeTensorsFile& f, const std::string& weight) : f_(f), weight_(weight) {}

  std::string where(const std::string& tensor) const { return f_.path() + ": tensor '" + tensor + "'"; }
  [[noreturn]] void fail_on(const std::string& tensor, const std::string& what) const { fail(where(tensor), what); }

  const SafeTensorInfo& need(const std::string& suffix, const char* why) const {
    const std::string name = weight_ + suffix;
    const SafeTensorInfo* t = f_.find(name);
    if (!t) fail(f_.path(), "missing tensor '" + name + "' (" + why + ")");
    return *t;
  }
  const SafeTensorInfo* maybe(const std::string& suffix) const { return f_.find(weight_ + suffix); }

  template <class T>
  std::vector<T> read(const SafeTensorInfo& t, DType want, int64_t count, const std::string& count_why) const {
    if (t.dtype != want)
      fail_on(t.name, "has dtype " + std::string(dtype_name(t.dtype)) + ", expected " + std::string(dtype_name(want)));
    if (t.numel() != count)
      fail_on(t.name, "has " + std::to_string(t.numel()) + " elements, expected " + std::to_string(count) + " (" +
                          count_why + ")");
    auto bytes = f_.data(t);
    if (bytes.size() != static_cast<size_t>(count) * sizeof(T))
      fail_on(t.name, "data size does not match its shape");
    std::vector<T> v(static_cast<size_t>(count));
    if (!bytes.empty()) std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
  }

 private:
  const SafeTensorsFile& f_;
  const std::string& weight_;
};

int json_int(const nlohmann::json& j, const char* key, const Reader& r, const std::string& qs_name) {
  const auto& v = j.at(key);
  if (!v.is_number_integer()) r.fail_on(qs_name, std::string("quant-state JSON field '") + key + "' is not an integer");
  const int64_t i = v.get<int64_t>();
  if (i < std::numeric_limits<int>::min() || i > std::numeric_limits<int>::max())
    r.fail_on(qs_name, std::string("quant-state JSON field '") + key + "' is out of range");
  return static_cast<int>(i);
}

std::string json_string(const nlohmann::json& j, const char* key, const Reader& r, const std::string& qs_name) {
  const auto& v = j.at(key);
  if (!v.is_string()) r.fail_on(qs_name, std::string("quant-state JSON field '") + key + "' is not a string");
  return v.get<std::string>();
}

}  // namespace

// --- QuantState ----------------------------------------------------------------------

int64_t QuantState::numel() const { return shape_numel(shape, "QuantState"); }

int64_t QuantState::blocks() const { return num_blocks(numel(), blocksize); }

std::vector<float> QuantState::block_absmax() const {
  if (!nested && !absmax_f16.empty()) {
    std::vector<float> out(absmax_f16.size());
    for (size_t b = 0; b < out.size(); ++b) out[b] = fp16_to_f32(absmax_f16[b]);
    return out;
  }
  if (!nested) return absmax;
  const int64_t nb = static_cast<int64_t>(absmax_q.size());
  check(num_blocks(nb, nested_blocksize) == static_cast<int64_t>(nested_absmax.size()), "QuantState",
        "nested_absmax does not have one value per nested block");
  // bitsandbytes: dequantize_blockwise(absmax_q, state2) + offset — a float32 product,
  // then a separate float32 addition (two roundings, never fused).
  std::vector<float> out(static_cast<size_t>(nb));
  if (!ggml_source.empty()) {  // (a GGUF's scale codes times d per 256: nested blocks of 8)
    for (int64_t b = 0; b < nb; ++b) {
      const float scaled = nested_code[absmax_q[static_cast<size_t>(b)]] * nested_absmax[static_cast<size_t>(b / nested_blocksize)];
      out[static_cast<size_t>(b)] = scaled + offset;
    }
    return out;
  }
  dequantize_8bit_blockwise(absmax_q.data(), nested_absmax.data(), nb, nested_blocksize, nested_code.data(),
                            out.data());
  for (float& v : out) v += offset;
  return out;
}

std::vector<float> QuantState::block_mins() const {
  if (!block_min.empty()) return block_min;
  if (!block_min_q.empty()) {
    check(num_blocks(static_cast<int64_t>(block_min_q.size()), block_min_group) ==
              static_cast<int64_t>(block_min_d.size()),
          "QuantState", "block_min_d does not have one value per group of minimum codes");
    std::vector<float> out(block_min_q.size());
    for (size_t b = 0; b < out.size(); ++b)
      out[b] = -(block_min_d[b / static_cast<size_t>(block_min_group)] * static_cast<float>(block_min_q[b]));
    return out;
  }
  std::vector<float> out(block_min_f16.size());
  for (size_t b = 0; b < out.size(); ++b) out[b] = fp16_to_f32(block_min_f16[b]);
  return out;
}

int64_t QuantState::constant_bytes() const {
  const int64_t mins = static_cast<int64_t>(block_min.size() * sizeof(float) + block_min_f16.size() * 2 +
                                            block_min_q.size() + block_min_d.size() * sizeof(float));
  if (!nested) return static_cast<int64_t>(absmax.size() * sizeof(float) + absmax_f16.size() * 2) + mins;
  return static_cast<int64_t>(absmax_q.size() + nested_absmax.size() * sizeof(float) + sizeof(float) /* offset */) +
         mins;
}

double Quantized4bit::bits_per_param() const {
  const int64_t n = state.numel();
  if (n == 0) return 0.0;
  return 8.0 * static_cast<double>(static_cast<int64_t>(packed.size()) + state.constant_bytes()) /
         static_cast<double>(n);
}

// --- quantize / dequantize -----------------------------------------------------------

Quantized4bit quantize_tensor_4bit(const float* x, const std::vector<int64_t>& shape, QuantType type, int blocksize,
                                   bool double_quant, ComputeDType dtype) {
  check_blocksize(blocksize, "quantize_tensor_4bit");
  const int64_t n = shape_numel(shape, "quantize_tensor_4bit");
  check(n > 0, "quantize_tensor_4bit", "cannot quantize a tensor with no elements");
  std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)), 0);
  std::vector<float> absmax(static_cast<size_t>(num_blocks(n, blocksize)));
  quantize_4bit(x, n, blocksize, type, packed.data(), absmax.data());
  return make_quantized_4bit(std::move(packed), std::move(absmax), shape, type, blocksize, double_quant, dtype);
}

Quantized4bit make_quantized_4bit(std::vector<uint8_t> packed, std::vector<float> absmax,
                                  const std::vector<int64_t>& shape, QuantType type, int blocksize,
                                  bool double_quant, ComputeDType dtype) {
  check_blocksize(blocksize, "make_quantized_4bit");
  const int64_t n = shape_numel(shape, "make_quantized_4bit");
  check(n > 0, "make_quantized_4bit", "cannot quantize a tensor with no elements");
  const int64_t nb = num_blocks(n, blocksize);
  check(static_cast<int64_t>(packed.size()) == packed_4bit_bytes(n) && static_cast<int64_t>(absmax.size()) == nb,
        "make_quantized_4bit", "packed codes or absmax do not match the shape");
  Quantized4bit q;
  QuantState& s = q.state;
  s.type = type;
  s.blocksize = blocksize;
  s.dtype = dtype;
  s.shape = shape;
  s.code = codebook_4bit(type);
  q.packed = std::move(packed);
  if (!double_quant) {
    s.absmax = std::move(absmax);
    return q;
  }
  // Double quantization (bitsandbytes quantize_4bit, compress_statistics=True):
  // offset = absmax.mean() in torch's summation order (single-threaded: the order torch
  // uses for up to 32767 blocks whatever its thread count), then the centred absmax
  // quantized 8-bit blockwise (256) with the signed dynamic map.
  s.nested = true;
  s.nested_blocksize = kNestedBlocksize;
  s.nested_code = dynamic_map_8bit(true);
  s.offset = torch_cpu_mean_f32(absmax.data(), nb, 1);
  for (float& a : absmax) a -= s.offset;
  s.absmax_q.assign(static_cast<size_t>(nb), 0);
  s.nested_absmax.assign(static_cast<size_t>(num_blocks(nb, kNestedBlocksize)), 0.0f);
  quantize_8bit_blockwise(absmax.data(), nb, kNestedBlocksize, s.nested_code.data(), s.absmax_q.data(),
                          s.nested_absmax.data());
  return q;
}

namespace {
// Throws unless packed and absmax fit the state's shape and blocksize.
std::vector<float> checked_absmax(const Quantized4bit& q) {
  const QuantState& s = q.state;
  check_blocksize(s.blocksize, "dequantize_tensor_4bit");
  const int64_t n = s.numel();
  check(static_cast<int64_t>(q.packed.size()) == packed_4bit_bytes(n), "dequantize_tensor_4bit",
        "packed data has " + std::to_string(q.packed.size()) + " bytes, expected " +
            std::to_string(packed_4bit_bytes(n)));
  std::vector<float> a = s.block_absmax();
  check(static_cast<int64_t>(a.size()) == s.blocks(), "dequantize_tensor_4bit",
        "absmax has " + std::to_string(a.size()) + " values, expected " + std::to_string(s.blocks()));
  return a;
}
}  // namespace

namespace {
// A GGUF state's values (its own code book, minimums): code[q] * absmax + min, rounded apart.
void dequantize_ggml_source(const Quantized4bit& q, const std::vector<float>& a, float* out) {
  const QuantState& s = q.state;
  const int64_t n = s.numel();
  const std::vector<float> mins = s.block_mins();
  check(mins.empty() || static_cast<int64_t>(mins.size()) == s.blocks(), "dequantize_tensor_4bit",
        "block minimums do not match the block count");
  parallel_for_range(s.blocks(), 256, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t e = std::min(n, (b + 1) * s.blocksize);
      for (int64_t i = b * s.blocksize; i < e; ++i) {
        const uint8_t byte = q.packed[static_cast<size_t>(i >> 1)];
        float v = s.code[(i & 1) ? (byte & 0x0F) : (byte >> 4)] * a[static_cast<size_t>(b)];
        if (!mins.empty()) v = v + mins[static_cast<size_t>(b)];
        out[i] = v;
      }
    }
  });
}
}  // namespace

void dequantize_tensor_4bit(const Quantized4bit& q, float* out) {
  const std::vector<float> a = checked_absmax(q);
  if (!q.state.ggml_source.empty()) return dequantize_ggml_source(q, a, out);
  dequantize_4bit_f32(q.packed.data(), a.data(), q.state.numel(), q.state.blocksize, q.state.type, out);
}

void dequantize_tensor_4bit(const Quantized4bit& q, uint16_t* out, DType out_dtype) {
  check(out_dtype == DType::BF16 || out_dtype == DType::F16, "dequantize_tensor_4bit",
        "output dtype " + std::string(dtype_name(out_dtype)) + " is not BF16 or F16");
  const std::vector<float> a = checked_absmax(q);
  if (!q.state.ggml_source.empty()) {
    std::vector<float> f(static_cast<size_t>(q.state.numel()));
    dequantize_ggml_source(q, a, f.data());
    for (size_t i = 0; i < f.size(); ++i) out[i] = out_dtype == DType::BF16 ? f32_to_bf16(f[i]) : f32_to_fp16(f[i]);
    return;
  }
  if (out_dtype == DType::BF16)
    dequantize_4bit_bf16(q.packed.data(), a.data(), q.state.numel(), q.state.blocksize, q.state.type, out);
  else
    dequantize_4bit_f16(q.packed.data(), a.data(), q.state.numel(), q.state.blocksize, q.state.type, out);
}

// --- serialization -------------------------------------------------------------------

void write_4bit_to_safetensors(SafeTensorsWriter& w, const std::string& weight_name, const Quantized4bit& q) {
  const QuantState& s = q.state;
  const int64_t n = s.numel();
  check(s.ggml_source.empty(), weight_name,
        "holds a GGUF's " + s.ggml_source + " blocks as stored (its own code book" +
            (s.has_min() ? std::string(" and a minimum per block") : std::string()) +
            "), which bitsandbytes cannot read: quantize from the dequantized weights instead");
  check(static_cast<int64_t>(q.packed.size()) == packed_4bit_bytes(n), weight_name,
        "packed data does not match the quant-state shape");
  w.add_vector(weight_name, DType::U8, {static_cast<int64_t>(q.packed.size()), 1}, q.packed);
  const std::vector<float> code(s.code.begin(), s.code.end());
  if (s.nested) {
    check(static_cast<int64_t>(s.absmax_q.size()) == s.blocks(), weight_name, "absmax does not match the shape");
    w.add_vector(weight_name + ".absmax", DType::U8, {static_cast<int64_t>(s.absmax_q.size())}, s.absmax_q);
    w.add_vector(weight_name + ".quant_map", DType::F32, {16}, code);
    w.add_vector(weight_name + ".nested_absmax", DType::F32, {static_cast<int64_t>(s.nested_absmax.size())},
                 s.nested_absmax);
    const std::vector<float> ncode(s.nested_code.begin(), s.nested_code.end());
    w.add_vector(weight_name + ".nested_quant_map", DType::F32, {256}, ncode);
  } else {
    check(static_cast<int64_t>(s.absmax.size()) == s.blocks(), weight_name, "absmax does not match the shape");
    w.add_vector(weight_name + ".absmax", DType::F32, {static_cast<int64_t>(s.absmax.size())}, s.absmax);
    w.add_vector(weight_name + ".quant_map", DType::F32, {16}, code);
  }
  const std::string json = quant_state_json(s);
  std::vector<uint8_t> jb(json.begin(), json.end());
  const int64_t len = static_cast<int64_t>(jb.size());
  w.add_owned(weight_name + ".quant_state.bitsandbytes__" + std::string(quant_type_name(s.type)), DType::U8, {len},
              std::move(jb));
}

bool is_4bit_in_safetensors(const SafeTensorsFile& f, const std::string& weight_name) {
  return f.find(weight_name + ".quant_state.bitsandbytes__nf4") != nullptr ||
         f.find(weight_name + ".quant_state.bitsandbytes__fp4") != nullptr;
}

Quantized4bit read_4bit_from_safetensors(const SafeTensorsFile& f, const std::string& weight_name) {
  const Reader r(f, weight_name);
  const SafeTensorInfo* nf4 = r.maybe(".quant_state.bitsandbytes__nf4");
  const SafeTensorInfo* fp4 = r.maybe(".quant_state.bitsandbytes__fp4");
  if (!nf4 && !fp4)
    fail(f.path(), "tensor '" + weight_name + "' has no quant_state.bitsandbytes__nf4 or __fp4 entry: not a 4-bit weight");
  if (nf4 && fp4) r.fail_on(weight_name, "has both an nf4 and an fp4 quant_state");
  const SafeTensorInfo& qs = nf4 ? *nf4 : *fp4;
  const QuantType key_type = nf4 ? QuantType::NF4 : QuantType::FP4;

  // The JSON of the non-tensor fields.
  if (qs.dtype != DType::U8) r.fail_on(qs.name, "has dtype " + std::string(dtype_name(qs.dtype)) + ", expected U8");
  auto qs_bytes = f.data(qs);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(qs_bytes.begin(), qs_bytes.end());
  } catch (const nlohmann::json::exception& e) {
    r.fail_on(qs.name, "quant-state is not valid JSON" +
                           json_error_at(e, std::string_view(reinterpret_cast<const char*>(qs_bytes.data()),
                                                             qs_bytes.size())));
  }
  if (!j.is_object()) r.fail_on(qs.name, "quant-state JSON is not an object");
  static const std::set<std::string> kKnown = {"quant_type", "blocksize",    "dtype",        "shape",
                                               "nested_blocksize", "nested_dtype", "nested_offset"};
  for (const auto& [k, v] : j.items())
    if (!kKnown.count(k)) r.fail_on(qs.name, "quant-state JSON has an unknown field '" + k + "'");
  for (const char* k : {"quant_type", "blocksize", "dtype", "shape"})
    if (!j.contains(k)) r.fail_on(qs.name, std::string("quant-state JSON has no '") + k + "' field");

  Quantized4bit q;
  QuantState& s = q.state;
  const std::string qt = json_string(j, "quant_type", r, qs.name);
  if (qt != "nf4" && qt != "fp4") r.fail_on(qs.name, "quant-state quant_type '" + qt + "' is not nf4 or fp4");
  s.type = qt == "nf4" ? QuantType::NF4 : QuantType::FP4;
  if (s.type != key_type)
    r.fail_on(qs.name, "quant-state quant_type '" + qt + "' does not match the tensor name's suffix");
  s.blocksize = json_int(j, "blocksize", r, qs.name);
  check_blocksize(s.blocksize, r.where(qs.name).c_str());
  const std::string dt = json_string(j, "dtype", r, qs.name);
  if (dt == "float32") s.dtype = ComputeDType::F32;
  else if (dt == "bfloat16") s.dtype = ComputeDType::BF16;
  else if (dt == "float16") s.dtype = ComputeDType::F16;
  else r.fail_on(qs.name, "quant-state dtype '" + dt + "' is not float32, bfloat16 or float16");
  const auto& shape = j.at("shape");
  if (!shape.is_array()) r.fail_on(qs.name, "quant-state shape is not a list");
  for (const auto& d : shape) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      r.fail_on(qs.name, "quant-state shape holds something other than non-negative integers");
    s.shape.push_back(d.get<int64_t>());
  }
  const int64_t n = shape_numel(s.shape, r.where(qs.name));
  if (n == 0) r.fail_on(qs.name, "quant-state shape has no elements");
  const int64_t nb = num_blocks(n, s.blocksize);
  const std::string blocks_why = "one per block of " + std::to_string(s.blocksize) + " of the " + std::to_string(n) +
                                 " elements";

  // Nested or not: the two tensors and the three JSON fields come together.
  const SafeTensorInfo* nested_absmax = r.maybe(".nested_absmax");
  const SafeTensorInfo* nested_map = r.maybe(".nested_quant_map");
  const bool json_nested = j.contains("nested_offset") || j.contains("nested_blocksize") || j.contains("nested_dtype");
  s.nested = nested_absmax || nested_map || json_nested;
  if (s.nested) {
    if (!nested_absmax) fail(f.path(), "missing tensor '" + weight_name + ".nested_absmax' (the weight is double-quantized)");
    if (!nested_map)
      fail(f.path(), "missing tensor '" + weight_name + ".nested_quant_map' (the weight is double-quantized)");
    for (const char* k : {"nested_blocksize", "nested_dtype", "nested_offset"})
      if (!j.contains(k)) r.fail_on(qs.name, std::string("quant-state JSON of a nested weight has no '") + k + "' field");
    s.nested_blocksize = json_int(j, "nested_blocksize", r, qs.name);
    check_blocksize(s.nested_blocksize, r.where(qs.name).c_str());
    if (json_string(j, "nested_dtype", r, qs.name) != "float32")
      r.fail_on(qs.name, "quant-state nested_dtype is not float32");
    const auto& off = j.at("nested_offset");
    if (!off.is_number()) r.fail_on(qs.name, "quant-state nested_offset is not a number");
    const double o = off.get<double>();
    if (!(std::fabs(o) <= static_cast<double>(std::numeric_limits<float>::max())))
      r.fail_on(qs.name, "quant-state nested_offset is not a finite float32");
    s.offset = static_cast<float>(o);  // bnb wrote repr(float(offset_f32)): exact
  }

  // The tensors, each checked against the JSON.
  const SafeTensorInfo& wt = r.need("", "the packed 4-bit codes");
  {
    const uint64_t want = static_cast<uint64_t>(packed_4bit_bytes(n));
    const uint64_t have = static_cast<uint64_t>(wt.numel()) * dtype_size(wt.dtype);
    if (have != want)
      r.fail_on(wt.name, "holds " + std::to_string(have) + " bytes of packed codes, expected " + std::to_string(want) +
                             " for " + std::to_string(n) + " elements");
    auto bytes = f.data(wt);
    if (bytes.size() != want) r.fail_on(wt.name, "data size does not match its shape");
    q.packed.assign(bytes.begin(), bytes.end());
  }
  const SafeTensorInfo& am = r.need(".absmax", "the per-block scales");
  // A NaN / infinite scale dequantizes its whole block to garbage: refused here, naming it.
  auto check_finite = [&](const std::vector<float>& v, const SafeTensorInfo& t, const char* what) {
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]))
        r.fail_on(t.name, std::string(what) + " " + std::to_string(i) + " is " + (std::isnan(v[i]) ? "NaN" : "infinite") +
                              ": the weight would dequantize to non-finite values");
  };
  if (s.nested) {
    s.absmax_q = r.read<uint8_t>(am, DType::U8, nb, blocks_why + ", double-quantized");
    s.nested_absmax = r.read<float>(*nested_absmax, DType::F32, num_blocks(nb, s.nested_blocksize),
                                    "one per " + std::to_string(s.nested_blocksize) + " of the " + std::to_string(nb) +
                                        " absmax values");
    const std::vector<float> ncode = r.read<float>(*nested_map, DType::F32, 256, "the 8-bit code");
    check_finite(s.nested_absmax, *nested_absmax, "nested absmax");
    check_finite(ncode, *nested_map, "value");
    std::copy(ncode.begin(), ncode.end(), s.nested_code.begin());
  } else {
    s.absmax = r.read<float>(am, DType::F32, nb, blocks_why);
    check_finite(s.absmax, am, "absmax");
  }
  const SafeTensorInfo& qm = r.need(".quant_map", "the 4-bit code");
  const std::vector<float> code = r.read<float>(qm, DType::F32, 16, "the 16 values of the 4-bit code");
  const auto& expect = codebook_4bit(s.type);
  for (int i = 0; i < 16; ++i)
    if (!(code[static_cast<size_t>(i)] == expect[static_cast<size_t>(i)]))
      r.fail_on(qm.name, "is not bitsandbytes' " + std::string(quant_type_name(s.type)) + " code (value " +
                             std::to_string(i) + " is " + std::to_string(code[static_cast<size_t>(i)]) + ")");
  s.code = expect;
  return q;
}

}  // namespace qlora
