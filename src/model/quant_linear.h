#pragma once
// Weights of the model in memory.
//
// DenseWeight: a matrix stored in the compute dtype (float32, bfloat16 or float16):
// embeddings, lm_head, and the Linear layers under --quant none.
//
// QuantLinear: y = x · Wᵀ (+ b), the frozen base layer of every Linear inside the blocks.
// W is either 4-bit (NF4/FP4, packed exactly as bitsandbytes packs it, optionally with
// double-quantized absmax), 8-bit (LLM.int8: row-wise absmax int8 codes + SCB, multiplied
// with int8-quantized activations except for outlier feature columns, quant/int8.h), or
// dense in the compute dtype. One token (decoding) uses the
// fused 4-bit GEMV; up to 16 tokens the fused multi-token GEMV (each weight decoded once per
// 8 tokens); more tokens dequantize 16-row panels into a thread-local buffer and run a
// register-tiled GEMM on them. Rows are split across threads (OpenMP).
// Activations are float32; results are rounded to the compute dtype, as a bf16/fp16
// torch Linear would produce them (accumulation is float32 either way).
//
// Thread-safety: forward() and dequantize_rows() are const and may run concurrently.
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "formats/ggml_types.h"
#include "model/block_row_kernels.h"
#include "model/linear_kernels.h"
#include "quant/codebook.h"
#include "quant/int8.h"
#include "quant/quant_state.h"

namespace qlora {

// How the Linear layers inside the blocks are stored (--quant, --blocksize, --double-quant).
struct QuantOptions {
  bool quantize = true;            // false: --quant none (dense in the compute dtype)
  QuantType type = QuantType::NF4;
  int blocksize = 64;
  bool double_quant = false;
  // --quant int8: LLM.int8 (type/blocksize/double_quant are then ignored). Activations
  // with |x| >= int8_threshold (in any token) make their feature column run in full
  // precision; <= 0 turns the decomposition off (every column int8).
  bool int8 = false;
  float int8_threshold = kInt8DefaultThreshold;
};

class DenseWeight {
 public:
  DenseWeight() = default;
  // Copies `w` (rows*cols floats), rounding to `dtype`.
  DenseWeight(const float* w, int64_t rows, int64_t cols, ComputeDType dtype);
  // Takes `w` (rows*cols floats) without a copy when dtype is F32.
  DenseWeight(std::vector<float>&& w, int64_t rows, int64_t cols, ComputeDType dtype);

  // rows x cols values that fill(r0, r1, out) writes as float32 ((r1 - r0) * cols at out, a
  // slab of about 4 MB at a time), held in `dtype` (float32 as written, or rounded to bf16 /
  // fp16): no float32 copy of the whole tensor besides a float32 result (a source's
  // TensorSource::get_rows). fill's exceptions pass through.
  // held_in (BF16 or F16) with dtype F32: the values, which must be exactly that format's (a
  // source's TensorSource::stored_16bit), are held in its 16 bits and computed with in float32
  // (held_16bit()): half the bytes, the same numbers as their float32 copy.
  static DenseWeight from_rows(int64_t rows, int64_t cols, ComputeDType dtype,
                               const std::function<void(int64_t, int64_t, float*)>& fill,
                               std::optional<ComputeDType> held_in = std::nullopt);

  // From a GGUF Q8_0 tensor's blocks (34 bytes per 32 values: an fp16 scale d, then 32 int8
  // q), kept in 8 bits: the values are exactly the file's (d * q, exact in float32), read as
  // llama.cpp reads them, 1.125 bytes each instead of 4. Products run on them directly
  // (one token: kernels' gemv_q8; more: rows widened to float32 a panel at a time). For the
  // float32 compute dtype. Throws Error naming `what` when cols % 32 != 0 or the byte count
  // does not match the shape.
  static DenseWeight from_q8_0(std::span<const uint8_t> blocks, int64_t rows, int64_t cols, const std::string& what);
  // float32 values `w` (rows*cols) quantized to Q8_0 as ggml's reference quantizer does it (per
  // block of 32: d = max|x| / 127, q = round(x / d), d stored as fp16): within half a step of
  // each value's block (0.4% of its largest). For a GGUF embedding / head stored in another
  // quantized type that is not kept as blocks (Q4_0, Q4_K, IQ4_XS, ...): a quarter of
  // float32's bytes per token. Same requirements as from_q8_0.
  static DenseWeight to_q8_0(std::span<const float> w, int64_t rows, int64_t cols, const std::string& what);
  // The same, bit for bit, from rows that fill(r0, r1, out) writes as float32 ((r1 - r0) * cols
  // values at out), a slab of about 4 MB at a time: the tensor never exists whole in float32 (a
  // GGUF's quantized embedding / head re-quantized on load: 2 GB for 128K x 4096 otherwise).
  // fill's exceptions pass through.
  static DenseWeight to_q8_0(int64_t rows, int64_t cols, const std::function<void(int64_t, int64_t, float*)>& fill,
                             const std::string& what);
  // to_q8_0 of the values of `rows` rows of `cols` values stored as ggml `type` blocks (any type
  // formats/ggml_types.h dequantizes), a slab of rows at a time. Throws Error naming `what` when
  // the bytes do not hold that shape or the type cannot be dequantized.
  static DenseWeight q8_0_from_blocks(GgmlType type, std::span<const uint8_t> bytes, int64_t rows, int64_t cols,
                                      const std::string& what);
  // From a GGUF tensor's blocks of a type the block-row kernels take (Q5_0, Q5_1, Q5_K, Q6_K,
  // Q3_K, Q2_K: model/block_row_kernels.h; the loader uses it for gguf_type_kept_as_blocks),
  // kept as stored: the file's bytes (6.56 bits a value for Q6_K, 5.5 for Q5_K, 3.44 for Q3_K,
  // 2.63 for Q2_K) and exactly its values
  // (ggml's reference dequantization). One token, or a few (batched decoding), run on the
  // blocks (kernels' gemv); more tokens widen rows to float32 a panel at a time. For the
  // float32 compute dtype; with set_int8_activations a few tokens' products run on 8-bit
  // activations as llama.cpp's (kernels' gemv_i8: Q8_K for the K-quants, Q8_0 for Q5_0 / Q5_1). Throws Error naming `what` for another type, rows that are not whole blocks, or a
  // byte count that does not match the shape.
  static DenseWeight from_gguf_blocks(GgmlType type, std::vector<uint8_t> blocks, int64_t rows, int64_t cols,
                                      const std::string& what);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  ComputeDType dtype() const { return dtype_; }
  // Whether the values are held as 8-bit blocks (from_q8_0 / to_q8_0).
  bool q8() const { return !q8_.empty(); }
  // Whether they are a GGUF's blocks as stored (from_gguf_blocks); gguf_type() says which type.
  bool gguf_blocks() const { return !gb_.empty(); }
  GgmlType gguf_type() const { return gb_type_; }
  // Whether float32-compute values are held in 16 bits (from_rows' held_in): held_dtype() says
  // which format. Products widen them exactly (one token: kernels' gemv_bf16 / gemv_f16 on
  // float32 activations; more: rows widened to float32 a panel at a time).
  bool held_16bit() const { return dtype_ == ComputeDType::F32 && !h16_.empty(); }
  ComputeDType held_dtype() const { return held_16bit() ? held_ : dtype_; }
  // Any of those: the values exist only in that form (rows_to_f32 widens them); f32_data() is
  // null, and h16_data() too unless held_16bit().
  bool packed() const { return q8() || gguf_blocks() || held_16bit(); }
  // Rows [r0, r1) as float32 into out, row i at out + i * ld (ld 0: cols; else >= cols).
  void rows_to_f32(int64_t r0, int64_t r1, float* out, int64_t ld = 0) const;
  // y (T, rows) = x (T, cols) · Wᵀ.
  void matmul(float* y, const float* x, int64_t T) const;
  // Opt-in: a one-token product of Q8 storage runs on 8-bit activations
  // (kernels::LinearKernels::gemv_q8_i8, llama.cpp's Q8_0 x Q8_0 dot product) instead of
  // float32 ones. Not bitsandbytes' numbers: see ModelLoadOptions::int8_activations.
  void set_int8_activations(bool on) { int8_act_ = on; }
  // Whether its products of up to 8 tokens take that path (only 8-bit and GGUF block weights
  // have one).
  bool int8_activations() const { return int8_act_ && (q8() || gguf_blocks()); }
  size_t bytes() const { return f32_.size() * 4 + h16_.size() * 2 + q8_.size() + q8_scale_.size() * 4 + gb_.size(); }
  const float* f32_data() const { return f32_.data(); }       // when dtype() == F32 and !packed()
  const uint16_t* h16_data() const { return h16_.data(); }    // when dtype() is BF16/F16 (or held_16bit())

 private:
  // A Q8_0 weight of rows x cols with its codes and scales allocated (to be filled); throws
  // Error naming `what` unless rows, cols > 0 and cols % 32 == 0.
  static DenseWeight q8_0_sized(int64_t rows, int64_t cols, const std::string& what);

  int64_t rows_ = 0, cols_ = 0;
  ComputeDType dtype_ = ComputeDType::F32;
  std::vector<float> f32_;
  std::vector<uint16_t> h16_;
  ComputeDType held_ = ComputeDType::F32;  // h16_'s format when held_16bit()
  std::vector<int8_t> q8_;        // (rows, cols) codes, from_q8_0
  std::vector<float> q8_scale_;   // (rows, cols / 32) their scales
  std::vector<uint8_t> gb_;       // from_gguf_blocks: rows of blocks as the file has them
  GgmlType gb_type_ = GgmlType::F32;
  kernels::BlockRows block_rows() const;
  bool int8_act_ = false;
};

// The kernels' view of a 4-bit weight of shape (rows, cols) -- plain, fp16, double-quantized or
// GGUF-nested scales, minimums -- whose values round to `round_to`. Points into q (keep it alive).
kernels::Q4Matrix q4_matrix_view(const Quantized4bit& q, int64_t rows, int64_t cols, ComputeDType round_to);

class QuantLinear {
 public:
  QuantLinear() = default;
  // From float32 weights W (out, in): quantized per `q` or dense in `dtype`.
  QuantLinear(const float* w, int64_t out, int64_t in, const QuantOptions& q, ComputeDType dtype);
  // The same, taking `w` (out*in floats) to avoid a copy for dense float32 storage.
  QuantLinear(std::vector<float>&& w, int64_t out, int64_t in, const QuantOptions& q, ComputeDType dtype);
  // From an already-quantized weight (pre-quantized checkpoint); its shape gives (out, in).
  QuantLinear(Quantized4bit q, ComputeDType dtype);
  // From an int8 weight (quantized here, or read from a transformers/bnb 8-bit checkpoint).
  QuantLinear(Quantized8bit q, ComputeDType dtype, float threshold = kInt8DefaultThreshold);
  // A dense weight as it is (a GGUF's Q8_0 Linear kept 8-bit, DenseWeight::from_q8_0, or one
  // kept as its blocks, DenseWeight::from_gguf_blocks; float32 compute); is_quantized() is
  // false, as for any dense weight.
  explicit QuantLinear(DenseWeight w);

  // REQUIRES bias.size() == out_features(); stored rounded to the compute dtype.
  void set_bias(std::vector<float> bias);
  // Opt-in: one-token products of a 4-bit weight whose rows are whole 32-weight chunks run
  // on 8-bit activations (kernels::LinearKernels::gemv_q4_i8) instead of float32 ones. Not
  // bitsandbytes' numbers: see ModelLoadOptions::int8_activations.
  void set_int8_activations(bool on) {
    int8_act_ = on;
    dense_.set_int8_activations(on);  // (a GGUF Q8_0 Linear kept 8-bit: gemv_q8_i8)
  }
  // Whether forward() of one token takes that path.
  bool uses_int8_activations() const { return int8_act_ && q4_ && in_ % 32 == 0; }
  // Whether a few tokens' products run on 8-bit activations: the above, or a dense weight
  // held in 8 bits / as a GGUF's blocks with the option set (DenseWeight::int8_activations).
  bool decodes_on_int8() const { return uses_int8_activations() || (!is_quantized() && dense_.int8_activations()); }
  // Whether the weight is a GGUF's kept in the file's terms: 4-bit blocks re-laid
  // (QuantState::ggml_source), or a dense weight held as the file's blocks or in 8 bits (its
  // Q8_0 / Q5_0 values exactly, or a Q6_K / Q5_K / Q5_1 one's values as Q8_0: within half an
  // 8-bit step).
  bool holds_gguf_weight() const {
    return (q4_ && !q4_->state.ggml_source.empty()) || (!is_quantized() && dense_.packed());
  }

  // y (T, out) = x (T, in) · Wᵀ + b.  y and x must not overlap.
  void forward(float* y, const float* x, int64_t T) const;
  // Rows [r0, r1) of W as float32 (exactly what forward multiplies with): out (r1-r0, in),
  // row i at out + i * ld (ld 0: in; else >= in, e.g. sgemm_padded_ld(in) for a GEMM tile).
  // For int8 it is CB * (SCB / 127), the weight bitsandbytes' 8-bit backward multiplies
  // with (forward multiplies int8 codes, and the outlier columns with (CB * SCB) / 127,
  // which can differ from this in the last bit).
  void dequantize_rows(int64_t r0, int64_t r1, float* out, int64_t ld = 0) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  ComputeDType dtype() const { return dtype_; }
  // 4-bit or int8 (q4() / q8() says which); false for dense.
  bool is_quantized() const { return q4_.has_value() || q8_.has_value(); }
  bool is_int8() const { return q8_.has_value(); }
  const Quantized4bit* q4() const { return q4_ ? &*q4_ : nullptr; }
  const Quantized8bit* q8() const { return q8_ ? &*q8_ : nullptr; }
  float int8_threshold() const { return int8_threshold_; }
  const DenseWeight* dense() const { return is_quantized() ? nullptr : &dense_; }
  const std::vector<float>& bias() const { return bias_; }
  // Bytes of the stored weight (packed codes + quantization constants, or dense) and bias.
  size_t bytes() const;
  // The kernel view of the 4-bit weight. REQUIRES is_quantized().
  kernels::Q4Matrix q4_view() const;

 private:
  int64_t in_ = 0, out_ = 0;
  ComputeDType dtype_ = ComputeDType::F32;
  std::optional<Quantized4bit> q4_;
  std::optional<Quantized8bit> q8_;
  float int8_threshold_ = kInt8DefaultThreshold;
  bool int8_act_ = false;
  void forward_int8(float* y, const float* x, int64_t T) const;
  // y (T, out) += bias, then rounded to the compute dtype: the end of every forward.
  void finish_output(float* y, int64_t T) const;
  friend void forward_same_input(std::span<const QuantLinear* const>, std::span<float* const>, const float*, int64_t);
  DenseWeight dense_;
  std::vector<float> bias_;
};

// ys[i] (T, out_i) = x (T, in) · W_iᵀ + b_i for linears that share their input (a block's
// q/k/v, or gate/up), exactly as ws[i]->forward(ys[i], x, T). For one token of 4-bit
// weights the rows of all of them are split across threads in ONE parallel region, where
// separate forward() calls would open one each: on a 2-core machine waking the other thread
// costs ~7 us, and a small model's layer is only ~0.4 ms. Otherwise it calls forward() on
// each. REQUIRES ws.size() == ys.size(), every in_features() equal, no y overlapping x.
void forward_same_input(std::span<const QuantLinear* const> ws, std::span<float* const> ys, const float* x,
                        int64_t T);

// Rounds every element to `t` in place (no-op for F32): activations between ops hold values
// representable in the compute dtype.
void round_activations(float* x, int64_t n, ComputeDType t);

}  // namespace qlora
