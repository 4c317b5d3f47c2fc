#pragma once
// Read-only memory mapping of a whole file. Model files are mapped, never read whole
// into memory: tensors are views into the mapping.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace qlora {

class MappedFile {
 public:
  // Maps `path` read-only. Throws Error naming the path when it cannot be opened
  // or mapped. An empty file maps to an empty span.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Whole text file into memory (for small files: JSON configs, tokenizers). Throws Error naming
// the file when it cannot be read or holds a NUL byte (no text does: a binary file or a device
// such as /dev/zero is refused at its first NUL, not read without end).
std::string read_text_file(const std::string& path);
// Whole file into memory as bytes, any content (a tokenizer.model copied as it is).
std::string read_file_bytes(const std::string& path);
bool file_exists(const std::string& path);

}  // namespace qlora
