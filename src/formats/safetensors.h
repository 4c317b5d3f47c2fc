#pragma once
// safetensors: an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"k": "v"}}, then the data section. Offsets are relative to the data
// section. The reader maps the file and trusts no byte of it: every malformed header
// is an Error naming the file and the problem.
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/dtype.h"
#include "base/mapped_file.h"

namespace qlora {

struct SafeTensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data section
  int64_t numel() const;
};

struct SafeTensorsHeader {
  std::vector<SafeTensorInfo> tensors;  // in file order of their data
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // absolute offset of the data section in the file
};

// Validates and parses the header of a safetensors file held in `file`.
// `where` names the file in errors. Never reads outside `file`.
SafeTensorsHeader parse_safetensors_header(std::span<const uint8_t> file, std::string_view where);

class SafeTensorsFile {
 public:
  // Maps and validates `path`. Throws Error naming the file on any problem.
  explicit SafeTensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<SafeTensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // nullptr when absent.
  const SafeTensorInfo* find(std::string_view name) const;
  // Throws Error "<file>: no tensor named '<name>'" when absent.
  const SafeTensorInfo& at(std::string_view name) const;
  std::span<const uint8_t> data(const SafeTensorInfo& t) const;
  // Element data as float32 (converting F16/BF16/F64/F8; integers are rejected).
  std::vector<float> to_float(const SafeTensorInfo& t) const;

 private:
  MappedFile file_;
  SafeTensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
};

// Collects tensors and writes them in one go, atomically (temporary file + rename).
// Tensor data is borrowed (add) or owned (add_owned); borrowed spans must outlive write().
class SafeTensorsWriter {
 public:
  void add(std::string name, DType dtype, std::vector<int64_t> shape, std::span<const uint8_t> data);
  void add_owned(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> data);
  template <class T>
  void add_vector(std::string name, DType dtype, std::vector<int64_t> shape, const std::vector<T>& v) {
    std::vector<uint8_t> b(v.size() * sizeof(T));
    if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
    add_owned(std::move(name), dtype, std::move(shape), std::move(b));
  }
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  size_t size() const { return entries_.size(); }
  // Throws Error naming `path` on failure; leaves any existing file untouched then.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::span<const uint8_t> data;
    std::shared_ptr<std::vector<uint8_t>> owned;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// The first file in directory `dir` that makes it a model a writer would replace (config.json,
// a *.safetensors, model.safetensors.index.json), nullopt when it holds none or is not a
// directory: what quantize / merge refuse to write over without --overwrite.
std::optional<std::string> model_file_in_dir(const std::string& dir);

}  // namespace qlora
