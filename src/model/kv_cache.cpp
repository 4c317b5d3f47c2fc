#include "model/kv_cache.h"

#include <algorithm>
#include <string>

#include "base/error.h"

namespace qlora {

KVCache::KVCache(int64_t n_layers, int64_t kv_dim, int64_t capacity, bool allocate_now)
    : n_layers_(n_layers), kv_dim_(kv_dim), capacity_(capacity) {
  if (allocate_now) allocate();
}

void KVCache::allocate() {
  if (allocated_) return;
  const size_t n = static_cast<size_t>(n_layers_ * kv_dim_ * capacity_);
  k_.assign(n, 0.0f);
  v_.assign(n, 0.0f);
  allocated_ = true;
}

void KVCache::set_length(int64_t n) {
  check(n >= 0 && n <= capacity_, "KV cache",
        "length " + std::to_string(n) + " outside capacity " + std::to_string(capacity_));
  length_ = n;
}

void KVCache::reserve(int64_t capacity) {
  if (capacity <= capacity_) return;
  if (!allocated_) {
    capacity_ = capacity;
    return;
  }
  const size_t n = static_cast<size_t>(n_layers_ * kv_dim_ * capacity);
  std::vector<float> k(n, 0.0f), v(n, 0.0f);
  for (int64_t l = 0; l < n_layers_; ++l) {
    const size_t rows = static_cast<size_t>(length_ * kv_dim_);
    std::copy_n(k_.data() + l * capacity_ * kv_dim_, rows, k.data() + l * capacity * kv_dim_);
    std::copy_n(v_.data() + l * capacity_ * kv_dim_, rows, v.data() + l * capacity * kv_dim_);
  }
  k_.swap(k);
  v_.swap(v);
  capacity_ = capacity;
}

}  // namespace qlora
