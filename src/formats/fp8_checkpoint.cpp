#include "formats/fp8_checkpoint.h"

#include "base/error.h"
#include "base/text_excerpt.h"

namespace qlora {

std::optional<Fp8BlockScheme> checkpoint_fp8_scheme(const nlohmann::json& config, const std::string& where) {
  if (!config.is_object()) return std::nullopt;
  const auto qc = config.find("quantization_config");
  if (qc == config.end() || qc->is_null()) return std::nullopt;
  if (!qc->is_object()) fail(where, "quantization_config must be an object");
  const auto m = qc->find("quant_method");
  const std::string method = m != qc->end() && m->is_string() ? m->get<std::string>() : "";
  if (method == "bitsandbytes" || method == "mxfp4" || (method.empty() && qc->contains("load_in_4bit")))
    return std::nullopt;  // (read from the tensors themselves)
  if (method != "fp8")
    fail(where, "quantization_config quant_method " + excerpt(method) +
                    " is not supported (bitsandbytes 4-/8-bit, gpt-oss's mxfp4 and FP8 block-scaled checkpoints are); "
                    "use the unquantized checkpoint");
  if (const auto f = qc->find("fmt"); f != qc->end() && !f->is_null() && *f != "e4m3")
    fail(where, "quantization_config fmt " + f->dump() + ": only e4m3 FP8 checkpoints are read");
  Fp8BlockScheme s;
  const auto b = qc->find("weight_block_size");
  if (b == qc->end()) {  // (transformers' FineGrainedFP8Config default)
    s.rows = s.cols = 128;
  } else if (!b->is_null()) {
    constexpr int64_t kMaxBlock = int64_t{1} << 20;
    if (!b->is_array() || b->size() != 2 || !(*b)[0].is_number_integer() || !(*b)[1].is_number_integer() ||
        (*b)[0].get<int64_t>() <= 0 || (*b)[1].get<int64_t>() <= 0 || (*b)[0].get<int64_t>() > kMaxBlock ||
        (*b)[1].get<int64_t>() > kMaxBlock)
      fail(where, "quantization_config weight_block_size " + b->dump() + " must be two positive integers (at most 2^20)");
    s.rows = (*b)[0].get<int64_t>();
    s.cols = (*b)[1].get<int64_t>();
  }
  return s;
}

void apply_fp8_block_scales(float* w, int64_t rows, int64_t cols, const float* scale, int64_t scale_rows,
                            int64_t scale_cols, const Fp8BlockScheme& scheme, const std::string& where,
                            const std::string& name) {
  int64_t br = scheme.rows, bc = scheme.cols;
  // (appended piece by piece: "(" + std::to_string(...) trips GCC 12's -Wrestrict false positive)
  auto pair = [](int64_t a, int64_t b) {
    std::string s(1, '(');
    s.append(std::to_string(a)).append(", ").append(std::to_string(b)).append(")");
    return s;
  };
  const std::string grid = pair(scale_rows, scale_cols), shape = pair(rows, cols);
  if (br == 0 && scale_rows * scale_cols != 1) {  // no block size configured: the grid must divide the weight
    check(scale_rows > 0 && scale_cols > 0 && rows % scale_rows == 0 && cols % scale_cols == 0, where,
          "'" + name + "_scale_inv' " + grid + " does not divide the weight " + shape +
              " into whole blocks, and config.json gives no weight_block_size");
    br = rows / scale_rows;
    bc = cols / scale_cols;
  }
  if (br == 0) {  // one scale for the tensor
    check(scale_rows * scale_cols == 1, where, "'" + name + "_scale_inv' holds no scale");
    for (int64_t i = 0; i < rows * cols; ++i) w[i] *= scale[0];
    return;
  }
  check(rows > 0 && cols > 0 && scale_rows == (rows - 1) / br + 1 && scale_cols == (cols - 1) / bc + 1, where,
        "'" + name + "_scale_inv' is " + grid + ", but a weight " + shape + " in blocks of " + std::to_string(br) +
            " x " + std::to_string(bc) + " has " + pair((rows - 1) / br + 1, (cols - 1) / bc + 1));
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scale + (r / br) * scale_cols;
    float* row = w + r * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] *= s[c / bc];
  }
}

}  // namespace qlora
