#include "quant/int8_safetensors.h"

#include <cmath>
#include <cstring>

#include "base/error.h"

namespace qlora {

namespace {

bool ends_with(const std::string& s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string module_of(const std::string& weight_name) {
  check(ends_with(weight_name, ".weight"), weight_name, "an 8-bit weight's name must end in '.weight'");
  return weight_name.substr(0, weight_name.size() - 7);
}

}  // namespace

std::string int8_scb_name(const std::string& weight_name) { return module_of(weight_name) + ".SCB"; }
std::string int8_format_name(const std::string& weight_name) { return module_of(weight_name) + ".weight_format"; }

bool is_int8_state_part(const std::string& name) { return ends_with(name, ".SCB") || ends_with(name, ".weight_format"); }

bool is_int8_in_safetensors(const SafeTensorsFile& f, const std::string& weight_name, const SafeTensorsFile* scb_file) {
  const SafeTensorInfo* t = f.find(weight_name);
  if (!t || t->dtype != DType::I8 || !ends_with(weight_name, ".weight")) return false;
  return (scb_file ? *scb_file : f).find(int8_scb_name(weight_name)) != nullptr;
}

Quantized8bit read_int8_from_safetensors(const SafeTensorsFile& f, const std::string& weight_name,
                                         const SafeTensorsFile* scb_file) {
  const SafeTensorsFile& sf = scb_file ? *scb_file : f;
  const SafeTensorInfo& t = f.at(weight_name);
  const std::string where = f.path() + ": tensor '" + weight_name + "'";
  check(t.dtype == DType::I8, where, "is not int8, so not a bitsandbytes 8-bit weight");
  check(t.shape.size() == 2 && t.shape[0] > 0 && t.shape[1] > 0, where, "an 8-bit Linear weight must be 2-D");
  const std::string scb_name = int8_scb_name(weight_name);
  const SafeTensorInfo* s = sf.find(scb_name);
  check(s != nullptr, where, "is int8 but '" + scb_name + "' is missing");
  const std::string swhere = sf.path() + ": tensor '" + scb_name + "'";
  check(s->dtype == DType::F32 || s->dtype == DType::F16 || s->dtype == DType::BF16, swhere,
        "must be floating point (bitsandbytes writes float32)");
  check(s->shape.size() == 1 && s->shape[0] == t.shape[0], swhere,
        "must have one value per output row (" + std::to_string(t.shape[0]) + ")");
  if (const SafeTensorInfo* fm = sf.find(int8_format_name(weight_name))) {
    // bnb 0.50 reads only the row-major layout (maybe_rearrange_weight): 0 or "row".
    const std::string fwhere = sf.path() + ": tensor '" + fm->name + "'";
    check(fm->dtype == DType::U8 && fm->numel() == 1, fwhere, "must be a single uint8");
    check(sf.data(*fm)[0] == 0, fwhere,
          "is " + std::to_string(sf.data(*fm)[0]) + "; only 0 (\"row\") is supported, as in bitsandbytes 0.50");
  }
  Quantized8bit q;
  q.rows = t.shape[0];
  q.cols = t.shape[1];
  const auto bytes = f.data(t);
  q.codes.resize(bytes.size());
  std::memcpy(q.codes.data(), bytes.data(), bytes.size());
  q.scb = sf.to_float(*s);
  for (size_t r = 0; r < q.scb.size(); ++r)
    check(std::isfinite(q.scb[r]) && q.scb[r] >= 0.0f, swhere,
          "row " + std::to_string(r) + " has scale " + std::to_string(q.scb[r]) + " (must be finite and >= 0)");
  return q;
}

void write_int8_to_safetensors(SafeTensorsWriter& w, const std::string& weight_name, const Quantized8bit& q) {
  std::vector<uint8_t> codes(q.codes.size());
  std::memcpy(codes.data(), q.codes.data(), codes.size());
  w.add_owned(weight_name, DType::I8, {q.rows, q.cols}, std::move(codes));
  std::vector<uint8_t> scb(q.scb.size() * sizeof(float));
  std::memcpy(scb.data(), q.scb.data(), scb.size());
  w.add_owned(int8_scb_name(weight_name), DType::F32, {q.rows}, std::move(scb));
  w.add_owned(int8_format_name(weight_name), DType::U8, {}, std::vector<uint8_t>{0});
}

}  // namespace qlora
