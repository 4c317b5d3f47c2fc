#pragma once
// Keys and values of the tokens seen so far, per layer, so that decoding one more token
// only computes that token. Keys are stored after the rotary embedding.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/dtype.h"
#include "model/backend.h"

namespace qlora {

class KVCache {
 public:
  KVCache() = default;
  // Room for `capacity` positions of `n_layers` layers of `kv_dim` floats each. With
  // allocate false the storage is only reserved in name until allocate() (a sequence whose
  // keys and values live on a GPU keeps just its length here). The storage is `backend`'s
  // memory (zeroed when allocated).
  // `dtype`: how the values are stored. F32 keeps them as computed; BF16 / F16 round each one
  // to 16 bits (nearest even) on the way in and take half the memory (on the CPU backend only).
  KVCache(int64_t n_layers, int64_t kv_dim, int64_t capacity, bool allocate = true, Backend& backend = cpu_backend(),
          ComputeDType dtype = ComputeDType::F32)
      : KVCache(std::vector<int64_t>(static_cast<size_t>(n_layers), kv_dim), capacity, allocate, backend, dtype) {}
  // The same with a width per layer (Gemma 4's full-attention layers are wider: ModelSpec::kv_dims).
  KVCache(std::vector<int64_t> kv_dims, int64_t capacity, bool allocate = true, Backend& backend = cpu_backend(),
          ComputeDType dtype = ComputeDType::F32);
  bool allocated() const { return allocated_; }
  void allocate();  // no-op when allocated

  int64_t n_layers() const { return n_layers_; }
  // Layer l's floats per position (kv_dim(): layer 0's, the same for every layer of most models).
  int64_t kv_dim(int64_t layer = 0) const { return kv_dims_.at(static_cast<size_t>(layer)); }
  int64_t capacity() const { return capacity_; }
  // Positions filled so far (the position of the next token).
  int64_t length() const { return length_; }
  // REQUIRES 0 <= n <= capacity(); shrinking forgets tokens (and a recurrent state, which
  // cannot be rewound: state_position() becomes -1 unless it is n).
  void set_length(int64_t n);
  void clear() {
    length_ = 0;
    state_pos_ = 0;
    tokens_.clear();
    snapshots_.clear();
  }

  // Hybrid models' linear-attention layers keep a recurrent state per sequence instead of
  // keys and values: `layers` states of `floats` each (ModelSpec::la_state_floats), in the
  // backend's memory, allocated (zeroed) with the cache. Call before allocate().
  void set_state_layers(int64_t layers, int64_t floats);
  bool has_state() const { return state_layers_ > 0; }
  float* state(int64_t i) { return state_.data() + i * state_floats_; }
  // The positions the states summarize: length() when they are current, -1 when the cache was
  // cut back or copied short of them (the forward then runs the cached tokens again).
  int64_t state_position() const { return state_pos_; }
  void set_state_position(int64_t n) { state_pos_ = n; }
  // Zeroes every state (a sequence starting at position 0).
  void zero_states();
  // State models: the token of every cached position (what rebuilding the states runs again).
  std::vector<int>& tokens() { return tokens_; }
  const std::vector<int>& tokens() const { return tokens_; }
  // Copies of the states at earlier positions, so that a cache cut back to a prefix (a chat's
  // next turn re-rendering the last answer) runs again only the tokens after the latest copy
  // within it: taken by the forward after each multi-token call (a prompt), the last
  // kMaxStateSnapshots kept (each a full copy of the states, 20 MB for Qwen3.5-0.8B: a chat's
  // next turn needs the latest one); cutting the cache back drops those beyond it.
  static constexpr size_t kMaxStateSnapshots = 2;
  void snapshot_states();
  // Restores the latest snapshot at or before `pos` (state_position() becomes its position) and
  // returns that position, or -1 when there is none.
  int64_t restore_states(int64_t pos);
  std::vector<int64_t> snapshot_positions() const;
  // Tokens the last rebuild of the states ran again (forward's count; tests read it).
  int64_t replayed_tokens() const { return replayed_; }
  void set_replayed_tokens(int64_t n) { replayed_ = n; }
  // Grows to at least `capacity` positions, keeping the contents (if allocated).
  void reserve(int64_t capacity);

  // This cache holds `src`'s first `positions` positions (every layer's keys and values) and
  // that length, growing (and allocating) as needed. REQUIRES the same layers, kv_dim, dtype
  // and backend, positions <= src.length(). Throws Error otherwise.
  void copy_from(const KVCache& src, int64_t positions);

  ComputeDType dtype() const { return dtype_; }
  // (capacity, kv_dim) rows of layer l; row p holds position p. keys/values: dtype() F32;
  // keys16/values16: BF16 or F16, the 16-bit patterns.
  float* keys(int64_t layer) { return k_.data() + at(layer); }
  float* values(int64_t layer) { return v_.data() + at(layer); }
  const float* keys(int64_t layer) const { return k_.data() + at(layer); }
  const float* values(int64_t layer) const { return v_.data() + at(layer); }
  uint16_t* keys16(int64_t layer) { return reinterpret_cast<uint16_t*>(k_.data()) + at(layer); }
  uint16_t* values16(int64_t layer) { return reinterpret_cast<uint16_t*>(v_.data()) + at(layer); }
  const uint16_t* keys16c(int64_t layer) const { return reinterpret_cast<const uint16_t*>(k_.data()) + at(layer); }
  const uint16_t* values16c(int64_t layer) const { return reinterpret_cast<const uint16_t*>(v_.data()) + at(layer); }
  size_t bytes() const { return static_cast<size_t>(k_.size() + v_.size() + state_.size()) * sizeof(float); }

 private:
  // Values before layer l's rows (capacity x the widths of the layers before it).
  int64_t at(int64_t layer) const { return capacity_ * offset_[static_cast<size_t>(layer)]; }
  int64_t n_layers_ = 0, capacity_ = 0, length_ = 0;
  std::vector<int64_t> kv_dims_, offset_;  // per layer: width, and the widths before it
  int64_t total_dim_ = 0;                  // sum of the widths
  bool allocated_ = false;
  ComputeDType dtype_ = ComputeDType::F32;
  Backend* backend_ = &cpu_backend();
  BackendBuffer k_, v_;  // per layer (capacity, kv_dim(l)), one after the other
  int64_t state_layers_ = 0, state_floats_ = 0, state_pos_ = 0;
  BackendBuffer state_;  // (state layers, state floats)
  std::vector<int> tokens_;
  struct Snapshot {
    int64_t pos = 0;
    BackendBuffer states;
  };
  std::vector<Snapshot> snapshots_;  // oldest first
  int64_t replayed_ = 0;
};

}  // namespace qlora
