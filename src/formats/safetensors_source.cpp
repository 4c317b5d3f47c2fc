#include "formats/safetensors_source.h"

#include <cstring>
#include <map>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/float_formats.h"
#include "formats/safetensors.h"
#include "quant/int8_safetensors.h"
#include "quant/mxfp4.h"
#include "quant/quant_state.h"
#include "quant/quantize_checkpoint.h"

namespace qlora {

namespace {

const char* const kQuantSuffixes[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                      ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"};

class SafeTensorsSource : public TensorSource {
 public:
  // fp8: the checkpoint's FP8 block scheme (config.json's quantization_config), if any.
  SafeTensorsSource(const std::vector<std::string>& paths, std::string where,
                    std::optional<Fp8BlockScheme> fp8 = std::nullopt)
      : where_(std::move(where)), fp8_(fp8) {
    for (const std::string& p : paths) {
      files_.push_back(std::make_unique<SafeTensorsFile>(p));
      for (const SafeTensorInfo& t : files_.back()->tensors()) {
        auto [it, inserted] = index_.emplace(t.name, files_.size() - 1);
        if (!inserted)
          fail(p, "tensor '" + t.name + "' also appears in " + files_[it->second]->path());
      }
    }
    // MXFP4 pairs (quant/mxfp4.h): <name>_blocks beside <name>_scales.
    constexpr std::string_view kBlocks = "_blocks";
    for (const auto& [name, f] : index_)
      if (name.ends_with(kBlocks) && index_.count(name.substr(0, name.size() - kBlocks.size()) + "_scales"))
        mxfp4_.insert(name.substr(0, name.size() - kBlocks.size()));
    // FP8 weights (formats/fp8_checkpoint.h): F8 codes beside <name>_scale_inv. Read only with the
    // config's scheme; FP8 codes with scales of a kind not read here are refused, never taken as
    // they are (that would be silently wrong weights).
    for (const auto& [name, f] : index_) {
      const SafeTensorInfo& t = files_[f]->at(name);
      if (t.dtype != DType::F8_E4M3 && t.dtype != DType::F8_E5M2) continue;
      if (index_.count(name + "_scale_inv")) {
        if (!fp8_)
          fail(files_[f]->path(), "tensor '" + name + "' is FP8 with block scales ('" + name +
                                      "_scale_inv'), but config.json has no quantization_config with quant_method fp8");
        check(t.dtype == DType::F8_E4M3, files_[f]->path(), "tensor '" + name + "': only e4m3 FP8 weights are read");
        fp8_scaled_.insert(name);
      } else if (name.ends_with(".weight") &&
                 (index_.count(name.substr(0, name.size() - 7) + ".weight_scale") || fp8_)) {
        fail(files_[f]->path(), "tensor '" + name + "' is FP8 without a '" + name +
                                    "_scale_inv' block scale (per-tensor or per-channel 'weight_scale' checkpoints, "
                                    "compressed-tensors' or modelopt's, are not read yet)");
      }
    }
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> n(mxfp4_.begin(), mxfp4_.end());
    for (const auto& [name, f] : index_) {
      bool aux = false;
      for (const char* s : {"_blocks", "_scales"})
        if (name.ends_with(s) && mxfp4_.count(name.substr(0, name.size() - std::strlen(s)))) aux = true;
      for (const char* s : kQuantSuffixes) {
        const auto pos = name.rfind(s);
        if (pos != std::string::npos && pos + std::strlen(s) == name.size() && index_.count(name.substr(0, pos)))
          aux = true;
      }
      // An 8-bit weight's SCB / weight_format belong to "<module>.weight".
      if (is_int8_state_part(name)) {
        const std::string module = name.substr(0, name.rfind('.'));
        if (index_.count(module + ".weight")) aux = true;
      }
      // An FP8 weight's block scales belong to it; a static activation scheme's input scales
      // are not used (the weights are dequantized, as transformers does off a GPU).
      if (name.ends_with("_scale_inv") && fp8_scaled_.count(name.substr(0, name.size() - 10))) aux = true;
      if (fp8_ && name.ends_with(".input_scale") && index_.count(name.substr(0, name.size() - 12) + ".weight")) aux = true;
      if (!aux) n.push_back(name);
    }
    return n;
  }
  bool has(const std::string& name) const override { return index_.count(name) != 0 || mxfp4_.count(name) != 0; }
  bool is_mxfp4(const std::string& name) const override { return mxfp4_.count(name) != 0; }

  std::vector<int64_t> shape(const std::string& name) const override {
    if (mxfp4_.count(name)) {  // (experts, in, out), as transformers dequantizes it
      const Mxfp4 m = mxfp4(name);
      return {m.experts, m.groups * 32, m.rows};
    }
    const SafeTensorsFile& f = file_of(name);
    if (const SafeTensorInfo* qs = quant_state_tensor(f, name)) {
      const auto bytes = f.data(*qs);
      const auto j = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("shape") || !j["shape"].is_array())
        fail(f.path(), "tensor '" + qs->name + "' is not a valid bitsandbytes quant state");
      std::vector<int64_t> shape;
      for (const auto& d : j["shape"]) {
        if (!d.is_number_integer()) fail(f.path(), "tensor '" + qs->name + "' has a non-integer shape");
        shape.push_back(d.get<int64_t>());
      }
      return shape;
    }
    return f.at(name).shape;
  }

  std::vector<float> get(const std::string& name) const override {
    if (mxfp4_.count(name)) {
      const Mxfp4 m = mxfp4(name);
      std::vector<float> out;
      out.reserve(static_cast<size_t>(m.experts * m.rows * m.groups * 32));
      for (int64_t e = 0; e < m.experts; ++e) {
        const std::vector<float> s = get_slice(name, e);
        out.insert(out.end(), s.begin(), s.end());
      }
      return out;
    }
    const SafeTensorsFile& f = file_of(name);
    if (quant_state_tensor(f, name)) {
      const Quantized4bit q = read_4bit_from_safetensors(f, name);
      std::vector<float> out(static_cast<size_t>(q.state.numel()));
      dequantize_tensor_4bit(q, out.data());
      return out;
    }
    if (const SafeTensorsFile* sf = int8_scb_file(f, name)) {
      const Quantized8bit q = read_int8_from_safetensors(f, name, sf);
      std::vector<float> out(q.codes.size());
      dequantize_int8_vectorwise(q, out.data());
      return out;
    }
    const SafeTensorInfo& t = f.at(name);
    if (!dtype_is_float(t.dtype))
      fail(f.path(), "tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype)) +
                         ", expected a floating-point type");
    std::vector<float> out = f.to_float(t);
    if (fp8_scaled_.count(name)) {  // codes x their blocks' scales
      const SafeTensorsFile& sf = file_of(name + "_scale_inv");
      const SafeTensorInfo& st = sf.at(name + "_scale_inv");
      check(dtype_is_float(st.dtype) && t.shape.size() == 2 && st.shape.size() <= 2, sf.path(),
            "'" + name + "_scale_inv' must be a float grid of block scales for a 2-D weight");
      const std::vector<float> scale = sf.to_float(st);
      const int64_t sr = st.shape.size() == 2 ? st.shape[0] : 1, sc = st.shape.size() == 2 ? st.shape[1] : static_cast<int64_t>(scale.size());
      check(static_cast<int64_t>(scale.size()) == sr * sc, sf.path(), "'" + name + "_scale_inv' is not a 2-D grid");
      apply_fp8_block_scales(out.data(), t.shape[0], t.shape[1], scale.data(), sr, sc, *fp8_, f.path(), name);
    }
    return out;
  }

  std::optional<Quantized4bit> get_4bit(const std::string& name) const override {
    const SafeTensorsFile& f = file_of(name);
    if (!quant_state_tensor(f, name)) return std::nullopt;
    return read_4bit_from_safetensors(f, name);
  }

  std::optional<Quantized8bit> get_int8(const std::string& name) const override {
    const SafeTensorsFile& f = file_of(name);
    const SafeTensorsFile* sf = int8_scb_file(f, name);
    if (!sf) return std::nullopt;
    return read_int8_from_safetensors(f, name, sf);
  }

  std::vector<float> get_slice(const std::string& name, int64_t i) const override {
    if (mxfp4_.count(name)) {  // expert i's (rows, in) codes, decoded and turned to (in, rows)
      const Mxfp4 m = mxfp4(name);
      check(i >= 0 && i < m.experts, m.blocks_file->path(), "tensor '" + name + "' has no expert " + std::to_string(i));
      const int64_t cols = m.groups * 32, per = m.rows * m.groups;
      std::vector<float> rows(static_cast<size_t>(m.rows * cols));
      const int64_t bad = mxfp4_decode_rows(m.blocks_file->data(*m.blocks).data() + i * per * 16,
                                            m.scales_file->data(*m.scales).data() + i * per, m.rows, m.groups, rows.data());
      check(bad == 0, m.scales_file->path(),
            "'" + name + "_scales' of expert " + std::to_string(i) + " holds scales past 2^125: " + std::to_string(bad) +
                " values overflow float32 (a damaged file?)");
      std::vector<float> out(rows.size());
      for (int64_t r = 0; r < m.rows; ++r)
        for (int64_t c = 0; c < cols; ++c) out[static_cast<size_t>(c * m.rows + r)] = rows[static_cast<size_t>(r * cols + c)];
      return out;
    }
    const SafeTensorsFile& f = file_of(name);
    const SafeTensorInfo& t = f.at(name);
    if (quant_state_tensor(f, name) || int8_scb_file(f, name) || fp8_scaled_.count(name) || t.shape.empty())
      return TensorSource::get_slice(name, i);
    check(dtype_is_float(t.dtype), f.path(), "tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype)) +
                                                 ", expected a floating-point type");
    check(i >= 0 && i < t.shape[0], f.path(), "tensor '" + name + "' has no slice " + std::to_string(i));
    const size_t n = static_cast<size_t>(t.numel() / t.shape[0]);
    std::vector<float> out(n);
    convert_to_f32(t.dtype, f.data(t).data() + static_cast<size_t>(i) * n * dtype_size(t.dtype), out.data(), n);
    return out;
  }

  std::optional<ComputeDType> stored_16bit(const std::string& name) const override {
    const SafeTensorInfo* t = plain_float(name);
    if (!t) return std::nullopt;
    if (t->dtype == DType::BF16) return ComputeDType::BF16;
    if (t->dtype == DType::F16) return ComputeDType::F16;
    return std::nullopt;
  }
  bool reads_rows(const std::string& name) const override {
    const SafeTensorInfo* t = plain_float(name);
    return t && t->shape.size() == 2;
  }
  void get_rows(const std::string& name, int64_t r0, int64_t r1, float* out) const override {
    const SafeTensorInfo* t = plain_float(name);
    if (!t || t->shape.size() != 2) return TensorSource::get_rows(name, r0, r1, out);
    const SafeTensorsFile& f = file_of(name);
    check(0 <= r0 && r0 <= r1 && r1 <= t->shape[0], f.path(),
          "tensor '" + name + "' " + shape_to_string(t->shape) + " has no rows " + std::to_string(r0) + ".." +
              std::to_string(r1));
    const size_t cols = static_cast<size_t>(t->shape[1]);
    convert_to_f32(t->dtype, f.data(*t).data() + static_cast<size_t>(r0) * cols * dtype_size(t->dtype), out,
                   static_cast<size_t>(r1 - r0) * cols);
  }

  std::string describe() const override { return where_; }

 private:
  // An MXFP4 pair's tensors and shape: blocks (experts, rows, groups, 16), scales
  // (experts, rows, groups), both uint8.
  struct Mxfp4 {
    const SafeTensorsFile *blocks_file, *scales_file;
    const SafeTensorInfo *blocks, *scales;
    int64_t experts, rows, groups;
  };
  Mxfp4 mxfp4(const std::string& name) const {
    Mxfp4 m{};
    m.blocks_file = &file_of(name + "_blocks");
    m.scales_file = &file_of(name + "_scales");
    m.blocks = &m.blocks_file->at(name + "_blocks");
    m.scales = &m.scales_file->at(name + "_scales");
    const auto& b = m.blocks->shape;
    const auto& s = m.scales->shape;
    check(m.blocks->dtype == DType::U8 && m.scales->dtype == DType::U8 && b.size() == 4 && b[3] == 16 &&
              s.size() == 3 && s[0] == b[0] && s[1] == b[1] && s[2] == b[2],
          m.blocks_file->path(),
          "'" + name + "_blocks' / '_scales' are not an MXFP4 pair (uint8 (experts, rows, groups, 16) and "
          "(experts, rows, groups)): " + shape_to_string(b) + ", " + shape_to_string(s));
    m.experts = b[0];
    m.rows = b[1];
    m.groups = b[2];
    return m;
  }
  // A tensor that get() reads as its stored floats and nothing else (not a bitsandbytes 4- or
  // 8-bit weight, FP8 with block scales, or MXFP4); null for any other or an absent one.
  const SafeTensorInfo* plain_float(const std::string& name) const {
    if (mxfp4_.count(name) || !index_.count(name) || fp8_scaled_.count(name)) return nullptr;
    const SafeTensorsFile& f = file_of(name);
    if (quant_state_tensor(f, name) || int8_scb_file(f, name)) return nullptr;
    const SafeTensorInfo& t = f.at(name);
    return dtype_is_float(t.dtype) ? &t : nullptr;
  }
  // The file holding the SCB of `name` when `name` is an int8 weight with an SCB (a sharded
  // checkpoint may put it in another shard); null otherwise.
  const SafeTensorsFile* int8_scb_file(const SafeTensorsFile& f, const std::string& name) const {
    const SafeTensorInfo* t = f.find(name);
    if (!t || t->dtype != DType::I8 || name.size() < 7 || name.compare(name.size() - 7, 7, ".weight") != 0)
      return nullptr;
    auto it = index_.find(int8_scb_name(name));
    if (it == index_.end()) return nullptr;
    return files_[it->second].get();
  }
  const SafeTensorsFile& file_of(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail(where_, "no tensor named '" + name + "'");
    return *files_[it->second];
  }
  static const SafeTensorInfo* quant_state_tensor(const SafeTensorsFile& f, const std::string& name) {
    if (const SafeTensorInfo* t = f.find(name + ".quant_state.bitsandbytes__nf4")) return t;
    return f.find(name + ".quant_state.bitsandbytes__fp4");
  }

  std::string where_;
  std::vector<std::unique_ptr<SafeTensorsFile>> files_;
  std::map<std::string, size_t> index_;
  std::set<std::string> mxfp4_;  // names of MXFP4 pairs (without _blocks / _scales)
  std::optional<Fp8BlockScheme> fp8_;
  std::set<std::string> fp8_scaled_;  // FP8 weights with their <name>_scale_inv
};

}  // namespace

std::unique_ptr<TensorSource> make_safetensors_source(const std::vector<std::string>& paths, std::string where,
                                                      std::optional<Fp8BlockScheme> fp8) {
  return std::make_unique<SafeTensorsSource>(paths, std::move(where), fp8);
}

}  // namespace qlora
