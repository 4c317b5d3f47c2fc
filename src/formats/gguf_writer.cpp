#include "formats/gguf_writer.h"

#include <cmath>
#include <cstring>

#include "base/atomic_file.h"
#include "base/error.h"
#include "base/float_formats.h"

namespace qlora {

namespace {

constexpr uint64_t kAlignment = 32;

template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_string(std::string& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out.append(s);
}

void put_value(std::string& out, const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::STRING: put_string(out, v.str); return;
    case GgufValueType::ARRAY:
      put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
      put<uint64_t>(out, v.count);
      if (v.elem_type == GgufValueType::STRING) {
        for (std::string_view s : v.strings) put_string(out, s);
      } else if (v.elem_type == GgufValueType::ARRAY) {
        for (const GgufValue& a : v.arrays) put_value(out, a);  // nested: each has its own header
      } else {
        out.append(reinterpret_cast<const char*>(v.raw.data()), v.raw.size());
      }
      return;
    case GgufValueType::F32: put<float>(out, static_cast<float>(v.f)); return;
    case GgufValueType::F64: put<double>(out, v.f); return;
    case GgufValueType::I8: put<int8_t>(out, static_cast<int8_t>(v.i)); return;
    case GgufValueType::I16: put<int16_t>(out, static_cast<int16_t>(v.i)); return;
    case GgufValueType::I32: put<int32_t>(out, static_cast<int32_t>(v.i)); return;
    case GgufValueType::I64: put<int64_t>(out, v.i); return;
    default: {
      const size_t n = gguf_fixed_value_size(v.type);
      const uint64_t u = v.u;
      out.append(reinterpret_cast<const char*>(&u), n);  // little-endian low bytes
      return;
    }
  }
}

uint16_t f16_bits(float x) { return f32_to_fp16(x); }

}  // namespace

void GgufWriter::key(const std::string& k, GgufValueType t) {
  put_string(kv_, k);
  put<uint32_t>(kv_, static_cast<uint32_t>(t));
  ++n_kv_;
}

void GgufWriter::set_u32(const std::string& k, uint32_t v) { key(k, GgufValueType::U32), put(kv_, v); }
void GgufWriter::set_i32(const std::string& k, int32_t v) { key(k, GgufValueType::I32), put(kv_, v); }
void GgufWriter::set_f32(const std::string& k, float v) { key(k, GgufValueType::F32), put(kv_, v); }
void GgufWriter::set_bool(const std::string& k, bool v) { key(k, GgufValueType::BOOL), put<uint8_t>(kv_, v ? 1 : 0); }
void GgufWriter::set_string(const std::string& k, const std::string& v) {
  key(k, GgufValueType::STRING);
  put_string(kv_, v);
}
void GgufWriter::set_string_array(const std::string& k, const std::vector<std::string>& v) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::STRING));
  put<uint64_t>(kv_, v.size());
  for (const std::string& s : v) put_string(kv_, s);
}
void GgufWriter::set_i32_array(const std::string& k, const std::vector<int32_t>& v) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::I32));
  put<uint64_t>(kv_, v.size());
  for (int32_t x : v) put(kv_, x);
}
void GgufWriter::set_f32_array(const std::string& k, const std::vector<float>& v) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::F32));
  put<uint64_t>(kv_, v.size());
  for (float x : v) put(kv_, x);
}
void GgufWriter::set_bool_array(const std::string& k, const std::vector<bool>& v) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::BOOL));
  put<uint64_t>(kv_, v.size());
  for (bool x : v) put<uint8_t>(kv_, x ? 1 : 0);
}
void GgufWriter::copy_value(const std::string& k, const GgufValue& v) {
  key(k, v.type);
  put_value(kv_, v);
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                            std::function<std::vector<uint8_t>()> data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const GgmlTypeTraits& tr = ggml_traits(type);
  if (shape.empty() || shape.back() % tr.block_size != 0)
    fail(name, "rows of " + std::to_string(shape.empty() ? 0 : shape.back()) + " elements do not fit " +
                   std::string(tr.name) + " blocks of " + std::to_string(tr.block_size));
  const auto nbytes = ggml_nbytes(type, n);
  if (!nbytes) fail(name, "size overflows");
  tensors_.push_back({name, type, std::move(shape), static_cast<uint64_t>(*nbytes), std::move(data)});
}

void GgufWriter::write(const std::string& path) const {
  std::string head;
  head.append("GGUF");
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, n_kv_);
  head.append(kv_);
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(head, static_cast<uint64_t>(*it));
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, offset);
    offset += (t.nbytes + kAlignment - 1) / kAlignment * kAlignment;
  }
  head.append((kAlignment - head.size() % kAlignment) % kAlignment, '\0');
  AtomicFileWriter w(path);
  w.write(head);
  const std::string pad(kAlignment, '\0');
  for (const Tensor& t : tensors_) {
    std::vector<uint8_t> b;
    try {
      b = t.data();
    } catch (const Error& e) {  // (the file is not committed: nothing is left at `path`)
      fail(path, "tensor " + t.name + ": " + e.what() + "; nothing was written");
    }
    if (b.size() != t.nbytes)
      fail(t.name, "produced " + std::to_string(b.size()) + " bytes, expected " + std::to_string(t.nbytes));
    w.write(b);
    w.write(pad.data(), (kAlignment - t.nbytes % kAlignment) % kAlignment);
  }
  w.commit();
}

std::vector<uint8_t> quantize_q8_0(const float* x, int64_t n) {
  std::vector<uint8_t> out(static_cast<size_t>(n / kQK8_0) * sizeof(BlockQ8_0));
  for (int64_t b = 0; b < n / kQK8_0; ++b) {
    const float* v = x + b * kQK8_0;
    float amax = 0;
    for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    BlockQ8_0 blk{};
    blk.d = f16_bits(d);
    for (int j = 0; j < kQK8_0; ++j) blk.qs[j] = static_cast<int8_t>(std::round(v[j] * id));
    std::memcpy(out.data() + b * sizeof(BlockQ8_0), &blk, sizeof blk);
  }
  return out;
}

std::vector<uint8_t> quantize_q4_0(const float* x, int64_t n) {
  std::vector<uint8_t> out(static_cast<size_t>(n / kQK4_0) * sizeof(BlockQ4_0));
  for (int64_t b = 0; b < n / kQK4_0; ++b) {
    const float* v = x + b * kQK4_0;
    float amax = 0, max = 0;  // max: the value of largest magnitude, with its sign
    for (int j = 0; j < kQK4_0; ++j)
      if (amax < std::fabs(v[j])) amax = std::fabs(v[j]), max = v[j];
    const float d = max / -8.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    BlockQ4_0 blk{};
    blk.d = f16_bits(d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const auto q0 = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(v[j] * id + 8.5f))));
      const auto q1 =
          static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(v[j + kQK4_0 / 2] * id + 8.5f))));
      blk.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
    std::memcpy(out.data() + b * sizeof(BlockQ4_0), &blk, sizeof blk);
  }
  return out;
}

std::vector<uint8_t> encode_float_tensor(const std::vector<float>& x, GgmlType type) {
  if (type == GgmlType::F32) {
    std::vector<uint8_t> out(x.size() * 4);
    std::memcpy(out.data(), x.data(), out.size());
    return out;
  }
  if (type != GgmlType::F16 && type != GgmlType::BF16) fail("gguf", "encode_float_tensor: not a float type");
  std::vector<uint8_t> out(x.size() * 2);
  auto* h = reinterpret_cast<uint16_t*>(out.data());
  for (size_t i = 0; i < x.size(); ++i) h[i] = type == GgmlType::F16 ? f32_to_fp16(x[i]) : f32_to_bf16(x[i]);
  return out;
}

}  // namespace qlora
