#pragma once
// The CUDA kernels of the inference forward, as host functions that launch them on a
// stream. Same conventions as model/ops.h (outputs first; shapes in comments; T tokens,
// C hidden, NH/NKV query/key-value heads, HS head size). All pointers are device pointers;
// activations are float32 and, as on the CPU, rounded to the compute dtype by the caller
// where a bf16/fp16 model would round them.
//
// Each kernel has a CPU reference it is tested against (tests/cuda/test_cuda_kernels.cpp):
// the CPU backend's own op (model/ops.h, quant/blockwise.h, model/linear_kernels.h).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/dtype.h"

namespace qlora::cuda {

// A 4-bit weight (out = rows, in = cols) in device memory, laid out exactly as the CPU's
// kernels::Q4Matrix (bitsandbytes' packing: element 2j in the high nibble of byte j),
// its blocks running over the flattened row-major tensor.
struct Q4Device {
  const uint8_t* packed = nullptr;  // (rows*cols+1)/2 bytes
  int64_t rows = 0, cols = 0;
  int blocksize = 64;
  const float* code = nullptr;          // 16 values
  const float* absmax = nullptr;        // per block, or null when nested:
  const uint8_t* absmax_q = nullptr;    //   nested_code[absmax_q[b]] * nested_absmax[b / nested_blocksize]
  const float* nested_absmax = nullptr; //   + offset (two float32 roundings, never fused)
  const float* nested_code = nullptr;   //   256 values
  int nested_blocksize = 256;
  float offset = 0.0f;
  ComputeDType round_to = ComputeDType::F32;  // dequantized weights are rounded to this
  // log2 of blocksize / nested_blocksize when a power of two, else -1. The kernels'
  // launch functions set them; callers leave them alone.
  int blocksize_shift = -1, nested_shift = -1;
};

// Dynamic shared memory a kernel can take per block on the current device, its static
// shared memory already deducted: without raising its limit (48 KB in all) and with it
// raised to the device's opt-in maximum.
struct DynamicSmemLimits {
  size_t without_optin = 0, with_optin = 0;
};
DynamicSmemLimits dynamic_smem_limits(const void* kernel);

// Element dtype of a dense device tensor.
enum class DenseType : uint8_t { F32, BF16, F16 };
DenseType dense_type_of(ComputeDType t);

// out (n) = code[nibble_i] * absmax[i / blocksize] (then rounded to out_type), i < n =
// rows*cols: bit-identical to dequantize_4bit_{f32,bf16,f16} on the CPU (w.round_to is
// ignored: out_type decides).
void dequantize_q4(const Q4Device& w, DenseType out_type, void* out, cudaStream_t s);

// The kernels behind gemv_q4 (kernels.cu describes each). Auto picks the fastest that can
// run the shape; tests and benchmarks name one to check or time it.
//   Tiled    lanes own columns, x in registers: cols % 32 == 0, T <= 2, cols <= 16384
//   Staged   x staged in shared memory: cols % 32 == 0 and T x cols fits shared memory
//   Direct   x read from global memory: cols % 32 == 0
//   Generic  any shape, one weight per lane per step
enum class GemvQ4Kernel : uint8_t { Auto, Tiled, Staged, Direct, Generic };

// The kernel Auto runs for w and T on the current device.
GemvQ4Kernel gemv_q4_auto(const Q4Device& w, int T);

// The fused 4-bit matrix-vector product for decoding (packed weights read once):
// y[t*ldy + r] = sum_c W[r, c] * x[t*cols + c] for r < rows, t < T (1 <= T <= 8), with W
// dequantized (and rounded to w.round_to) on the fly; float32 accumulation. Throws when
// `kernel` names one that cannot run this shape.
void gemv_q4(const Q4Device& w, const float* x, int T, float* y, int64_t ldy, cudaStream_t s,
             GemvQ4Kernel kernel = GemvQ4Kernel::Auto);

// y[t*ldy + r] = sum_c W[r, c] * x[t*cols + c] for a dense row-major W (rows, cols) of
// `type`; float32 accumulation; 1 <= T <= 8.
void gemv_dense(const void* w, DenseType type, int64_t rows, int64_t cols, const float* x, int T, float* y,
                int64_t ldy, cudaStream_t s);

// out (T, C) = rows tokens[t] of table (V, C) of `type`, as float32. Token ids are checked
// on the host before they get here.
void embedding_forward(float* out, const int32_t* tokens, int64_t T, const void* table, DenseType type, int64_t C,
                       cudaStream_t s);

// ops.h rmsnorm_forward: out = weight * round(x * rstd) (rounded again) per row; rstd (T)
// written when not null.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t C, float eps,
                     ComputeDType dtype, cudaStream_t s);
// The same with ops.h's weight_offset (Gemma: offset 1, out = (x r) (1 + w) rounded once).
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t C, float eps,
                     ComputeDType dtype, float weight_offset, cudaStream_t s);
// The same with ops.h's round_once (OLMo 2: out = (x r) w rounded once).
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t C, float eps,
                     ComputeDType dtype, float weight_offset, bool round_once, cudaStream_t s);

// ops.h rope_forward in place on x (T, NH, HS) with cos/sin (T, HS/2) from rope_tables.
void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, cudaStream_t s);
// The same on the first rot dims of each head only (partial rotary; cos/sin (T, rot/2); rot 0
// means HS), the other HS - rot passed through: ops.h rope_forward's rot.
void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                  bool interleaved, cudaStream_t s);
void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                  cudaStream_t s);

// What the families change in attention (ops.h attention_forward's scale, softcap and
// alibi): a scale other than 1/sqrt(HS), Gemma 2's softcap of the scaled scores, and ALiBi's
// per-head bias of the key's position in its example (BLOOM: slope * pos; Falcon:
// bf16(bf16(slope) * bf16(pos)) / divisor). Defaults: none of them.
struct AttentionOptions {
  float scale = 0.0f;                   // 0: 1/sqrt(HS)
  float softcap = 0.0f;                 // 0: none
  const float* alibi_slopes = nullptr;  // (NH) on the device, or null: no ALiBi
  bool alibi_bf16_product = false;
  float alibi_divisor = 1.0f;
};

// ops.h attention_forward without the probabilities: causal GQA, query t at position
// q_pos0 + t sees keys [key_start ? key_start[t] : 0, q_pos0 + t]. k, v (>= q_pos0+T rows,
// NKV*HS). Scale 1/sqrt(HS), softmax in float32.
void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t q_pos0,
                       int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start, cudaStream_t s);
// The same with a family's scale, softcap or ALiBi.
void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t q_pos0,
                       int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start, const AttentionOptions& o,
                       cudaStream_t s);

// Decoding one token at position *pos (read on the device, so a captured CUDA graph
// replays for any position): attention of q (NH*HS) over keys/values 0..*pos, one block
// per head, an online softmax (no per-key scratch, any context length). Equals
// attention_forward up to float32 summation order.
void attention_decode(float* out, const float* q, const float* k, const float* v, const int32_t* pos, int64_t NH,
                      int64_t NKV, int64_t HS, cudaStream_t s);
// The same with a family's scale, softcap or ALiBi (key positions counted from 0).
void attention_decode(float* out, const float* q, const float* k, const float* v, const int32_t* pos, int64_t NH,
                      int64_t NKV, int64_t HS, const AttentionOptions& o, cudaStream_t s);
// kc/vc rows *pos = k/v (one row of kvd floats each).
void kv_store(float* kc, float* vc, const float* k, const float* v, const int32_t* pos, int64_t kvd, cudaStream_t s);

// out (N) = silu(gate) * up (may alias).
void swiglu_forward(float* out, const float* gate, const float* up, int64_t N, cudaStream_t s);
// out (N) = a + b (may alias).
void residual_forward(float* out, const float* a, const float* b, int64_t N, cudaStream_t s);
// y (T, N) += bias (N) broadcast over rows.
void add_bias(float* y, const float* bias, int64_t T, int64_t N, cudaStream_t s);
// y (N) += alpha * x (N).
void axpy(float* y, float alpha, const float* x, int64_t N, cudaStream_t s);
// out (N) = in clamped to [-limit, limit]; din (N) += dout where -limit <= in <= limit (OLMo's clip_qkv).
void clamp(float* out, const float* in, int64_t N, float limit, cudaStream_t s);
void clamp_backward(float* din, const float* dout, const float* in, int64_t N, float limit, cudaStream_t s);
// Rounds x (n) in place to `t` (nearest-even; no-op for F32), as round_activations.
void round_activations(float* x, int64_t n, ComputeDType t, cudaStream_t s);
// out (n) = x (n) converted to bf16 (`type` BF16) or fp16 (F16) bit patterns, nearest-even.
void f32_to_half(uint16_t* out, const float* x, int64_t n, DenseType type, cudaStream_t s);

}  // namespace qlora::cuda
