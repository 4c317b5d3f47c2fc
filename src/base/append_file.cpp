#include "base/append_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace qlora {

LineAppendFile::LineAppendFile(std::string path, bool truncate) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0644);
  if (fd_ < 0) fail(path_, std::string("cannot open for writing: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode)) size_ = static_cast<int64_t>(st.st_size);
}

LineAppendFile::~LineAppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void LineAppendFile::append_line(std::string_view line) {
  std::string buf;
  buf.reserve(line.size() + 1);
  buf.append(line);
  buf.push_back('\n');
  const char* p = buf.data();
  size_t n = buf.size();
  while (n > 0) {
    const ssize_t k = ::write(fd_, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      const int err = k < 0 ? errno : ENOSPC;
      // Drop the part of the line that did get written: a reader never sees half a record.
      if (::ftruncate(fd_, size_) != 0) { /* not a regular file (e.g. a device): nothing to cut */ }
      fail(path_, std::string("write failed: ") + std::strerror(err) + " (the lines before this one are kept)");
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
  size_ += static_cast<int64_t>(buf.size());
}

void LineAppendFile::sync() {
  if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS)
    fail(path_, std::string("fsync failed: ") + std::strerror(errno));
}

}  // namespace qlora
