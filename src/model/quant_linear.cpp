#include "model/quant_linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "base/float_formats.h"
#include "base/parallel.h"
#include "model/gemm.h"
#include "model/gemm_bf16.h"

namespace qlora {

// Up to this many tokens, 4-bit matmuls use the fused multi-token GEMV; beyond, they
// dequantize 16-row panels and run the GEMM (crossover measured with
// bench/bench_generate.cpp BM_Strategy).
constexpr int64_t kFusedMaxTokens = 2 * kernels::kMaxGemvTokens;

void round_activations(float* x, int64_t n, ComputeDType t) {
  if (t == ComputeDType::F32) return;
  for (int64_t i = 0; i < n; ++i) x[i] = kernels::round_to_dtype(x[i], t);  // (inline: vectorizes for bf16)
}

// ---- DenseWeight ----------------------------------------------------------------------

DenseWeight::DenseWeight(const float* w, int64_t rows, int64_t cols, ComputeDType dtype)
    : rows_(rows), cols_(cols), dtype_(dtype) {
  const size_t n = static_cast<size_t>(rows * cols);
  if (dtype == ComputeDType::F32) {
    f32_.assign(w, w + n);
  } else {
    h16_.resize(n);
    convert_from_f32(to_dtype(dtype), w, h16_.data(), n);
  }
}

DenseWeight::DenseWeight(std::vector<float>&& w, int64_t rows, int64_t cols, ComputeDType dtype)
    : rows_(rows), cols_(cols), dtype_(dtype) {
  check(static_cast<int64_t>(w.size()) == rows * cols, "DenseWeight", "size does not match the shape");
  if (dtype == ComputeDType::F32) {
    f32_ = std::move(w);
  } else {
    h16_.resize(w.size());
    convert_from_f32(to_dtype(dtype), w.data(), h16_.data(), w.size());
    std::vector<float>().swap(w);
  }
}

DenseWeight DenseWeight::from_rows(int64_t rows, int64_t cols, ComputeDType dtype,
                                   const std::function<void(int64_t, int64_t, float*)>& fill,
                                   std::optional<ComputeDType> held_in) {
  DenseWeight d;
  d.rows_ = rows;
  d.cols_ = cols;
  d.dtype_ = dtype;
  const size_t n = static_cast<size_t>(rows * cols);
  // (the format the 16-bit codes are in: the compute dtype's, or held_in's under float32)
  const ComputeDType codes = dtype == ComputeDType::F32 && held_in && *held_in != ComputeDType::F32 ? *held_in : dtype;
  if (codes != dtype) d.held_ = codes;
  if (codes == ComputeDType::F32) {
    d.f32_.resize(n);
    if (n) fill(0, rows, d.f32_.data());
    return d;
  }
  d.h16_.resize(n);
  const int64_t slab = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(cols, 1));
  std::vector<float> buf(static_cast<size_t>(std::min(rows, slab) * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += slab) {
    const int64_t r1 = std::min(rows, r0 + slab);
    fill(r0, r1, buf.data());
    convert_from_f32(to_dtype(codes), buf.data(), d.h16_.data() + r0 * cols, static_cast<size_t>((r1 - r0) * cols));
  }
  return d;
}

DenseWeight DenseWeight::from_q8_0(std::span<const uint8_t> blocks, int64_t rows, int64_t cols,
                                   const std::string& what) {
  constexpr int64_t kBlockBytes = 2 + kernels::kQ8Block;
  if (rows <= 0 || cols <= 0 || cols % kernels::kQ8Block != 0)
    fail(what, "Q8_0 rows of " + std::to_string(cols) + " values are not whole blocks of 32");
  const int64_t nb = rows * cols / kernels::kQ8Block;
  if (static_cast<int64_t>(blocks.size()) != nb * kBlockBytes)
    fail(what, "Q8_0 data of " + std::to_string(blocks.size()) + " bytes does not hold " + std::to_string(rows) + " x " +
                   std::to_string(cols) + " values (" + std::to_string(nb * kBlockBytes) + " bytes)");
  DenseWeight w;
  w.rows_ = rows;
  w.cols_ = cols;
  w.dtype_ = ComputeDType::F32;
  w.q8_.resize(static_cast<size_t>(rows * cols));
  w.q8_scale_.resize(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = blocks.data() + b * kBlockBytes;
    uint16_t d;
    std::memcpy(&d, p, 2);
    w.q8_scale_[static_cast<size_t>(b)] = fp16_to_f32(d);
    std::memcpy(w.q8_.data() + b * kernels::kQ8Block, p + 2, kernels::kQ8Block);
  }
  return w;
}

namespace {
// nb Q8_0 blocks of x as ggml's reference quantizer makes them: codes to q, fp16-rounded scales to scale.
void quantize_q8_0_blocks(const float* x, int64_t nb, int8_t* q, float* scale) {
  constexpr int64_t B = kernels::kQ8Block;
  parallel_for_range(nb, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* xb = x + b * B;
      float amax = 0.0f;
      for (int64_t i = 0; i < B; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float dd = amax / 127.0f, id = dd != 0.0f ? 1.0f / dd : 0.0f;
      for (int64_t i = 0; i < B; ++i) q[b * B + i] = static_cast<int8_t>(std::lround(xb[i] * id));
      scale[b] = fp16_to_f32(f32_to_fp16(dd));  // (the scale as a Q8_0 file holds it)
    }
  });
}
}  // namespace

DenseWeight DenseWeight::q8_0_sized(int64_t rows, int64_t cols, const std::string& what) {
  if (rows <= 0 || cols <= 0 || cols % kernels::kQ8Block != 0)
    fail(what, std::to_string(rows) + " x " + std::to_string(cols) + " values are not rows of whole Q8_0 blocks of 32");
  DenseWeight d;
  d.rows_ = rows;
  d.cols_ = cols;
  d.dtype_ = ComputeDType::F32;
  d.q8_.resize(static_cast<size_t>(rows * cols));
  d.q8_scale_.resize(static_cast<size_t>(rows * cols / kernels::kQ8Block));
  return d;
}

DenseWeight DenseWeight::to_q8_0(std::span<const float> w, int64_t rows, int64_t cols, const std::string& what) {
  if (static_cast<int64_t>(w.size()) != rows * cols || rows <= 0 || cols <= 0)
    fail(what, std::to_string(w.size()) + " values are not " + std::to_string(rows) + " rows of whole Q8_0 blocks of " +
                   std::to_string(cols));
  DenseWeight d = q8_0_sized(rows, cols, what);
  quantize_q8_0_blocks(w.data(), rows * cols / kernels::kQ8Block, d.q8_.data(), d.q8_scale_.data());
  return d;
}

DenseWeight DenseWeight::q8_0_from_blocks(GgmlType type, std::span<const uint8_t> bytes, int64_t rows, int64_t cols,
                                          const std::string& what) {
  const std::optional<int64_t> row_bytes = ggml_nbytes(type, cols);
  if (rows <= 0 || !row_bytes || static_cast<int64_t>(bytes.size()) != rows * *row_bytes)
    fail(what, std::string(ggml_type_name(type)) + " data of " + std::to_string(bytes.size()) + " bytes does not hold " +
                   std::to_string(rows) + " rows of " + std::to_string(cols) + " values");
  return to_q8_0(
      rows, cols,
      [&](int64_t r0, int64_t r1, float* out) {
        dequantize(type, bytes.subspan(static_cast<size_t>(r0 * *row_bytes), static_cast<size_t>((r1 - r0) * *row_bytes)),
                   std::span<float>(out, static_cast<size_t>((r1 - r0) * cols)), what);
      },
      what);
}

DenseWeight DenseWeight::to_q8_0(int64_t rows, int64_t cols, const std::function<void(int64_t, int64_t, float*)>& fill,
                                 const std::string& what) {
  constexpr int64_t B = kernels::kQ8Block;
  DenseWeight d = q8_0_sized(rows, cols, what);
  const int64_t slab = std::max<int64_t>(1, (int64_t{1} << 20) / cols);
  std::vector<float> buf(static_cast<size_t>(std::min(rows, slab) * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += slab) {
    const int64_t r1 = std::min(rows, r0 + slab);
    fill(r0, r1, buf.data());
    quantize_q8_0_blocks(buf.data(), (r1 - r0) * cols / B, d.q8_.data() + r0 * cols, d.q8_scale_.data() + r0 * cols / B);
  }
  return d;
}

DenseWeight DenseWeight::from_gguf_blocks(GgmlType type, std::vector<uint8_t> blocks, int64_t rows, int64_t cols,
                                          const std::string& what) {
  if (!kernels::block_rows_supported(type))
    fail(what, std::string("GGUF type ") + std::string(ggml_type_name(type)) +
                   " is not one of the block types kept as stored (Q5_0, Q5_1, Q5_K, Q6_K, Q3_K, Q2_K)");
  const GgmlTypeTraits& tr = ggml_traits(type);
  if (rows <= 0 || cols <= 0 || cols % tr.block_size != 0)
    fail(what, std::string(ggml_type_name(type)) + " rows of " + std::to_string(cols) + " values are not whole blocks of " +
                   std::to_string(tr.block_size));
  const int64_t row_bytes = cols / tr.block_size * tr.type_size;
  if (static_cast<int64_t>(blocks.size()) != rows * row_bytes)
    fail(what, std::string(ggml_type_name(type)) + " data of " + std::to_string(blocks.size()) + " bytes does not hold " +
                   std::to_string(rows) + " x " + std::to_string(cols) + " values (" + std::to_string(rows * row_bytes) +
                   " bytes)");
  DenseWeight w;
  w.rows_ = rows;
  w.cols_ = cols;
  w.dtype_ = ComputeDType::F32;
  w.gb_ = std::move(blocks);
  w.gb_type_ = type;
  return w;
}

kernels::BlockRows DenseWeight::block_rows() const {
  kernels::BlockRows v;
  v.type = gb_type_;
  v.data = gb_.data();
  v.rows = rows_;
  v.cols = cols_;
  v.row_bytes = static_cast<int64_t>(gb_.size()) / rows_;
  return v;
}

void DenseWeight::rows_to_f32(int64_t r0, int64_t r1, float* out, int64_t ld) const {
  if (gguf_blocks()) {
    kernels::active_block_row_kernels().rows_to_f32(block_rows(), r0, r1, out, ld ? ld : cols_);
    return;
  }
  if (ld && ld != cols_) {  // a strided tile: one row at a time
    for (int64_t r = r0; r < r1; ++r) rows_to_f32(r, r + 1, out + (r - r0) * ld);
    return;
  }
  const size_t n = static_cast<size_t>((r1 - r0) * cols_);
  if (q8()) {  // (rows are whole blocks: a block at a time, its scale once)
    const int64_t b0 = r0 * cols_ / kernels::kQ8Block, nb = static_cast<int64_t>(n) / kernels::kQ8Block;
    for (int64_t b = 0; b < nb; ++b) {
      const float scale = q8_scale_[static_cast<size_t>(b0 + b)];
      const int8_t* q = q8_.data() + (b0 + b) * kernels::kQ8Block;
      float* o = out + b * kernels::kQ8Block;
      for (int64_t i = 0; i < kernels::kQ8Block; ++i) o[i] = scale * static_cast<float>(q[i]);
    }
    return;
  }
  if (dtype_ == ComputeDType::F32 && !held_16bit())
    std::memcpy(out, f32_.data() + r0 * cols_, n * sizeof(float));
  else
    convert_to_f32(to_dtype(held_dtype()), h16_.data() + r0 * cols_, out, n);
}

namespace {

// T tokens' activations (T, n) quantized for the int8 kernels (kernels::LinearKernels::
// quantize_x_q8, token by token), in the calling thread's buffers: the worker threads of the
// parallel region that follows read them through these pointers. REQUIRES n % 32 == 0.
struct QuantizedX {
  const int8_t* q;
  const float* d;
};
// q8k: per 256 values as llama.cpp's Q8_K (quantize_x_q8k, for a weight in q8k_form; REQUIRES
// n % 256 == 0), else per 32 (quantize_x_q8).
QuantizedX quantize_activations(const float* x, int64_t n, int64_t T = 1, bool q8k = false) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  if (static_cast<int64_t>(q.size()) < T * n) q.resize(static_cast<size_t>(T * n));
  if (static_cast<int64_t>(d.size()) < T * n / 32) d.resize(static_cast<size_t>(T * n / 32));
  const auto& k = kernels::active_linear_kernels();
  for (int64_t t = 0; t < T; ++t)
    (q8k ? k.quantize_x_q8k : k.quantize_x_q8)(x + t * n, n, q.data() + t * n, d.data() + t * (n / 32));
  return {q.data(), d.data()};
}

// Rows per thread below which a GEMV stays on one thread (~32K weights per thread).
int64_t gemv_min_rows(int64_t cols) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, cols)); }

constexpr int64_t kRowsPerPanel = 16;

// y (T, N) = x (T, K) · Wᵀ for T > 1, where fill(r0, r1, out) writes rows [r0, r1) of W as
// float32 (any range of rows). Threads take disjoint 16-row panels, convert each into a
// thread-local buffer (L1/L2 sized) and run the row-tile GEMM over all T rows of x.
//
// With a GEMM library (model/gemm.h) the weight is instead converted a slab of up to
// kSlabFloats at a time (all threads filling it), and each slab is one library call: the
// library packs x once per call, so 16-row calls would repack x 16x more often than the
// product reads W. A slab (2 MB) bounds the scratch for any model size.
constexpr int64_t kSlabFloats = int64_t{1} << 19;
// Fewer rows than twice this stay on the shared-slab path (a thread's share would be too thin).
constexpr int64_t kThreadPanelMinRows = 64;

//
// `bf16_operands`: x and the rows fill() writes hold bf16 values (bf16 compute), so the
// product may run on the bf16 GEMM (model/gemm_bf16.h: AMX tiles where the CPU has them),
// with fill() called by each thread for its own panels.
template <class Fill>
void gemm_by_panels(float* y, const float* x, int64_t T, int64_t N, int64_t K, Fill fill, bool bf16_operands) {
  if (bf16_operands && gemm_bf16_fast()) {
    // Each thread dequantizes its own 32-row panels into its cache, straight before the tiles
    // read them (model/gemm_bf16.h): no shared slab.
    gemm_bf16_nt_rows(T, N, K, x, K, fill, y, N, /*accumulate=*/false);
    return;
  }
  if (sgemm_has_library() && max_threads() > 1 && N >= 2 * kThreadPanelMinRows) {
    // Each thread a contiguous share of W's rows, filled a slab at a time (kSlabFloats split
    // between the threads) into its own buffer and multiplied by a single-threaded library
    // call (inside the parallel region the library does not fork): one parallel region per
    // product, and every thread busy in both the filling and the product. One library call
    // per slab, all threads at once, ran the NF4 forward at 2 threads no faster than at 1
    // (bench/RESULTS.md session 12).
    const int nth = max_threads();
    const int64_t slab_rows = std::max<int64_t>(
        kRowsPerPanel, kSlabFloats / nth / std::max<int64_t>(1, K) / kRowsPerPanel * kRowsPerPanel);
    parallel_for_range(nth, 1, [&](int64_t t0, int64_t t1) {
      thread_local std::vector<float> buf;
      buf.resize(static_cast<size_t>(slab_rows * K));
      for (int64_t t = t0; t < t1; ++t) {
        // (shares in whole 16-row panels, so every thread's rows start a panel)
        const int64_t panels = (N + kRowsPerPanel - 1) / kRowsPerPanel;
        const int64_t a = std::min(N, panels * t / nth * kRowsPerPanel),
                      b = std::min(N, panels * (t + 1) / nth * kRowsPerPanel);
        for (int64_t s0 = a; s0 < b; s0 += slab_rows) {
          const int64_t s1 = std::min(b, s0 + slab_rows);
          fill(s0, s1, buf.data());
          sgemm_nt(T, s1 - s0, K, x, K, buf.data(), K, y + s0, N, /*accumulate=*/false);
        }
      }
    });
    return;
  }
  if (sgemm_has_library()) {
    const int64_t fit = kSlabFloats / std::max<int64_t>(1, K) / kRowsPerPanel * kRowsPerPanel;
    const int64_t slab_rows = std::min(N, std::max(kRowsPerPanel, fit));
    thread_local std::vector<float> slab;  // forward() may run on several threads at once
    slab.resize(static_cast<size_t>(slab_rows * K));
    float* buf = slab.data();  // the workers must write the calling thread's slab
    for (int64_t s0 = 0; s0 < N; s0 += slab_rows) {
      const int64_t s1 = std::min(N, s0 + slab_rows);
      const int64_t panels = (s1 - s0 + kRowsPerPanel - 1) / kRowsPerPanel;
      parallel_for_range(panels, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K)), [&](int64_t p0, int64_t p1) {
        const int64_t r0 = s0 + p0 * kRowsPerPanel, r1 = std::min(s1, s0 + p1 * kRowsPerPanel);
        fill(r0, r1, buf + (r0 - s0) * K);
      });
      sgemm_nt(T, s1 - s0, K, x, K, buf, K, y + s0, N, /*accumulate=*/false);
    }
    return;
  }
  const auto& kern = kernels::active_linear_kernels();
  const int64_t panels = (N + kRowsPerPanel - 1) / kRowsPerPanel;
  const int64_t min_panels = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, T * K * kRowsPerPanel));
  parallel_for_range(panels, min_panels, [&](int64_t p0, int64_t p1) {
    thread_local std::vector<float> rows;
    rows.resize(static_cast<size_t>(kRowsPerPanel * K));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = p * kRowsPerPanel, r1 = std::min(N, r0 + kRowsPerPanel);
      fill(r0, r1, rows.data());
      kern.gemm_rows(x, K, T, rows.data(), K, r1 - r0, K, y + r0, N);
    }
  });
}

}  // namespace

void DenseWeight::matmul(float* y, const float* x, int64_t T) const {
  const auto& kern = kernels::active_linear_kernels();
  if (gguf_blocks()) {
    if (T <= kernels::kBlockGemvMaxTokens && int8_act_) {
      // On 8-bit activations as llama.cpp multiplies this type: Q8_K (one scale per 256) for
      // the K-quants, Q8_0 (per 32) for Q5_0 / Q5_1.
      const bool q8k = ggml_traits(gb_type_).block_size == kernels::kQ8KBlock;
      const QuantizedX qx = quantize_activations(x, cols_, T, q8k);
      const kernels::BlockRows w = block_rows();
      const auto& bk = kernels::active_block_row_kernels();
      parallel_for_range(rows_, std::max<int64_t>(1, gemv_min_rows(cols_) / T),
                         [&](int64_t r0, int64_t r1) { bk.gemv_i8(w, qx.q, qx.d, T, y, rows_, r0, r1); });
      return;
    }
    if (T <= kernels::kBlockGemvMaxTokens) {
      // One token, or a few (batched decoding): each block decoded once for all of them.
      const kernels::BlockRows w = block_rows();
      const auto& bk = kernels::active_block_row_kernels();
      parallel_for_range(rows_, std::max<int64_t>(1, gemv_min_rows(cols_) / T),
                         [&](int64_t r0, int64_t r1) { bk.gemv(w, x, T, y, rows_, r0, r1); });
    } else {
      gemm_by_panels(
          y, x, T, rows_, cols_, [&](int64_t r0, int64_t r1, float* out) { rows_to_f32(r0, r1, out); },
          /*bf16_operands=*/false);
    }
    return;
  }
  if (q8()) {
    if (T == 1 && int8_act_) {
      const QuantizedX qx = quantize_activations(x, cols_);
      parallel_for_range(rows_, gemv_min_rows(cols_), [&](int64_t r0, int64_t r1) {
        kern.gemv_q8_i8(q8_.data(), q8_scale_.data(), cols_, qx.q, qx.d, y, r0, r1);
      });
      return;
    }
    if (T <= kernels::kMaxGemvTokens && int8_act_) {
      // A few tokens on 8-bit activations (batched decoding): each block read once for all.
      const QuantizedX qx = quantize_activations(x, cols_, T);
      parallel_for_range(rows_, std::max<int64_t>(1, gemv_min_rows(cols_) / T), [&](int64_t r0, int64_t r1) {
        kern.gemv_q8_i8_multi(q8_.data(), q8_scale_.data(), cols_, qx.q, qx.d, T, y, rows_, r0, r1);
      });
      return;
    }
    if (T == 1) {
      parallel_for_range(rows_, gemv_min_rows(cols_), [&](int64_t r0, int64_t r1) {
        kern.gemv_q8(q8_.data(), q8_scale_.data(), cols_, x, y, r0, r1);
      });
    } else if (T <= kernels::kMaxGemvTokens) {
      // A few tokens (batched decoding): each 8-bit block read once for all of them, each
      // token's logits those of the one-token product.
      parallel_for_range(rows_, std::max<int64_t>(1, gemv_min_rows(cols_) / T), [&](int64_t r0, int64_t r1) {
        kern.gemv_q8_multi(q8_.data(), q8_scale_.data(), cols_, x, T, y, rows_, r0, r1);
      });
    } else {
      gemm_by_panels(
          y, x, T, rows_, cols_, [&](int64_t r0, int64_t r1, float* out) { rows_to_f32(r0, r1, out); },
          /*bf16_operands=*/false);
    }
    return;
  }
  if (held_16bit()) {
    // 16-bit values, float32 activations: one token widens each value on its way into the
    // product (half float32's bytes per token); more widen rows a panel at a time.
    if (T == 1) {
      parallel_for_range(rows_, gemv_min_rows(cols_), [&](int64_t r0, int64_t r1) {
        if (held_ == ComputeDType::BF16) kern.gemv_bf16(h16_.data(), cols_, x, y, r0, r1);
        else kern.gemv_f16(h16_.data(), cols_, x, y, r0, r1);
      });
    } else if (T <= kernels::kMaxGemvTokens) {
      // A few tokens (batched decoding): each value widened once for all of them, each token's
      // logits those of the one-token product.
      parallel_for_range(rows_, std::max<int64_t>(1, gemv_min_rows(cols_) / T), [&](int64_t r0, int64_t r1) {
        kern.gemv_h16_multi(h16_.data(), held_ == ComputeDType::BF16, cols_, x, T, y, rows_, r0, r1);
      });
    } else {
      gemm_by_panels(
          y, x, T, rows_, cols_, [&](int64_t r0, int64_t r1, float* out) { rows_to_f32(r0, r1, out); },
          /*bf16_operands=*/false);
    }
    return;
  }
  if (T == 1) {
    parallel_for_range(rows_, gemv_min_rows(cols_), [&](int64_t r0, int64_t r1) {
      switch (dtype_) {
        case ComputeDType::F32: kern.gemv_f32(f32_.data(), cols_, x, y, r0, r1); break;
        case ComputeDType::BF16: kern.gemv_bf16(h16_.data(), cols_, x, y, r0, r1); break;
        case ComputeDType::F16: kern.gemv_f16(h16_.data(), cols_, x, y, r0, r1); break;
      }
    });
    return;
  }
  if (dtype_ == ComputeDType::F32 && sgemm_has_library()) {
    sgemm_nt(T, rows_, cols_, x, cols_, f32_.data(), cols_, y, rows_, /*accumulate=*/false);
    return;
  }
  if (dtype_ == ComputeDType::F32) {
    // The weights are already float rows: no copy.
    const int64_t panels = (rows_ + kRowsPerPanel - 1) / kRowsPerPanel;
    const int64_t min_panels =
        std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, T * cols_ * kRowsPerPanel));
    parallel_for_range(panels, min_panels, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r0 = p * kRowsPerPanel, r1 = std::min(rows_, r0 + kRowsPerPanel);
        kern.gemm_rows(x, cols_, T, f32_.data() + r0 * cols_, cols_, r1 - r0, cols_, y + r0, rows_);
      }
    });
    return;
  }
  if (dtype_ == ComputeDType::BF16 && gemm_bf16_fast()) {  // the bf16 rows are the tiles' operand as they are
    gemm_bf16_nt_rows_bf16(
        T, rows_, cols_, x, cols_,
        [&](int64_t r0, int64_t r1, uint16_t* out, int64_t ld) {
          for (int64_t r = r0; r < r1; ++r)
            std::memcpy(out + (r - r0) * ld, h16_.data() + r * cols_, static_cast<size_t>(cols_) * sizeof(uint16_t));
        },
        y, rows_, /*accumulate=*/false);
    return;
  }
  gemm_by_panels(
      y, x, T, rows_, cols_, [&](int64_t r0, int64_t r1, float* out) { rows_to_f32(r0, r1, out); },
      /*bf16_operands=*/dtype_ == ComputeDType::BF16);
}

// ---- QuantLinear ----------------------------------------------------------------------

QuantLinear::QuantLinear(const float* w, int64_t out, int64_t in, const QuantOptions& q, ComputeDType dtype)
    : in_(in), out_(out), dtype_(dtype), int8_threshold_(q.int8_threshold) {
  if (q.quantize && q.int8)
    q8_ = quantize_int8_rowwise(w, out, in);
  else if (q.quantize)
    q4_ = quantize_tensor_4bit(w, {out, in}, q.type, q.blocksize, q.double_quant, dtype);
  else
    dense_ = DenseWeight(w, out, in, dtype);
}

QuantLinear::QuantLinear(std::vector<float>&& w, int64_t out, int64_t in, const QuantOptions& q,
                         ComputeDType dtype)
    : in_(in), out_(out), dtype_(dtype), int8_threshold_(q.int8_threshold) {
  check(static_cast<int64_t>(w.size()) == out * in, "QuantLinear", "weight size does not match the shape");
  if (q.quantize && q.int8)
    q8_ = quantize_int8_rowwise(w.data(), out, in);
  else if (q.quantize)
    q4_ = quantize_tensor_4bit(w.data(), {out, in}, q.type, q.blocksize, q.double_quant, dtype);
  else
    dense_ = DenseWeight(std::move(w), out, in, dtype);
}

QuantLinear::QuantLinear(Quantized4bit q, ComputeDType dtype) : dtype_(dtype) {
  check(q.state.shape.size() == 2, "QuantLinear", "a 4-bit Linear weight must be 2-D");
  out_ = q.state.shape[0];
  in_ = q.state.shape[1];
  q4_ = std::move(q);
}

QuantLinear::QuantLinear(Quantized8bit q, ComputeDType dtype, float threshold)
    : in_(q.cols), out_(q.rows), dtype_(dtype), int8_threshold_(threshold) {
  check(q.rows > 0 && q.cols > 0 && q.codes.size() == static_cast<size_t>(q.rows * q.cols) &&
            q.scb.size() == static_cast<size_t>(q.rows),
        "QuantLinear", "an int8 weight needs rows*cols codes and one SCB per row");
  q8_ = std::move(q);
}

QuantLinear::QuantLinear(DenseWeight w) : in_(w.cols()), out_(w.rows()), dtype_(w.dtype()), dense_(std::move(w)) {}

void QuantLinear::set_bias(std::vector<float> bias) {
  check(static_cast<int64_t>(bias.size()) == out_, "QuantLinear",
        "bias has " + std::to_string(bias.size()) + " elements, expected " + std::to_string(out_));
  round_activations(bias.data(), static_cast<int64_t>(bias.size()), dtype_);
  bias_ = std::move(bias);
}

kernels::Q4Matrix q4_matrix_view(const Quantized4bit& q, int64_t rows, int64_t cols, ComputeDType round_to) {
  const QuantState& s = q.state;
  kernels::Q4Matrix m;
  m.packed = q.packed.data();
  m.rows = rows;
  m.cols = cols;
  m.blocksize = s.blocksize;
  m.code = s.code.data();
  if (s.nested) {
    m.absmax_q = s.absmax_q.data();
    m.nested_absmax = s.nested_absmax.data();
    m.nested_code = s.nested_code.data();
    m.nested_blocksize = s.nested_blocksize;
    m.offset = s.offset;
  } else if (!s.absmax_f16.empty()) {
    m.absmax_f16 = s.absmax_f16.data();
  } else {
    m.absmax = s.absmax.data();
  }
  if (!s.block_min.empty()) m.block_min = s.block_min.data();
  if (!s.block_min_f16.empty()) m.block_min_f16 = s.block_min_f16.data();
  if (!s.block_min_q.empty()) {
    m.block_min_q = s.block_min_q.data();
    m.block_min_d = s.block_min_d.data();
    m.block_min_group = s.block_min_group;
  }
  // Q4_K / IQ4_XS as the file has them (formats/ggml_as_4bit.h): the Q8_K kernels' form.
  if (s.nested && s.blocksize == 32 && s.nested_blocksize == 8 && cols % kernels::kQ8KBlock == 0 &&
      (s.ggml_source == "Q4_K" || s.ggml_source == "IQ4_XS") && (s.block_min_q.empty() || s.block_min_group == 8)) {
    m.q8k_form = true;
    m.q8k_scale_bias = s.ggml_source == "IQ4_XS" ? -32 : 0;
  }
  m.round_to = round_to;
  return m;
}

kernels::Q4Matrix QuantLinear::q4_view() const { return q4_matrix_view(*q4_, out_, in_, dtype_); }

void QuantLinear::dequantize_rows(int64_t r0, int64_t r1, float* out, int64_t ld) const {
  if (ld && ld != in_) {  // a strided tile: one row at a time
    for (int64_t r = r0; r < r1; ++r) dequantize_rows(r, r + 1, out + (r - r0) * ld);
    return;
  }
  if (q4_) {
    const auto m = q4_view();
    kernels::active_linear_kernels().dequant_rows_q4(m, r0, r1, out);
  } else if (q8_) {
    dequantize_int8_rows(*q8_, r0, r1, out);
    // bnb casts the dequantized weight to the compute dtype before the backward matmul.
    round_activations(out, (r1 - r0) * in_, dtype_);
  } else {
    dense_.rows_to_f32(r0, r1, out);
  }
}

void QuantLinear::forward_int8(float* y, const float* x, int64_t T) const {
  const Quantized8bit& w = *q8_;
  const int64_t K = in_, N = out_;
  // The activation side is O(T*K), small next to the O(T*K*N) matmul: one thread.
  thread_local Int8Activations a;
  thread_local std::vector<int32_t> acc;
  quantize_int8_activations(x, T, K, int8_threshold_, a);
  acc.resize(static_cast<size_t>(T * N));
  // Locals so the OpenMP workers read the calling thread's buffers, not their own.
  const Int8Activations& act = a;
  int32_t* accp = acc.data();
  const auto& kern = active_int8_kernels();
  const float* bias = bias_.empty() ? nullptr : bias_.data();
  const int64_t min_rows = std::max<int64_t>(1, gemv_min_rows(K) / T);
  parallel_for_range(N, min_rows, [&](int64_t r0, int64_t r1) {
    kern.gemm_i8(act.ca.data(), K, T, w.codes.data() + r0 * K, K, r1 - r0, K, accp + r0, N);
    // The outlier columns' weights, dequantized once per call as bnb does: (CB * SCB) / 127,
    // laid out (n_out, rows) so the loops below run along contiguous rows.
    const int64_t n_out = static_cast<int64_t>(act.outlier_cols.size()), nr = r1 - r0;
    thread_local std::vector<float> wd;
    wd.resize(static_cast<size_t>(nr * n_out));
    for (int64_t j = 0; j < n_out; ++j)
      for (int64_t r = r0; r < r1; ++r)
        wd[j * nr + (r - r0)] = static_cast<float>(w.codes[r * K + act.outlier_cols[j]]) * w.scb[r] * kInv127;
    // bnb's order: int32 * (SCA * SCB) * 6.200124e-05, + bias, then the outlier columns
    // (X, not its float16 rounding) added one column after another. Element-wise loops
    // (omp simd: vectorized whatever the cost model; this file has no FMA to contract into).
    const float* scb = w.scb.data() + r0;
    const float* wdp = wd.data();
    for (int64_t t = 0; t < T; ++t) {
      float* __restrict yr = y + t * N + r0;
      const int32_t* __restrict ar = accp + t * N + r0;
      const float sca = act.sca[t];
#pragma omp simd
      for (int64_t i = 0; i < nr; ++i) yr[i] = static_cast<float>(ar[i]) * (sca * scb[i]) * kInt8MmDequantScale;
      if (bias) {
        const float* b = bias + r0;
#pragma omp simd
        for (int64_t i = 0; i < nr; ++i) yr[i] += b[i];
      }
      for (int64_t j = 0; j < n_out; ++j) {
        const float xj = x[t * K + act.outlier_cols[j]];
        const float* wj = wdp + j * nr;
#pragma omp simd
        for (int64_t i = 0; i < nr; ++i) yr[i] += xj * wj[i];
      }
    }
  });
  round_activations(y, T * N, dtype_);
}

void forward_same_input(std::span<const QuantLinear* const> ws, std::span<float* const> ys, const float* x,
                        int64_t T) {
  const bool int8 = ws[0]->uses_int8_activations();
  const bool q8k = int8 && ws[0]->q4() && ws[0]->q4_view().q8k_form;
  const bool fused = T == 1 && ws.size() > 1 && std::all_of(ws.begin(), ws.end(), [&](const QuantLinear* w) {
    return w->q4() != nullptr && w->in_features() == ws[0]->in_features() && w->uses_int8_activations() == int8 &&
           (!int8 || w->q4_view().q8k_form == q8k);  // (one quantization of x serves them all)
  });
  if (!fused) {
    for (size_t i = 0; i < ws.size(); ++i) ws[i]->forward(ys[i], x, T);
    return;
  }
  // Rows of the concatenation [W_0; W_1; ...] split across threads (no allocation: this runs
  // for every layer of every decoded token).
  int64_t rows = 0;
  for (const QuantLinear* w : ws) rows += w->out_features();
  const auto& kern = kernels::active_linear_kernels();
  const QuantizedX qx = int8 ? quantize_activations(x, ws[0]->in_features(), 1, q8k) : QuantizedX{nullptr, nullptr};
  parallel_for_range(rows, gemv_min_rows(ws[0]->in_features()), [&](int64_t r0, int64_t r1) {
    int64_t first = 0;  // row of ws[i] in the concatenation
    for (size_t i = 0; i < ws.size(); ++i) {
      const int64_t last = first + ws[i]->out_features();
      const int64_t lo = std::max(r0, first), hi = std::min(r1, last);
      if (lo < hi) {
        if (int8)
          (q8k ? kern.gemv_q8k_i8 : kern.gemv_q4_i8)(ws[i]->q4_view(), qx.q, qx.d, ys[i], lo - first, hi - first);
        else
          kern.gemv_q4(ws[i]->q4_view(), x, ys[i], lo - first, hi - first);
      }
      first = last;
    }
  });
  for (size_t i = 0; i < ws.size(); ++i) ws[i]->finish_output(ys[i], 1);
}

void QuantLinear::forward(float* y, const float* x, int64_t T) const {
  if (T <= 0) return;
  if (q8_) {
    forward_int8(y, x, T);
    return;
  }
  if (!q4_) {
    dense_.matmul(y, x, T);
  } else {
    const auto m = q4_view();
    const auto& kern = kernels::active_linear_kernels();
    if (T == 1 && uses_int8_activations()) {
      // (a Q4_K / IQ4_XS weight on llama.cpp's Q8_K activations; others per 32 values)
      const QuantizedX qx = quantize_activations(x, in_, 1, m.q8k_form);
      const auto gemv = m.q8k_form ? kern.gemv_q8k_i8 : kern.gemv_q4_i8;
      parallel_for_range(out_, gemv_min_rows(in_),
                         [&](int64_t r0, int64_t r1) { gemv(m, qx.q, qx.d, y, r0, r1); });
    } else if (T == 1) {
      parallel_for_range(out_, gemv_min_rows(in_),
                         [&](int64_t r0, int64_t r1) { kern.gemv_q4(m, x, y, r0, r1); });
    } else if (T <= kernels::kMaxGemvTokens && uses_int8_activations()) {
      // A few tokens on 8-bit activations (batched decoding, a short prompt): each weight step
      // decoded once for several of them, each token's values the one-token product's.
      const QuantizedX qx = quantize_activations(x, in_, T, m.q8k_form);
      const auto gemv = m.q8k_form ? kern.gemv_q8k_i8_multi : kern.gemv_q4_i8_multi;
      parallel_for_range(out_, std::max<int64_t>(1, gemv_min_rows(in_) / T), [&](int64_t r0, int64_t r1) {
        gemv(m, qx.q, qx.d, T, y, out_, r0, r1);
      });
    } else if (T <= kFusedMaxTokens) {
      // A few tokens: decode each weight once per group of up to 8 tokens, in registers.
      parallel_for_range(out_, std::max<int64_t>(1, gemv_min_rows(in_) / T), [&](int64_t r0, int64_t r1) {
        for (int64_t t = 0; t < T; t += kernels::kMaxGemvTokens) {
          const int64_t n = std::min<int64_t>(kernels::kMaxGemvTokens, T - t);
          kern.gemv_q4_multi(m, x + t * in_, n, y + t * out_, out_, r0, r1);
        }
      });
    } else {
      // (bf16 compute: x is rounded and the dequantized rows are rounded to bf16, as bitsandbytes
      // dequantizes to its compute dtype: the bf16 GEMM's operands; on a bf16 unit each thread
      // decodes its 32-row panels straight into bf16.)
      if (dtype_ == ComputeDType::BF16 && gemm_bf16_fast()) {
        gemm_bf16_nt_rows_bf16(
            T, out_, in_, x, in_,
            [&](int64_t r0, int64_t r1, uint16_t* o, int64_t ld) { kern.dequant_rows_q4_bf16(m, r0, r1, o, ld); }, y,
            out_, /*accumulate=*/false);
        finish_output(y, T);
        return;
      }
      gemm_by_panels(
          y, x, T, out_, in_, [&](int64_t r0, int64_t r1, float* out) { kern.dequant_rows_q4(m, r0, r1, out); },
          /*bf16_operands=*/dtype_ == ComputeDType::BF16);
    }
  }
  finish_output(y, T);
}

void QuantLinear::finish_output(float* y, int64_t T) const {
  if (!bias_.empty())
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < out_; ++o) y[t * out_ + o] += bias_[o];
  round_activations(y, T * out_, dtype_);
}

size_t QuantLinear::bytes() const {
  size_t b = bias_.size() * sizeof(float);
  if (q4_) return b + q4_->packed.size() + static_cast<size_t>(q4_->state.constant_bytes());
  if (q8_) return b + q8_->bytes();
  return b + dense_.bytes();
}

}  // namespace qlora
