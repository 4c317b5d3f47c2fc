#pragma once
// Writing output files so that nothing the user had is lost: data goes to
// "<path>.tmp-<pid>" in the same directory, is flushed and fsync'ed, then renamed over
// `path`. A crash leaves either the old file or the new one, never half of one.
#include <cstdint>
#include <functional>
#include <span>
#include <string>

namespace qlora {

class AtomicFileWriter {
 public:
  // Opens the temporary file. Throws Error naming `path` on failure.
  explicit AtomicFileWriter(std::string path);
  // Discards the temporary file if commit() was not called.
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  void write(std::span<const uint8_t> b) { write(b.data(), b.size()); }
  void write(std::string_view s) { write(s.data(), s.size()); }
  uint64_t bytes_written() const { return written_; }
  // fsync + rename to the final path. Throws Error on failure.
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Convenience: whole contents at once.
void write_file_atomic(const std::string& path, std::string_view contents);

}  // namespace qlora
