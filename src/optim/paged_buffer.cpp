#include "optim/paged_buffer.h"

#include <csignal>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>
#include <vector>

#include "base/error.h"

namespace qlora {

namespace {

std::string errno_text(int e) { return std::strerror(e); }

std::string mib(size_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB"; }

}  // namespace

std::string default_paged_dir() {
  std::error_code ec;
  auto p = std::filesystem::temp_directory_path(ec);
  return ec ? std::string("/tmp") : p.string();
}

size_t remove_stale_paged_files(const std::string& dir) {
  size_t removed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir.empty() ? default_paged_dir() : dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("qlora-", 0) != 0 || !e.is_regular_file(ec)) continue;
    // ...-<pid>-XXXXXX: the pid is the second-to-last dash-separated field.
    const size_t last = name.rfind('-');
    if (last == std::string::npos || last == 0) continue;
    const size_t prev = name.rfind('-', last - 1);
    if (prev == std::string::npos) continue;
    const std::string pid_s = name.substr(prev + 1, last - prev - 1);
    if (pid_s.empty() || pid_s.size() > 9 || pid_s.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(pid_s));
    if (pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
    if (std::filesystem::remove(e.path(), ec)) ++removed;
  }
  return removed;
}

PagedBuffer::PagedBuffer(const std::string& dir_in, size_t bytes, const std::string& tag) {
  const std::string dir = dir_in.empty() ? default_paged_dir() : dir_in;
  const std::string where = "paged optimizer directory '" + dir + "'";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail(where, "cannot be created: " + ec.message());
  check(std::filesystem::is_directory(dir, ec), where, "is not a directory");

  std::string templ = (std::filesystem::path(dir) / ("qlora-" + tag + "-" + std::to_string(getpid()) + "-XXXXXX"))
                          .string();
  std::vector<char> name(templ.begin(), templ.end());
  name.push_back('\0');
  const int fd = mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) fail(where, "cannot create the state file: " + errno_text(errno));
  fd_ = fd;
  path_ = name.data();
  size_ = bytes;
  if (bytes == 0) return;  // nothing to map; the (empty) file still marks where state would go

  // Reserve the blocks now: writing to a hole of a shared mapping on a full disk is a
  // SIGBUS, which no caller could handle. Filesystems without fallocate get a sparse file.
  const int rc = posix_fallocate(fd_, 0, static_cast<off_t>(bytes));
  if (rc == EOPNOTSUPP || rc == EINVAL) {
    if (ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
      const int e = errno;
      release();
      fail(where, "cannot size the state file to " + mib(bytes) + ": " + errno_text(e));
    }
  } else if (rc != 0) {
    release();
    fail(where, "cannot reserve " + mib(bytes) + " for paged optimizer state: " + errno_text(rc));
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    release();
    fail(where, "cannot map " + mib(bytes) + " of paged optimizer state: " + errno_text(e));
  }
  data_ = static_cast<uint8_t*>(p);
}

PagedBuffer::~PagedBuffer() { release(); }

PagedBuffer::PagedBuffer(PagedBuffer&& o) noexcept
    : path_(std::exchange(o.path_, {})),
      fd_(std::exchange(o.fd_, -1)),
      data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)) {}

PagedBuffer& PagedBuffer::operator=(PagedBuffer&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::exchange(o.path_, {});
    fd_ = std::exchange(o.fd_, -1);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void PagedBuffer::release() noexcept {
  // Unmapping a shared mapping of a file that is about to be deleted does not write the
  // dirty pages back (the inode goes away with its page cache), so this is cheap.
  if (data_) munmap(data_, size_);
  if (fd_ >= 0) close(fd_);
  if (!path_.empty()) unlink(path_.c_str());
  data_ = nullptr;
  fd_ = -1;
  size_ = 0;
  path_.clear();
}

StateBuffer StateBuffer::anonymous(size_t bytes) {
  StateBuffer b;
  if (bytes == 0) return b;
  // mmap rather than new[]: the pages come zeroed and are only committed when touched,
  // like the file-backed variant, so the two differ in nothing but where pages can go.
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail("optimizer state", "cannot allocate " + mib(bytes) + ": " + errno_text(errno));
  b.anon_ = static_cast<uint8_t*>(p);
  b.anon_size_ = bytes;
  return b;
}

StateBuffer StateBuffer::paged(size_t bytes, const std::string& dir) {
  StateBuffer b;
  b.paged_ = PagedBuffer(dir, bytes);
  return b;
}

StateBuffer::~StateBuffer() { release(); }

StateBuffer::StateBuffer(StateBuffer&& o) noexcept
    : paged_(std::move(o.paged_)), anon_(std::exchange(o.anon_, nullptr)), anon_size_(std::exchange(o.anon_size_, 0)) {}

StateBuffer& StateBuffer::operator=(StateBuffer&& o) noexcept {
  if (this != &o) {
    release();
    paged_ = std::move(o.paged_);
    anon_ = std::exchange(o.anon_, nullptr);
    anon_size_ = std::exchange(o.anon_size_, 0);
  }
  return *this;
}

void StateBuffer::release() noexcept {
  if (anon_) munmap(anon_, anon_size_);
  anon_ = nullptr;
  anon_size_ = 0;
  paged_ = PagedBuffer();
}

}  // namespace qlora
