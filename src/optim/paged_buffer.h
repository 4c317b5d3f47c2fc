#pragma once
// Memory for optimizer state, in one piece per optimizer.
//
// bitsandbytes' paged optimizers keep their state in CUDA managed memory, which the
// driver moves out of GPU memory under pressure instead of failing the allocation. The
// CPU counterpart here is a file-backed shared mapping: its pages belong to the page
// cache, so when memory runs short (a cgroup limit, a spike elsewhere in the process) the
// kernel writes them back to the file and drops them, and faults them in again on the
// next step. Anonymous memory cannot be dropped like that without swap (and there often
// is none): over the limit the OOM killer ends the process instead.
//
// PagedBuffer is that mapping; StateBuffer is what an optimizer holds: either a
// PagedBuffer or ordinary anonymous memory, both zero-filled, addressed the same way.
// Neither is thread-safe to move or destroy while in use; concurrent access to disjoint
// byte ranges is fine.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace qlora {

// Removes the state files that killed runs left in `dir` (qlora-<tag>-<pid>-XXXXXX whose
// process no longer exists); returns how many. A SIGKILL gives the destructor no chance.
size_t remove_stale_paged_files(const std::string& dir);

// Lays out arrays in one buffer: each add() returns a 64-byte-aligned offset (so every
// array starts on a cache line and SIMD loads of floats are aligned).
class StateLayout {
 public:
  static constexpr size_t kAlign = 64;
  size_t add(size_t bytes) {
    const size_t off = (total_ + kAlign - 1) / kAlign * kAlign;
    total_ = off + bytes;
    return off;
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

// A file created in a directory, sized to `bytes`, mapped MAP_SHARED read-write. The file
// is removed (and the mapping released) on destruction; it stays visible while the object
// lives, named qlora-<tag>-<pid>-XXXXXX, so a user can see where the state went.
class PagedBuffer {
 public:
  PagedBuffer() = default;
  // `dir`: created if missing; empty means the system temp dir (TMPDIR or /tmp). The disk
  // space is reserved up front (posix_fallocate), so a full disk is an Error here and not a
  // SIGBUS in the middle of a step. Throws Error naming the directory when it cannot be
  // created, is not a writable directory, or has no room. The contents start zero.
  PagedBuffer(const std::string& dir, size_t bytes, const std::string& tag = "optimizer-state");
  ~PagedBuffer();
  PagedBuffer(const PagedBuffer&) = delete;
  PagedBuffer& operator=(const PagedBuffer&) = delete;
  PagedBuffer(PagedBuffer&& o) noexcept;
  PagedBuffer& operator=(PagedBuffer&& o) noexcept;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release() noexcept;
  std::string path_;
  int fd_ = -1;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// The default directory of paged state: the system temp dir.
std::string default_paged_dir();

// An optimizer's state memory: anonymous (resident, like any heap memory) or paged (a
// PagedBuffer). Zero-filled either way. Move-only.
class StateBuffer {
 public:
  StateBuffer() = default;
  static StateBuffer anonymous(size_t bytes);
  static StateBuffer paged(size_t bytes, const std::string& dir);
  ~StateBuffer();
  StateBuffer(const StateBuffer&) = delete;
  StateBuffer& operator=(const StateBuffer&) = delete;
  StateBuffer(StateBuffer&& o) noexcept;
  StateBuffer& operator=(StateBuffer&& o) noexcept;

  uint8_t* data() const { return is_paged() ? paged_.data() : anon_; }
  size_t size() const { return is_paged() ? paged_.size() : anon_size_; }
  bool is_paged() const { return !paged_.path().empty(); }
  // The backing file; empty when anonymous.
  const std::string& path() const { return paged_.path(); }

  // `count` elements of T at byte `offset` (from a StateLayout of the same buffer).
  template <class T>
  std::span<T> span(size_t offset, size_t count) const {
    return {reinterpret_cast<T*>(data() + offset), count};
  }

 private:
  void release() noexcept;
  PagedBuffer paged_;
  uint8_t* anon_ = nullptr;
  size_t anon_size_ = 0;
};

}  // namespace qlora
