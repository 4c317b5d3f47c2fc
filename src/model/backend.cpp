#include "model/backend.h"

#include <string>

#include "base/error.h"

namespace qlora {

void Backend::attention_forward_kv16(const AttentionShape&, float*, float*, float*, const float*, const uint16_t*,
                                     const uint16_t*, ComputeDType) {
  fail("attention", std::string("the ") + name() + " backend keeps its KV cache in float32 (16-bit caches: CPU only)");
}

void Backend::attention_decode_batch(const AttentionShape& heads, std::span<const DecodeRow> rows,
                                     const int32_t* key_start, float* out, float* scratch, const float* q) {
  const int64_t QD = heads.NH * heads.HS;
  for (size_t t = 0; t < rows.size(); ++t) {
    const DecodeRow& r = rows[t];
    AttentionShape a = heads;
    a.T = 1;
    a.Tk = r.pos + 1;
    a.q_pos0 = r.pos;
    a.key_start = key_start ? key_start + t : nullptr;
    a.kv_capacity = r.capacity;
    const int64_t o = static_cast<int64_t>(t) * QD;
    if (r.dtype == ComputeDType::F32)
      attention_forward(a, out + o, nullptr, scratch, q + o, static_cast<const float*>(r.k),
                        static_cast<const float*>(r.v));
    else
      attention_forward_kv16(a, out + o, nullptr, scratch, q + o, static_cast<const uint16_t*>(r.k),
                             static_cast<const uint16_t*>(r.v), r.dtype);
  }
}

void Backend::scale_columns(float* out, const float* in, const float* w, int64_t rows, int64_t cols) {
  if (!host_addressable())
    fail(name(), "per-head q/k norm weights (Command R+'s) run on the CPU backend only for now (use --device cpu)");
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = in[r * cols + c] * w[c];
}

void Backend::scale_columns_backward(float* din, const float* dout, const float* w, int64_t rows, int64_t cols) {
  if (!host_addressable())
    fail(name(), "per-head q/k norm weights (Command R+'s) run on the CPU backend only for now (use --device cpu)");
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) din[r * cols + c] += dout[r * cols + c] * w[c];
}

}  // namespace qlora
