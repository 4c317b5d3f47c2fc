#pragma once
// A log that is only ever appended to, one whole line per write, with every write checked
// (metrics.jsonl). A failed write (disk full, I/O error, file size limit) cuts the file back
// to where it ended before that write, so it never holds a torn line, and throws Error
// naming the file and the cause: a run must stop rather than log into the void.
#include <cstdint>
#include <string>
#include <string_view>

namespace qlora {

class LineAppendFile {
 public:
  // Opens `path` for appending, creating it; `truncate` empties it first. Throws Error
  // naming the path when it cannot be opened.
  LineAppendFile(std::string path, bool truncate);
  ~LineAppendFile();
  LineAppendFile(const LineAppendFile&) = delete;
  LineAppendFile& operator=(const LineAppendFile&) = delete;

  // Appends `line` and a newline. Throws Error (file and cause) when the write fails; the
  // file then ends as it did before the call.
  void append_line(std::string_view line);
  // Flushes the file to disk (fsync); used at checkpoints. Throws Error on failure.
  void sync();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  int64_t size_ = 0;  // bytes in the file after the last successful append
};

}  // namespace qlora
