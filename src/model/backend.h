#pragma once
// The backend seam: where a model's activations live and where a block's ops run.
//
// Memory (allocate, copy in and out, synchronise) is kept apart from compute (one call per
// op of a BlockProgram, forward and backward). The block interpreters (model/block_run.h)
// only ever call through this interface, with pointers the caller allocated from the same
// backend: the program's buffers, their gradients and the declared scratch
// (model/block_scratch.h). Nothing an op needs is allocated behind the caller's back, so a
// device backend can place it all in device memory and the planner counts the same bytes.
//
// A backend's kernels may keep small workspaces of their own below this interface: the
// CPU's per-thread dequantization slab (at most 2 MiB, model/quant_linear.cpp), its int8
// activation codes and, without a GEMM library, 64-column transposed panels
// (model/ops_backward.cpp), counted by the planner in its process baseline, int8 and
// lm_head-panel lines; cuBLAS's workspace on CUDA, a line of its own. Every buffer of a
// block or of the model around it, and every scratch an op is given, is declared.
//
// Weights are named by their host objects (a QuantLinear, a norm's vector): the CPU backend
// reads them in place; a device backend keeps its own copies, made once when the model is
// loaded onto it, and looks them up by the host object. Every op is asynchronous with
// respect to the host on a device backend; synchronize() waits for them, and download()
// returns after its copy is done.
//
// The CPU backend (cpu_backend()) is the first implementation: today's ops (model/ops.h,
// model/ops_backward.h, lora/lora.h) with their scalar references and SIMD kernels. A CUDA
// backend is the second (issue 12): the same interface over cudaMalloc and the kernels of
// src/cuda.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "base/dtype.h"
#include "lora/lora.h"
#include "model/model_spec.h"

namespace qlora {

class QuantLinear;
class DenseWeight;
struct AlibiBias;

// One attention call's shape: q (T, NH*HS) against keys and values (Tk, NKV*HS), query t at
// position q_pos0 + t (ops.h attention_forward has the full contract).
struct AttentionShape {
  int64_t T = 0, Tk = 0, q_pos0 = 0;
  int64_t NH = 0, NKV = 0, HS = 0;
  const int32_t* key_start = nullptr;  // (T) first visible key of each query, or null (causal)
  float scale = 0.0f;                   // 0: 1/sqrt(HS)
  float softcap = 0.0f;                 // 0: none
  const AlibiBias* alibi = nullptr;
  const float* sinks = nullptr;         // (NH) per-head sink logits (gpt-oss), host memory; null: none
  int64_t kv_capacity = 0;              // positions the KV cache has room for (0: Tk); sizes buffers
};

class Backend {
 public:
  virtual ~Backend() = default;
  // "cpu", "cuda:0", ... (shown in messages).
  virtual const char* name() const = 0;

  // ---- memory ----
  // Whether this backend's memory is the host's (the CPU backend): callers may then hand
  // host memory to its ops and skip staging copies.
  virtual bool host_addressable() const = 0;
  // `bytes` of memory, uninitialised, aligned to 64 bytes. Throws Error naming the size when
  // the memory is not there.
  virtual void* allocate_bytes(size_t bytes) = 0;
  // Returns memory from allocate_bytes() (null is allowed).
  virtual void release(void* p) noexcept = 0;
  // Host -> backend and backend -> host copies (download waits for the ops before it; upload
  // may return before the copy is done only when the host memory stays untouched until the
  // next synchronize()). On the CPU all three are plain copies.
  virtual void upload_bytes(void* dst, const void* host, size_t bytes) = 0;
  virtual void download_bytes(void* host, const void* src, size_t bytes) = 0;
  // Within the backend's memory: dst = src (the ranges may overlap), and dst = 0.
  virtual void copy_bytes(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero_bytes(void* dst, size_t bytes) = 0;
  // Waits until every op issued so far has finished.
  virtual void synchronize() = 0;
  // Makes the calling thread ready to issue this backend's work (a CUDA backend makes its
  // device the thread's current one: a server's worker thread starts on device 0). The block
  // interpreters call it at the start of every forward and training pass; other callers
  // from a new thread call it first. A no-op on the CPU.
  virtual void bind_thread() {}
  // What this backend's memory holds, measured: a device's context (its runtime, kernels and
  // libraries: 0 on the CPU) and the bytes of allocate_bytes() blocks held now and at most so
  // far. The memory planner predicts context + peak; log lines and metrics report it.
  struct Memory {
    uint64_t context = 0, in_use = 0, peak = 0;
  };
  virtual Memory memory() const = 0;
  // "cpu", or the device with its name and size ("cuda:0 NVIDIA H200 (sm_90, 139.8 GiB)").
  virtual std::string describe() const { return name(); }
  // Typed forms of the copies above, n elements.
  template <class T>
  void upload(T* dst, const T* host, int64_t n) {
    if (n > 0) upload_bytes(dst, host, static_cast<size_t>(n) * sizeof(T));
  }
  template <class T>
  void download(T* host, const T* src, int64_t n) {
    if (n > 0) download_bytes(host, src, static_cast<size_t>(n) * sizeof(T));
  }
  void copy(float* dst, const float* src, int64_t n) {
    if (n > 0 && dst != src) copy_bytes(dst, src, static_cast<size_t>(n) * sizeof(float));
  }
  void zero(float* dst, int64_t n) {
    if (n > 0) zero_bytes(dst, static_cast<size_t>(n) * sizeof(float));
  }

  // ---- compute: a BlockProgram's ops (model/block_program.h) ----
  // The spec's norm (RMSNorm, Gemma's 1 + w, or LayerNorm + bias) over rows of C, rounded to
  // dtype; stats (rstd, or mean and rstd, per row) kept when not null. Backward accumulates
  // into din (the weights are frozen). round_once: an RMSNorm rounds only its product (OLMo 2's
  // form, as s.norm_round_once does for every norm; MiniMax-M2's q/k norms alone).
  virtual void norm_forward(const ModelSpec& s, float* out, float* stats, const float* in, const float* weight,
                            const float* bias, int64_t rows, int64_t C, ComputeDType dtype, bool round_once = false) = 0;
  virtual void norm_backward(const ModelSpec& s, float* din, const float* dout, const float* in, const float* weight,
                             const float* stats, int64_t rows, int64_t C) = 0;
  // Whether this backend's LoRA caches keep the dropout mask as bits (lora/lora.h LoraCache
  // mask_bits, a 32nd of the float32 multipliers' memory) rather than float32 multipliers.
  virtual bool lora_mask_packed() const { return false; }
  // y (T, out) = W x (+ bias) (+ the LoRA path when `lora` is set: lora_forward's contract).
  virtual void linear_forward(float* y, const float* x, int64_t T, const QuantLinear& W, const LoraLayer* lora,
                              LoraCache* cache, bool training, LoraRng* rng, const LoraScratch& scratch) = 0;
  // Several linears that read the same input x (consecutive Linear ops of a block: q/k/v,
  // gate/up), each exactly as linear_forward(item.y, x, T, *item.W, item.lora, item.cache,
  // training, rng, scratch) in item order (LoRA dropout draws from rng in that order). A
  // backend may run their products together; the CPU backend decodes one token's rows of all
  // of them in one parallel region.
  struct LinearForwardItem {
    float* y;
    const QuantLinear* W;
    const LoraLayer* lora;
    LoraCache* cache;
  };
  virtual void linear_forward_same_input(std::span<const LinearForwardItem> items, const float* x, int64_t T,
                                         bool training, LoraRng* rng, const LoraScratch& scratch) {
    for (const LinearForwardItem& it : items) linear_forward(it.y, x, T, *it.W, it.lora, it.cache, training, rng, scratch);
  }
  // dx (T, in) += dy (T, out) W through the frozen weight (dequantized a tile of rows at a
  // time into `tile`, linear_backward_tile_floats), plus the LoRA path when `lora` is set,
  // whose A/B gradients accumulate (cache from its forward). dx null: the LoRA gradients
  // only (nothing below needs the input gradient; tile unused).
  virtual void linear_backward(float* dx, const float* dy, const float* x, int64_t T, const QuantLinear& W,
                               LoraLayer* lora, const LoraCache* cache, float* tile, const LoraScratch& scratch) = 0;
  // Rotary in place on x (T, NH, HS), the first `rot` dims of each head, pairs (i, i + rot/2)
  // or, interleaved, (2i, 2i + 1) (ops.h rope_forward); backward rotates back.
  virtual void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS,
                            int64_t rot, bool interleaved) = 0;
  virtual void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS,
                             int64_t rot, bool interleaved) = 0;
  // Attention (ops.h attention_forward / ops_backward.h attention_backward): probabilities in
  // att when not null, else scores in scratch (attention_scratch_floats). Backward: dq, dk,
  // dv accumulate; dprobs (NH, T, Tk) and raw (attention_backward_scratch_floats) are scratch.
  virtual void attention_forward(const AttentionShape& a, float* out, float* att, float* scratch, const float* q,
                                 const float* k, const float* v) = 0;
  // attention_forward over a KV cache held in 16 bits (KVCache dtype BF16 or F16, k and v its
  // keys16 / values16 of one layer, positions [0, a.Tk)): the same contract, the keys and
  // values widened to float32 (exactly). The CPU backend runs it; the default refuses (the
  // other backends keep float32 caches).
  virtual void attention_forward_kv16(const AttentionShape& a, float* out, float* att, float* scratch, const float* q,
                                      const uint16_t* k, const uint16_t* v, ComputeDType kv_dtype);
  // Batched decoding (forward_batch): one query token per sequence, each over its own KV
  // cache. Row t: query q + t * NH * HS at position rows[t].pos, attending keys
  // [key_start ? key_start[t] : 0, pos] of rows[t]'s cache layer (k, v: float32 rows, or
  // 16-bit bit patterns when dtype is BF16 / F16; capacity positions), written to
  // out + t * NH * HS; a's T, Tk, q_pos0, key_start and kv_capacity are ignored. The same
  // values as attention_forward(_kv16) of each row on its own, bit for bit. The default does
  // exactly that, row by row (scratch: attention_scratch_floats(1, the largest pos + 1, NH));
  // the CPU backend runs every row's heads in one parallel region (scratch unused).
  struct DecodeRow {
    const void* k = nullptr;
    const void* v = nullptr;
    int64_t pos = 0, capacity = 0;
    ComputeDType dtype = ComputeDType::F32;
  };
  virtual void attention_decode_batch(const AttentionShape& a, std::span<const DecodeRow> rows,
                                      const int32_t* key_start, float* out, float* scratch, const float* q);
  virtual void attention_backward(const AttentionShape& a, float* dq, float* dk, float* dv, float* dprobs, float* raw,
                                  const float* dout, const float* q, const float* k, const float* v,
                                  const float* att) = 0;
  // out (N) = act(gate) * up (SwiGLU or GeGLU by mlp); backward accumulates dgate, dup.
  virtual void gated_act_forward(MlpKind mlp, float* out, const float* gate, const float* up, int64_t N) = 0;
  virtual void gated_act_backward(MlpKind mlp, float* dgate, float* dup, const float* dout, const float* gate,
                                  const float* up, int64_t N) = 0;
  // out (N) = act(x); backward accumulates dx.
  // (xp: xIELU's parameters for Activation::Xielu, else null)
  virtual void act_forward(Activation act, float* out, const float* x, int64_t N, const XieluParams* xp) = 0;
  virtual void act_backward(Activation act, float* dx, const float* dout, const float* x, int64_t N,
                            const XieluParams* xp) = 0;
  // out (N) = a + b; backward accumulates dout into da and db.
  virtual void residual_forward(float* out, const float* a, const float* b, int64_t N) = 0;
  virtual void residual_backward(float* da, float* db, const float* dout, int64_t N) = 0;
  // out (T, groups*width) = columns [offset, offset + width) of each of `groups` groups of
  // `stride` columns of in (T, in_width); backward accumulates into din.
  virtual void slice_forward(float* out, const float* in, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                             int64_t groups, int64_t stride) = 0;
  virtual void slice_backward(float* din, const float* dout, int64_t T, int64_t in_width, int64_t offset,
                              int64_t width, int64_t groups, int64_t stride) = 0;
  // x (n) rounded to dtype in place (identity for F32).
  virtual void round(float* x, int64_t n, ComputeDType dtype) = 0;
  // out (rows, cols) = in * w[column] (ModelSpec::qk_norm_head_weights' per-head weights);
  // backward accumulates din += dout * w[column]. The defaults run on host memory (the CPU
  // backend) and refuse elsewhere, naming the op.
  virtual void scale_columns(float* out, const float* in, const float* w, int64_t rows, int64_t cols);
  virtual void scale_columns_backward(float* din, const float* dout, const float* w, int64_t rows, int64_t cols);

  // ---- compute: the model around its blocks ----
  // out (n, cols) = rows ids[i] of the table (ids on the host). Throws Error naming an id
  // outside the table.
  virtual void embedding_forward(float* out, std::span<const int> ids, const DenseWeight& table) = 0;
  // x (n) = round(x * round(sqrt(hidden))) in dtype (Gemma's embedding scale).
  virtual void embed_scale(float* x, int64_t n, int64_t hidden, ComputeDType dtype) = 0;
  // LayerNorm with bias over rows of C (in place allowed), rounded once to dtype.
  virtual void layernorm_forward(float* out, const float* in, const float* weight, const float* bias, int64_t rows,
                                 int64_t C, float eps, ComputeDType dtype) = 0;
  // y (n, W.rows) = x (n, W.cols) Wᵀ through a dense weight (the output head).
  virtual void dense_forward(float* y, const float* x, int64_t n, const DenseWeight& W) = 0;
  // y (n, width) += bias (width) on every row (the head's bias: phi), unrounded. `bias` is the
  // model's host vector (a device backend keeps its own copy, keyed by the pointer).
  virtual void add_bias(float* y, const float* bias, int64_t n, int64_t width) = 0;
  // dx (n, W.cols) += dy (n, W.rows) W; a weight not stored in float32 is widened a tile of
  // rows at a time into `tile` (dense_backward_tile_floats).
  virtual void dense_backward(float* dx, const float* dy, int64_t n, const DenseWeight& W, float* tile) = 0;
  // x (n) = cap * tanh(x / cap), each step rounded to dtype; its backward multiplies d (n) by
  // 1 - (capped / cap)^2, capped being the forward's output.
  virtual void softcap_forward(float* x, int64_t n, float cap, ComputeDType dtype) = 0;
  virtual void softcap_backward(float* d, const float* capped, int64_t n, float cap) = 0;
  // The mean softmax cross-entropy of logits (M, V) against targets (host, M, all in
  // [0, V)), and its gradient written to dlogits (which may be logits). Returns the loss
  // (so it waits for the result).
  virtual float cross_entropy(float* dlogits, const float* logits, std::span<const int> targets, int64_t V) = 0;
  // x (n) *= s.
  virtual void scale(float* x, int64_t n, float s) = 0;
  // y (n) += alpha * x (n) (a scaled branch's backward).
  virtual void axpy(float* y, float alpha, const float* x, int64_t n) = 0;
  // out (n) = in clamped to [-limit, limit]; the backward adds dout into din where
  // -limit <= in <= limit (torch's clamp gradient).
  virtual void clamp(float* out, const float* in, int64_t n, float limit) = 0;
  virtual void clamp_backward(float* din, const float* dout, const float* in, int64_t n, float limit) = 0;
  // dst row i = src row idx[i] (gather), and dst row idx[i] = src row i (scatter, the other
  // rows untouched); rows of `width` floats, idx on the host.
  virtual void gather_rows(float* dst, const float* src, std::span<const int64_t> idx, int64_t width) = 0;
  virtual void scatter_rows(float* dst, const float* src, std::span<const int64_t> idx, int64_t width) = 0;
};

// The process's CPU backend (safe to use from several threads: its only state is the
// memory() counters, which are atomic).
Backend& cpu_backend();
// A CPU backend of its own (the same ops; its own memory() counters): for a Model whose
// activations should be counted apart (Model::set_backend) and for tests of the seam.
std::unique_ptr<Backend> make_cpu_backend();

// Floats of the dequantized-row tile linear_backward uses for a (out, in) weight: a tile of
// about 1 MiB of rows (at least 16, at most all of them), each row at a stride of
// sgemm_padded_ld(in) floats (model/gemm.h); the same for dense_backward of a (rows, cols)
// weight (0 when it is stored in float32 and read in place).
int64_t linear_backward_tile_floats(int64_t in, int64_t out);
int64_t dense_backward_tile_floats(const DenseWeight& W);

// n elements of T in a backend's memory, released when this goes. Grow-only: ensure(b, n)
// reallocates (without keeping the contents) only when n is larger than what it holds.
template <class T>
class BackendArray {
 public:
  BackendArray() = default;
  BackendArray(Backend& b, int64_t n) { ensure(b, n); }
  ~BackendArray() { reset(); }
  BackendArray(BackendArray&& o) noexcept
      : backend_(std::exchange(o.backend_, nullptr)), p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  BackendArray& operator=(BackendArray&& o) noexcept {
    if (this != &o) {
      reset();
      backend_ = std::exchange(o.backend_, nullptr);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  BackendArray(const BackendArray&) = delete;
  BackendArray& operator=(const BackendArray&) = delete;

  // Holds at least n elements of `b` afterwards (n <= 0 keeps what it has).
  void ensure(Backend& b, int64_t n) {
    if (n <= n_ && (backend_ == &b || n <= 0)) return;
    reset();
    p_ = static_cast<T*>(b.allocate_bytes(static_cast<size_t>(n) * sizeof(T)));
    backend_ = &b;
    n_ = n;
  }
  void reset() noexcept {
    if (backend_) backend_->release(p_);
    backend_ = nullptr;
    p_ = nullptr;
    n_ = 0;
  }
  T* data() const { return p_; }
  int64_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  Backend* backend_ = nullptr;
  T* p_ = nullptr;
  int64_t n_ = 0;
};
using BackendBuffer = BackendArray<float>;

}  // namespace qlora
