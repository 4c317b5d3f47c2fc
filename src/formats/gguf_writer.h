#pragma once
// Writing GGUF (version 3) files: metadata key/values, then tensor infos, then the tensor
// data at 32-byte alignment, as llama.cpp's gguf library lays them out. Tensor data is
// produced one tensor at a time while writing (a model never needs to be held twice), and
// the file is written to a temporary name and renamed (base/atomic_file.h).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/ggml_types.h"
#include "formats/gguf.h"

namespace qlora {

class GgufWriter {
 public:
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  void set_bool_array(const std::string& key, const std::vector<bool>& v);
  // Copies a value read from another GGUF file (any type, arrays included).
  void copy_value(const std::string& key, const GgufValue& v);

  // A tensor of `type` and row-major `shape` ([out, in] for a Linear weight; GGUF stores
  // the dims reversed). `data` is called once, while writing, and must return exactly
  // ggml_nbytes(type, numel) bytes. Throws Error when the row length does not fit the
  // type's block size.
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                  std::function<std::vector<uint8_t>()> data);

  // Writes the file. Throws Error naming `path` (or the tensor) on failure; an existing
  // file at `path` is left as it was then.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> shape;
    uint64_t nbytes;
    std::function<std::vector<uint8_t>()> data;
  };
  void key(const std::string& k, GgufValueType t);
  std::string kv_;  // serialized key/value pairs
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

// float32 rows -> ggml blocks, as ggml's reference quantizers (quantize_row_*_ref) do.
// n must be a multiple of 32.
std::vector<uint8_t> quantize_q8_0(const float* x, int64_t n);
std::vector<uint8_t> quantize_q4_0(const float* x, int64_t n);
// float32 -> F16 / BF16 / F32 bytes (round to nearest even).
std::vector<uint8_t> encode_float_tensor(const std::vector<float>& x, GgmlType type);

}  // namespace qlora
