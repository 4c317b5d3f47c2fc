// The CPU backend: host memory and the ops of model/ops.h, model/ops_backward.h and
// lora/lora.h (each with its scalar reference and SIMD kernels behind it).
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "model/backend.h"
#include "model/gemm.h"
#include "model/gemm_bf16.h"
#include "model/linear_kernels.h"
#include "model/ops.h"
#include "model/ops_backward.h"
#include "model/quant_linear.h"

namespace qlora {

namespace {

// Rows of W in one backward tile, and their stride (sgemm_padded_ld: see model/gemm.h). A tile
// of 4 MiB (2^20 floats): each tile is one product that re-reads and re-writes all of dx, so
// fewer, deeper tiles pay on the bf16 dot-product GEMM (Llama 1.1B's shapes: 132-156 → 127-179
// GFLOP/s a core against 1 MiB tiles; 8-16 MiB tiles fall out of cache), and cost the float32
// GEMM nothing (bench/RESULTS.md session 12).
int64_t backward_tile_ld(int64_t in) { return sgemm_padded_ld(in); }
int64_t backward_tile_rows(int64_t in, int64_t out) {
  return std::max<int64_t>(std::min(std::max<int64_t>((int64_t{1} << 20) / backward_tile_ld(in), 16), out), 0);
}

// Rows [r0, r1) of a weight into a tile at stride ld, split over the threads (16-row
// chunks: the 4-bit kernels compute absmax for 16 rows at a time).
template <class Fill>
void fill_tile(int64_t r0, int64_t r1, float* tile, int64_t ld, Fill fill) {
  const int64_t chunks = (r1 - r0 + 15) / 16;
  parallel_for_range(chunks, std::max<int64_t>(1, 16384 / std::max<int64_t>(ld, 1)), [&](int64_t c0, int64_t c1) {
    const int64_t a = r0 + c0 * 16, b = std::min(r1, r0 + c1 * 16);
    fill(a, b, tile + (a - r0) * ld);
  });
}
// dx (T, in) += dy (T, rows; row stride ld_dy) · tile (rows, in; row stride ld): the input
// gradient through a tile of dequantized weight rows. A bf16 tile (bf16 compute rounds the
// dequantized weight, as bitsandbytes does) goes to the bf16 GEMM (model/gemm_bf16.h):
//  - on AMX tiles with the float32 gradient split in two bf16 parts (float32 to 2^-17);
//  - on AVX-512 BF16 dot products, where the split's doubled work is slower than the float32
//    GEMM, with the gradient rounded to bf16, as bitsandbytes' bf16 backward rounds it
//    (1.6x the float32 GEMM's speed; bench/RESULTS.md session 12 measures the loss curves).
// Everything else, and a few tokens, to matmul_backward_input.
void backward_through_tile(float* dx, const float* dy, const float* tile, int64_t T, int64_t in, int64_t rows,
                           int64_t ld_dy, int64_t ld, ComputeDType tile_dtype) {
  if (tile_dtype == ComputeDType::BF16 && T >= 8 && gemm_bf16_split_x_fast()) {
    gemm_bf16_split_x_nn(T, in, rows, dy, ld_dy, tile, ld, dx, in, /*accumulate=*/true);
    return;
  }
  if (tile_dtype == ComputeDType::BF16 && T >= 8 && gemm_bf16_fast()) {
    gemm_bf16_rounded_x_nn(T, in, rows, dy, ld_dy, tile, ld, dx, in, /*accumulate=*/true);
    return;
  }
  matmul_backward_input(dx, dy, tile, T, in, rows, ld_dy, ld);
}
}  // namespace

int64_t linear_backward_tile_floats(int64_t in, int64_t out) {
  return backward_tile_rows(in, out) * backward_tile_ld(in);
}

int64_t dense_backward_tile_floats(const DenseWeight& W) {
  if (W.dtype() == ComputeDType::F32 && !W.packed()) return 0;
  return linear_backward_tile_floats(W.cols(), W.rows());
}

namespace {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  bool lora_mask_packed() const override { return true; }
  bool host_addressable() const override { return true; }

  void* allocate_bytes(size_t bytes) override {
    if (bytes == 0) return nullptr;
    // 64-byte aligned for the SIMD kernels; uninitialised, as the contract says. The block's
    // size sits in the 64 bytes before it, for release() to count.
    char* p = bytes <= SIZE_MAX - kHeader
                  ? static_cast<char*>(::operator new[](bytes + kHeader, std::align_val_t{64}, std::nothrow))
                  : nullptr;
    if (!p)
      fail("cpu backend", "out of memory allocating " + std::to_string(bytes >> 20) +
                              " MiB (lower --batch-size or --seq-len, or see `qlora memory`)");
    std::memcpy(p, &bytes, sizeof bytes);
    const uint64_t now = in_use_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    uint64_t peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    return p + kHeader;
  }
  void release(void* p) noexcept override {
    if (!p) return;
    char* base = static_cast<char*>(p) - kHeader;
    size_t bytes = 0;
    std::memcpy(&bytes, base, sizeof bytes);
    in_use_.fetch_sub(bytes, std::memory_order_relaxed);
    ::operator delete[](base, std::align_val_t{64});
  }
  Memory memory() const override {
    Memory m;
    m.in_use = in_use_.load(std::memory_order_relaxed);
    m.peak = peak_.load(std::memory_order_relaxed);
    return m;
  }
  void upload_bytes(void* dst, const void* host, size_t bytes) override { copy_bytes(dst, host, bytes); }
  void download_bytes(void* host, const void* src, size_t bytes) override { copy_bytes(host, src, bytes); }
  void copy_bytes(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
  }
  void zero_bytes(void* dst, size_t bytes) override {
    if (bytes > 0) std::memset(dst, 0, bytes);
  }
  void synchronize() override {}

  void norm_forward(const ModelSpec& s, float* out, float* stats, const float* in, const float* weight,
                    const float* bias, int64_t rows, int64_t C, ComputeDType dtype, bool round_once) override {
    if (s.norm == NormKind::LayerNorm)
      qlora::layernorm_forward(out, stats, in, weight, bias, rows, C, s.norm_eps, dtype, s.norm_offset());
    else
      rmsnorm_forward(out, stats, in, weight, rows, C, s.norm_eps, dtype, s.norm_offset(), s.norm_round_once || round_once);
  }
  void norm_backward(const ModelSpec& s, float* din, const float* dout, const float* in, const float* weight,
                     const float* stats, int64_t rows, int64_t C) override {
    if (s.norm == NormKind::LayerNorm)
      layernorm_backward(din, dout, in, weight, stats, rows, C, s.norm_offset());
    else
      rmsnorm_backward(din, nullptr, dout, in, weight, stats, rows, C, s.norm_offset());
  }

  void linear_forward(float* y, const float* x, int64_t T, const QuantLinear& W, const LoraLayer* lora,
                      LoraCache* cache, bool training, LoraRng* rng, const LoraScratch& scratch) override {
    W.forward(y, x, T);
    if (lora) lora_forward(y, cache, *lora, x, T, training, rng, scratch);
  }
  void linear_forward_same_input(std::span<const LinearForwardItem> items, const float* x, int64_t T, bool training,
                                 LoraRng* rng, const LoraScratch& scratch) override {
    if (items.size() > kBlockLinearCount) {  // not from a block program: one at a time
      Backend::linear_forward_same_input(items, x, T, training, rng, scratch);
      return;
    }
    std::array<const QuantLinear*, kBlockLinearCount> ws{};
    std::array<float*, kBlockLinearCount> ys{};
    for (size_t i = 0; i < items.size(); ++i) {
      ws[i] = items[i].W;
      ys[i] = items[i].y;
    }
    forward_same_input(std::span(ws.data(), items.size()), std::span(ys.data(), items.size()), x, T);
    for (const LinearForwardItem& it : items)
      if (it.lora) lora_forward(it.y, it.cache, *it.lora, x, T, training, rng, scratch);
  }
  void linear_backward(float* dx, const float* dy, const float* x, int64_t T, const QuantLinear& W, LoraLayer* lora,
                       const LoraCache* cache, float* tile, const LoraScratch& scratch) override {
    const int64_t in = W.in_features(), out = W.out_features();
    if (dx && W.q4() && W.dtype() == ComputeDType::BF16 && T >= 8 && gemm_bf16_fast()) {
      // A 4-bit weight on the bf16 unit: one product over all of W, each thread packing its own
      // column panels straight from the codes (no tile, no float32 copy). On Llama 1.1B's
      // shapes this ran the input gradient at the forward's speed (bench/RESULTS.md session 13).
      const kernels::Q4Matrix m = W.q4_view();
      const kernels::LinearKernels& kern = kernels::active_linear_kernels();
      gemm_bf16_nn_panels(
          T, in, out, dy, out, [&](int64_t n0, int64_t Kp, uint16_t* b) { kern.pack_q4_bf16_panel(m, n0, Kp, b); }, dx,
          in, /*accumulate=*/true);
      if (lora) lora_backward(dx, *lora, dy, x, *cache, T, scratch);
      return;
    }
    const int64_t rows = backward_tile_rows(in, out), ld = backward_tile_ld(in);
    for (int64_t o0 = 0; dx && o0 < out; o0 += rows) {
      const int64_t o1 = std::min(out, o0 + rows);
      fill_tile(o0, o1, tile, ld, [&](int64_t a, int64_t b, float* t) { W.dequantize_rows(a, b, t, ld); });
      backward_through_tile(dx, dy + o0, tile, T, in, o1 - o0, out, ld, W.dtype());
    }
    if (lora) lora_backward(dx, *lora, dy, x, *cache, T, scratch);
  }

  void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                    bool interleaved) override {
    qlora::rope_forward(x, cos, sin, T, NH, HS, rot, interleaved);
  }
  void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                     bool interleaved) override {
    qlora::rope_backward(dx, cos, sin, T, NH, HS, rot, interleaved);
  }

  void attention_forward(const AttentionShape& a, float* out, float* att, float* scratch, const float* q,
                         const float* k, const float* v) override {
    qlora::attention_forward(out, att, scratch, q, k, v, a.T, a.Tk, a.q_pos0, a.NH, a.NKV, a.HS, a.key_start, a.scale,
                             a.softcap, a.alibi, a.sinks);
  }
  void attention_forward_kv16(const AttentionShape& a, float* out, float* att, float* scratch, const float* q,
                              const uint16_t* k, const uint16_t* v, ComputeDType kv_dtype) override {
    qlora::attention_forward_kv16(out, att, scratch, q, k, v, kv_dtype, a.T, a.Tk, a.kv_capacity, a.q_pos0, a.NH, a.NKV,
                                  a.HS, a.key_start, a.scale, a.softcap, a.alibi, a.sinks);
  }
  void attention_decode_batch(const AttentionShape& a, std::span<const DecodeRow> rows, const int32_t* key_start,
                              float* out, float*, const float* q) override {
    const size_t n = rows.size();
    std::vector<const void*> k(n), v(n);
    std::vector<ComputeDType> dt(n);
    std::vector<int64_t> pos(n);
    for (size_t t = 0; t < n; ++t) {
      k[t] = rows[t].k;
      v[t] = rows[t].v;
      dt[t] = rows[t].dtype;
      pos[t] = rows[t].pos;
    }
    qlora::attention_decode_rows(out, q, static_cast<int64_t>(n), k.data(), v.data(), dt.data(), pos.data(),
                                 key_start, a.NH, a.NKV, a.HS, a.scale, a.softcap, a.alibi, a.sinks);
  }
  void attention_backward(const AttentionShape& a, float* dq, float* dk, float* dv, float* dprobs, float* raw,
                          const float* dout, const float* q, const float* k, const float* v,
                          const float* att) override {
    qlora::attention_backward(dq, dk, dv, dprobs, raw, dout, q, k, v, att, a.T, a.Tk, a.q_pos0, a.NH, a.NKV, a.HS,
                              a.key_start, a.scale, a.softcap);
  }

  void gated_act_forward(MlpKind mlp, float* out, const float* gate, const float* up, int64_t N) override {
    if (mlp == MlpKind::GeGLU)
      geglu_forward(out, gate, up, N);
    else
      swiglu_forward(out, gate, up, N);
  }
  void gated_act_backward(MlpKind mlp, float* dgate, float* dup, const float* dout, const float* gate,
                          const float* up, int64_t N) override {
    if (mlp == MlpKind::GeGLU)
      geglu_backward(dgate, dup, dout, gate, up, N);
    else
      swiglu_backward(dgate, dup, dout, gate, up, N);
  }
  void act_forward(Activation act, float* out, const float* x, int64_t N, const XieluParams* xp) override {
    activation_forward(out, x, N, act, xp);
  }
  void act_backward(Activation act, float* dx, const float* dout, const float* x, int64_t N,
                    const XieluParams* xp) override {
    activation_backward(dx, dout, x, N, act, xp);
  }
  void residual_forward(float* out, const float* a, const float* b, int64_t N) override {
    qlora::residual_forward(out, a, b, N);
  }
  void residual_backward(float* da, float* db, const float* dout, int64_t N) override {
    qlora::residual_backward(da, db, dout, N);
  }

  void slice_forward(float* out, const float* in, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                     int64_t groups, int64_t stride) override {
    const int64_t out_w = groups * width;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t g = 0; g < groups; ++g)
        std::copy_n(in + t * in_width + g * stride + offset, width, out + t * out_w + g * width);
  }
  void slice_backward(float* din, const float* dout, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                      int64_t groups, int64_t stride) override {
    const int64_t out_w = groups * width;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t g = 0; g < groups; ++g) {
        float* d = din + t * in_width + g * stride + offset;
        const float* y = dout + t * out_w + g * width;
        for (int64_t i = 0; i < width; ++i) d[i] += y[i];
      }
  }

  void round(float* x, int64_t n, ComputeDType dtype) override { round_activations(x, n, dtype); }

  void embedding_forward(float* out, std::span<const int> ids, const DenseWeight& table) override {
    qlora::embedding_forward(out, ids.data(), static_cast<int64_t>(ids.size()), table);
  }
  void embed_scale(float* x, int64_t n, int64_t hidden, ComputeDType dtype) override {
    embed_scale_forward(x, n, hidden, dtype);
  }
  void layernorm_forward(float* out, const float* in, const float* weight, const float* bias, int64_t rows, int64_t C,
                         float eps, ComputeDType dtype) override {
    qlora::layernorm_forward(out, nullptr, in, weight, bias, rows, C, eps, dtype);
  }
  void dense_forward(float* y, const float* x, int64_t n, const DenseWeight& W) override { W.matmul(y, x, n); }
  void add_bias(float* y, const float* bias, int64_t n, int64_t width) override {
    for (int64_t r = 0; r < n; ++r) {
      float* __restrict yr = y + r * width;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) yr[i] += bias[i];
    }
  }
  void dense_backward(float* dx, const float* dy, int64_t n, const DenseWeight& W, float* tile) override {
    const int64_t V = W.rows(), E = W.cols();
    if (W.dtype() == ComputeDType::F32 && !W.packed()) {
      matmul_backward_input(dx, dy, W.f32_data(), n, E, V);
      return;
    }
    if (W.dtype() == ComputeDType::BF16 && !W.packed() && n >= 8 && gemm_bf16_fast()) {
      // A bf16 head on the bf16 unit: products over 4096 vocabulary rows at a time, each thread
      // packing its column panels from the bf16 rows (no float32 tiles). One product over all
      // of V streams the whole packed gradient (T x V bf16: 16 MB for Llama's head) once per
      // 32 columns; 2048-4096 rows ran best, 99.6 ms against 105 for the float32 tiles
      // (bench/bench_dense_head, Llama 1.1B's head at 256 tokens).
      constexpr int64_t chunk = 4096;
      for (int64_t v0 = 0; v0 < V; v0 += chunk) {
        const int64_t v1 = std::min(V, v0 + chunk);
        const uint16_t* w = W.h16_data() + v0 * E;
        gemm_bf16_nn_panels(
            n, E, v1 - v0, dy + v0, V,
            [&](int64_t n0, int64_t Kp, uint16_t* b) { pack_bf16_panel(w, E, v1 - v0, E, n0, Kp, b); }, dx, E,
            /*accumulate=*/true);
      }
      return;
    }
    const int64_t rows = backward_tile_rows(E, V), ld = backward_tile_ld(E);
    for (int64_t v0 = 0; v0 < V; v0 += rows) {
      const int64_t v1 = std::min(V, v0 + rows);
      fill_tile(v0, v1, tile, ld, [&](int64_t a, int64_t b, float* t) { W.rows_to_f32(a, b, t, ld); });
      backward_through_tile(dx, dy + v0, tile, n, E, v1 - v0, V, ld, W.packed() ? ComputeDType::F32 : W.dtype());
    }
  }
  void softcap_forward(float* x, int64_t n, float cap, ComputeDType dtype) override {
    qlora::softcap_forward(x, n, cap, dtype);
  }
  void softcap_backward(float* d, const float* capped, int64_t n, float cap) override {
    for (int64_t i = 0; i < n; ++i) {
      const float t = capped[i] / cap;
      d[i] *= 1.0f - t * t;
    }
  }
  float cross_entropy(float* dlogits, const float* logits, std::span<const int> targets, int64_t V) override {
    return cross_entropy_forward_backward(nullptr, dlogits, logits, targets.data(), static_cast<int64_t>(targets.size()),
                                          V);
  }
  void scale(float* x, int64_t n, float s) override {
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
  }
  void clamp(float* out, const float* in, int64_t n, float limit) override {
    for (int64_t i = 0; i < n; ++i) out[i] = std::min(std::max(in[i], -limit), limit);
  }
  void clamp_backward(float* din, const float* dout, const float* in, int64_t n, float limit) override {
    for (int64_t i = 0; i < n; ++i)
      if (in[i] >= -limit && in[i] <= limit) din[i] += dout[i];
  }
  void axpy(float* y, float alpha, const float* x, int64_t n) override {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
  }
  void gather_rows(float* dst, const float* src, std::span<const int64_t> idx, int64_t width) override {
    for (size_t i = 0; i < idx.size(); ++i) std::copy_n(src + idx[i] * width, width, dst + static_cast<int64_t>(i) * width);
  }
  void scatter_rows(float* dst, const float* src, std::span<const int64_t> idx, int64_t width) override {
    for (size_t i = 0; i < idx.size(); ++i) std::copy_n(src + static_cast<int64_t>(i) * width, width, dst + idx[i] * width);
  }

 private:
  static constexpr size_t kHeader = 64;  // keeps the 64-byte alignment
  std::atomic<uint64_t> in_use_{0}, peak_{0};
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace qlora
