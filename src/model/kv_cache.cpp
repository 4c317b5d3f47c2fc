#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "base/error.h"

namespace qlora {

namespace {
// Floats of storage for n values of `dtype` (16-bit values two to a float).
int64_t storage_floats(int64_t n, ComputeDType dtype) { return dtype == ComputeDType::F32 ? n : (n + 1) / 2; }
}  // namespace

KVCache::KVCache(std::vector<int64_t> kv_dims, int64_t capacity, bool allocate_now, Backend& backend, ComputeDType dtype)
    : n_layers_(static_cast<int64_t>(kv_dims.size())), capacity_(capacity), kv_dims_(std::move(kv_dims)),
      dtype_(dtype), backend_(&backend) {
  for (int64_t d : kv_dims_) {
    offset_.push_back(total_dim_);
    total_dim_ += d;
  }
  check(dtype == ComputeDType::F32 || backend.host_addressable(), "KV cache",
        std::string("16-bit keys and values are kept on the CPU only, not on ") + backend.name());
  if (allocate_now) allocate();
}

void KVCache::allocate() {
  if (allocated_) return;
  const int64_t n = storage_floats(total_dim_ * capacity_, dtype_);
  k_.ensure(*backend_, n);
  v_.ensure(*backend_, n);
  backend_->zero(k_.data(), n);
  backend_->zero(v_.data(), n);
  if (has_state()) {
    state_.ensure(*backend_, state_layers_ * state_floats_);
    backend_->zero(state_.data(), state_layers_ * state_floats_);
  }
  allocated_ = true;
}

void KVCache::set_state_layers(int64_t layers, int64_t floats) {
  check(!allocated_ && layers >= 0 && floats > 0, "KV cache", "recurrent states are declared before allocation");
  state_layers_ = layers;
  state_floats_ = floats;
}

void KVCache::snapshot_states() {
  if (!has_state() || !allocated_ || state_pos_ < 0) return;
  for (const Snapshot& s : snapshots_)
    if (s.pos == state_pos_) return;  // (already held)
  Snapshot s;
  if (snapshots_.size() >= kMaxStateSnapshots) {  // (reuse the oldest one's storage)
    s = std::move(snapshots_.front());
    snapshots_.erase(snapshots_.begin());
  }
  s.pos = state_pos_;
  s.states.ensure(*backend_, state_layers_ * state_floats_);
  backend_->copy(s.states.data(), state_.data(), state_layers_ * state_floats_);
  snapshots_.push_back(std::move(s));
}

int64_t KVCache::restore_states(int64_t pos) {
  const Snapshot* best = nullptr;
  for (const Snapshot& s : snapshots_)
    if (s.pos <= pos && (!best || s.pos > best->pos)) best = &s;
  if (!best) return -1;
  backend_->copy(state_.data(), best->states.data(), state_layers_ * state_floats_);
  state_pos_ = best->pos;
  return best->pos;
}

std::vector<int64_t> KVCache::snapshot_positions() const {
  std::vector<int64_t> p;
  for (const Snapshot& s : snapshots_) p.push_back(s.pos);
  return p;
}

void KVCache::zero_states() {
  if (has_state() && allocated_) backend_->zero(state_.data(), state_layers_ * state_floats_);
}

void KVCache::set_length(int64_t n) {
  check(n >= 0 && n <= capacity_, "KV cache",
        "length " + std::to_string(n) + " outside capacity " + std::to_string(capacity_));
  length_ = n;
  if (has_state() && n != state_pos_) state_pos_ = -1;
  // (snapshots past the new end summarize tokens that are no longer the cache's)
  std::erase_if(snapshots_, [n](const Snapshot& s) { return s.pos > n; });
  if (static_cast<int64_t>(tokens_.size()) > n) tokens_.resize(static_cast<size_t>(n));
}

void KVCache::reserve(int64_t capacity) {
  if (capacity <= capacity_) return;
  if (!allocated_) {
    capacity_ = capacity;
    return;
  }
  const int64_t n = storage_floats(total_dim_ * capacity, dtype_);
  Backend& be = *backend_;
  BackendBuffer k(be, n), v(be, n);
  be.zero(k.data(), n);
  be.zero(v.data(), n);
  if (dtype_ != ComputeDType::F32) {  // (CPU memory: see the constructor)
    for (int64_t l = 0; l < n_layers_; ++l) {
      const size_t bytes = static_cast<size_t>(length_ * kv_dim(l)) * 2;
      const int64_t dst = capacity * offset_[static_cast<size_t>(l)];
      std::memcpy(reinterpret_cast<uint16_t*>(k.data()) + dst, keys16(l), bytes);
      std::memcpy(reinterpret_cast<uint16_t*>(v.data()) + dst, values16(l), bytes);
    }
    k_ = std::move(k);
    v_ = std::move(v);
    capacity_ = capacity;
    return;
  }
  for (int64_t l = 0; l < n_layers_; ++l) {
    const int64_t rows = length_ * kv_dim(l), dst = capacity * offset_[static_cast<size_t>(l)];
    be.copy(k.data() + dst, keys(l), rows);
    be.copy(v.data() + dst, values(l), rows);
  }
  k_ = std::move(k);
  v_ = std::move(v);
  capacity_ = capacity;
}

void KVCache::copy_from(const KVCache& src, int64_t positions) {
  check(src.kv_dims_ == kv_dims_ && src.dtype_ == dtype_ && src.backend_ == backend_ &&
            src.state_layers_ == state_layers_ && src.state_floats_ == state_floats_,
        "KV cache", "copying between caches of different shapes, dtypes or backends");
  check(positions >= 0 && positions <= src.length_ && src.allocated_, "KV cache",
        "copying " + std::to_string(positions) + " positions from a cache holding " + std::to_string(src.length_));
  reserve(positions);
  allocate();
  Backend& be = *backend_;
  for (int64_t l = 0; l < n_layers_; ++l) {
    if (dtype_ != ComputeDType::F32) {  // (CPU memory: see the constructor)
      const size_t bytes = static_cast<size_t>(positions * kv_dim(l)) * 2;
      std::memcpy(keys16(l), src.keys16c(l), bytes);
      std::memcpy(values16(l), src.values16c(l), bytes);
    } else {
      be.copy(keys(l), src.keys(l), positions * kv_dim(l));
      be.copy(values(l), src.values(l), positions * kv_dim(l));
    }
  }
  length_ = positions;
  tokens_.assign(src.tokens_.begin(), src.tokens_.begin() + std::min<int64_t>(positions, static_cast<int64_t>(src.tokens_.size())));
  if (has_state()) {  // (a state holds all of src's positions or nothing usable)
    if (positions == src.state_pos_) {
      be.copy(state_.data(), src.state_.data(), state_layers_ * state_floats_);
      state_pos_ = positions;
    } else {
      state_pos_ = -1;
    }
    snapshots_.clear();  // (src's snapshots within the copied prefix come along)
    for (const Snapshot& s : src.snapshots_) {
      if (s.pos > positions) continue;
      Snapshot c;
      c.pos = s.pos;
      c.states.ensure(be, state_layers_ * state_floats_);
      be.copy(c.states.data(), s.states.data(), state_layers_ * state_floats_);
      snapshots_.push_back(std::move(c));
    }
  }
}

}  // namespace qlora
