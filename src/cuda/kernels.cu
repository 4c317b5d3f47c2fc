// The CUDA kernels of the inference forward (cuda/kernels.h says what each computes).
// Where the CPU's result is exact (dequantization, rotary, norms, element-wise ops) the
// float operations are written with explicit round-to-nearest intrinsics (__fmul_rn,
// __fadd_rn, ...) so that nvcc cannot contract them into fused multiply-adds the CPU does
// not use (the library is built with -ffp-contract=off). Dot products use FMAs freely: their
// summation order differs from the CPU's anyway, and the tests compare them with a
// tolerance.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "cuda/attention_score.cuh"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_error.h"
#include "cuda/kernel_common.cuh"
#include "cuda/kernels.h"

namespace qlora::cuda {

DenseType dense_type_of(ComputeDType t) {
  switch (t) {
    case ComputeDType::F32: return DenseType::F32;
    case ComputeDType::BF16: return DenseType::BF16;
    case ComputeDType::F16: return DenseType::F16;
  }
  return DenseType::F32;
}

namespace {

__device__ __forceinline__ uint16_t to_half_bits(float x, DenseType t) {
  if (t == DenseType::BF16) return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  return __half_as_ushort(__float2half_rn(x));
}

__device__ __forceinline__ float half_bits_to_f32(uint16_t h, DenseType t) {
  if (t == DenseType::BF16) return __bfloat162float(__ushort_as_bfloat16(h));
  return __half2float(__ushort_as_half(h));
}

// The quantization block of element i and the nested block of block b. Dividing a 64-bit
// index by a run-time divisor is a software routine of dozens of instructions, and these
// run once per 8-32 weights; block sizes are powers of two in practice, so the launch
// functions fill in shifts (with_shifts) and the division stays only as the fallback.
__device__ __forceinline__ int64_t block_of(const Q4Device& w, int64_t i) {
  return w.blocksize_shift >= 0 ? i >> w.blocksize_shift : i / w.blocksize;
}
__device__ __forceinline__ int64_t nested_of(const Q4Device& w, int64_t b) {
  return w.nested_shift >= 0 ? b >> w.nested_shift : b / w.nested_blocksize;
}

// The float32 absmax of quantization block b (double quantization undone as bitsandbytes
// does: code * scale, rounded, + offset, rounded).
__device__ __forceinline__ float block_absmax(const Q4Device& w, int64_t b) {
  if (w.absmax) return w.absmax[b];
  return __fadd_rn(__fmul_rn(w.nested_code[w.absmax_q[b]], w.nested_absmax[nested_of(w, b)]), w.offset);
}

// w with blocksize_shift / nested_shift filled in where the sizes are powers of two.
int log2_exact(int64_t v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int s = 0;
  while ((int64_t{1} << s) < v) ++s;
  return s;
}
Q4Device with_shifts(Q4Device w) {
  w.blocksize_shift = log2_exact(w.blocksize);
  w.nested_shift = log2_exact(w.nested_blocksize);
  return w;
}

// Multiprocessors of the current device (asked once per process).
int64_t sm_count() {
  static int n = 0;
  if (n == 0) {
    int dev = 0;
    QLORA_CUDA_CHECK(cudaGetDevice(&dev));
    QLORA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  }
  return n;
}

// Blocks of `kernel` one multiprocessor holds at once with `threads` threads and `smem`
// bytes of dynamic shared memory (at least 1).
template <class Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t smem) {
  int n = 0;
  QLORA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  return std::max(n, 1);
}

unsigned grid_for(int64_t n, int threads) {
  return static_cast<unsigned>(std::max<int64_t>(1, (n + threads - 1) / threads));
}

// ---- 4-bit dequantization -------------------------------------------------------------

// Each thread decodes groups of 8 elements (4 packed bytes, one 32-bit load; blocks are
// >= 32 elements, so an aligned group never straddles two): a warp reads 128 contiguous
// bytes and writes 512 (bf16) or 1024 (f32) contiguous bytes per group. A thread loads
// all kDequantGroups groups (a grid-stride apart) and their absmax inputs before it decodes
// any, and the grid is exactly what the GPU holds at once, so every resident thread keeps
// that many loads in flight while earlier stores drain. The nested-absmax code book is
// staged in shared memory: in global memory it was a load that depended on another load.
constexpr int kDequantGroups = 8;
constexpr int kDequantThreads = 256;

template <DenseType OUT>
__device__ __forceinline__ void store8(void* out, int64_t i0, const float (&v)[8]) {
  if constexpr (OUT == DenseType::F32) {
    float4* o = reinterpret_cast<float4*>(static_cast<float*>(out) + i0);
    o[0] = make_float4(v[0], v[1], v[2], v[3]);
    o[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint32_t p[4];
#pragma unroll
    for (int k = 0; k < 4; ++k)
      p[k] = static_cast<uint32_t>(to_half_bits(v[2 * k], OUT)) |
             (static_cast<uint32_t>(to_half_bits(v[2 * k + 1], OUT)) << 16);
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + i0) = make_uint4(p[0], p[1], p[2], p[3]);
  }
}

// The code books of w in shared memory: code (16) and, when nested, nested_code (256).
__device__ __forceinline__ void stage_codes(const Q4Device& w, float* code, float* ncode) {
  for (int i = threadIdx.x; i < 16; i += blockDim.x) code[i] = w.code[i];
  if (!w.absmax)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) ncode[i] = w.nested_code[i];
}

// block_absmax with the nested code book in shared memory, from values already loaded:
// `a` is absmax[b] (plain) or nested_absmax[b / nested_blocksize] (nested, aq = absmax_q[b]).
__device__ __forceinline__ float absmax_from(const Q4Device& w, const float* ncode, uint32_t aq, float a) {
  return w.absmax ? a : __fadd_rn(__fmul_rn(ncode[aq], a), w.offset);
}

// Loads what absmax_from needs for block b.
__device__ __forceinline__ void load_absmax(const Q4Device& w, int64_t b, uint32_t& aq, float& a) {
  if (w.absmax) {
    aq = 0;
    a = __ldg(w.absmax + b);
  } else {
    aq = __ldg(w.absmax_q + b);
    a = __ldg(w.nested_absmax + nested_of(w, b));
  }
}

template <DenseType OUT>
__global__ void __launch_bounds__(kDequantThreads) dequant_q4_kernel(Q4Device w, int64_t n, void* out) {
  __shared__ float code[16], ncode[256];
  stage_codes(w, code, ncode);
  __syncthreads();
  const int64_t groups = n / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(w.packed);
  for (int64_t g0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g0 < groups;
       g0 += stride * kDequantGroups) {
    uint32_t bytes[kDequantGroups], aq[kDequantGroups];
    float a[kDequantGroups];
#pragma unroll
    for (int u = 0; u < kDequantGroups; ++u) {
      const int64_t g = g0 + u * stride;
      bytes[u] = 0u;
      aq[u] = 0u;
      a[u] = 0.0f;
      if (g < groups) {
        bytes[u] = __ldg(packed + g);
        load_absmax(w, block_of(w, g * 8), aq[u], a[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kDequantGroups; ++u) {
      const int64_t g = g0 + u * stride;
      if (g >= groups) break;
      const float s = absmax_from(w, ncode, aq[u], a[u]);
      float v[8];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const uint32_t b = (bytes[u] >> (8 * k)) & 0xFFu;
        v[2 * k] = __fmul_rn(code[b >> 4], s);
        v[2 * k + 1] = __fmul_rn(code[b & 15u], s);
      }
      store8<OUT>(out, g * 8, v);
    }
  }
  // The tail (n % 8 elements), by the first block.
  if (blockIdx.x == 0) {
    for (int64_t i = groups * 8 + threadIdx.x; i < n; i += blockDim.x) {
      const uint8_t b = w.packed[i >> 1];
      const float v = __fmul_rn(code[(i & 1) ? (b & 15) : (b >> 4)], block_absmax(w, block_of(w, i)));
      if constexpr (OUT == DenseType::F32)
        static_cast<float*>(out)[i] = v;
      else
        static_cast<uint16_t*>(out)[i] = to_half_bits(v, OUT);
    }
  }
}

// ---- matrix-vector products -------------------------------------------------------------

constexpr int kGemvWarps = 8;  // rows per block: one warp each

// Fast path, cols % 32 == 0: each lane reads 16 packed bytes (32 weights) per step, so
// a row's bytes start 16-byte aligned and a 32-weight chunk lies in one quant block.
template <int T>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_q4_kernel(Q4Device w, const float* __restrict__ x,
                                                                  float* __restrict__ y, int64_t ldy, int rnd) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (r >= w.rows) return;
  const int64_t cols = w.cols, chunks = cols / 32;
  const uint4* row = reinterpret_cast<const uint4*>(w.packed + r * cols / 2);
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0.0f;
  // Two 16-byte loads in flight per lane before either is decoded (memory-level
  // parallelism is what a GEMV lives on).
  auto consume = [&](const uint4 q, int64_t c) {
    const float a = block_absmax(w, block_of(w, r * cols + c * 32));
    float wv[32];
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      const uint32_t b = (words[k >> 2] >> (8 * (k & 3))) & 0xFFu;
      wv[2 * k] = round_to(__fmul_rn(code[b >> 4], a), rnd);
      wv[2 * k + 1] = round_to(__fmul_rn(code[b & 15u], a), rnd);
    }
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float4* xv = reinterpret_cast<const float4*>(x + t * cols + c * 32);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float4 xx = __ldg(xv + k);
        acc[t] += wv[4 * k] * xx.x + wv[4 * k + 1] * xx.y + wv[4 * k + 2] * xx.z + wv[4 * k + 3] * xx.w;
      }
    }
  };
  int64_t c = lane;
  for (; c + 32 < chunks; c += 64) {
    const uint4 qa = __ldg(row + c), qb = __ldg(row + c + 32);
    consume(qa, c);
    consume(qb, c + 32);
  }
  if (c < chunks) consume(__ldg(row + c), c);
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[t * ldy + r] = s;
  }
}

// The decode GEMV with x staged in shared memory (the fast path whenever it fits): each
// lane reads 16 packed bytes (32 weights) per step, and the 32 matching x values come from
// shared memory as 8 conflict-free 16-byte reads (each 32-value chunk of x is stored
// kChunkPitch floats apart, so 8 consecutive lanes hit 8 different groups of 4 banks).
// Reading them from global memory instead costs one L1 wavefront per lane (every lane's
// 128 bytes lie in a different line): that, not DRAM, limited the first version to ~9%
// of the copy bandwidth. Warps walk rows with a grid stride, so each block's copy of x
// serves several rows. For float32 weights (no rounding) the block's absmax is factored
// out of its 32 products; rounded (bf16/fp16) weights are rounded one by one as the CPU does.
constexpr int kChunkPitch = 36;

template <int T, bool kUnrounded>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_q4_smem_kernel(Q4Device w, const float* __restrict__ x,
                                                                       float* __restrict__ y, int64_t ldy, int rnd) {
  extern __shared__ float4 xs4[];
  const float* xs = reinterpret_cast<const float*>(xs4);
  __shared__ float code[16];
  const int64_t cols = w.cols, chunks = cols / 32;
  if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
  const int lane = threadIdx.x & 31;
  const int64_t r_first = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  // The first row's weights are requested before x is staged, so the two overlap.
  uint4 pre_a = make_uint4(0, 0, 0, 0), pre_b = pre_a;
  if (r_first < w.rows) {
    const uint4* row = reinterpret_cast<const uint4*>(w.packed + r_first * cols / 2);
    if (lane < chunks) pre_a = __ldg(row + lane);
    if (lane + 32 < chunks) pre_b = __ldg(row + lane + 32);
  }
  const float4* x4 = reinterpret_cast<const float4*>(x);
  for (int64_t j = threadIdx.x; j < T * chunks * 8; j += blockDim.x)
    xs4[(j / 8) * (kChunkPitch / 4) + (j % 8)] = __ldg(x4 + j);
  __syncthreads();
  for (int64_t r = r_first; r < w.rows; r += static_cast<int64_t>(gridDim.x) * kGemvWarps) {
    const uint4* row = reinterpret_cast<const uint4*>(w.packed + r * cols / 2);
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; ++t) acc[t] = 0.0f;
    auto consume = [&](const uint4 q, int64_t c) {
      const float a = block_absmax(w, block_of(w, r * cols + c * 32));
      const uint32_t words[4] = {q.x, q.y, q.z, q.w};
      float wv[32];
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        const uint32_t b = (words[k >> 2] >> (8 * (k & 3))) & 0xFFu;
        if constexpr (kUnrounded) {
          wv[2 * k] = code[b >> 4];
          wv[2 * k + 1] = code[b & 15u];
        } else {
          wv[2 * k] = round_to(__fmul_rn(code[b >> 4], a), rnd);
          wv[2 * k + 1] = round_to(__fmul_rn(code[b & 15u], a), rnd);
        }
      }
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const float4* xv = reinterpret_cast<const float4*>(xs + (t * chunks + c) * kChunkPitch);
        float part = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const float4 xx = xv[k];
          part += wv[4 * k] * xx.x + wv[4 * k + 1] * xx.y + wv[4 * k + 2] * xx.z + wv[4 * k + 3] * xx.w;
        }
        acc[t] += kUnrounded ? part * a : part;
      }
    };
    bool use_pre = r == r_first;
    int64_t c = lane;
    for (; c + 32 < chunks; c += 64) {
      uint4 qa, qb;
      if (use_pre) {
        qa = pre_a;
        qb = pre_b;
        use_pre = false;
      } else {
        qa = __ldg(row + c);
        qb = __ldg(row + c + 32);
      }
      consume(qa, c);
      consume(qb, c + 32);
    }
    if (c < chunks) consume(use_pre ? pre_a : __ldg(row + c), c);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float sum = warp_sum(acc[t]);
      if (lane == 0) y[t * ldy + r] = sum;
    }
  }
}

// The decode GEMV for 1 or 2 tokens, lanes owning columns. Staging x in shared memory
// (above) costs as many shared-memory wavefronts per weight as the code lookups do, which
// caps that kernel near half the memory bandwidth; here each lane owns one 32-column chunk
// for the whole kernel and keeps its x values in registers, so shared memory serves only
// the code lookups. A row is spread over `wpr` warps (ceil(chunks / 32)); a block holds
// `rb` rows side by side and walks row tiles with a grid stride; the partial sums of a
// tile's warps are added in a fixed order (deterministic, no atomics).
//   * Lookups go by byte: pair_tab[byte] = (code[high nibble], code[low nibble]), one
//     64-bit read per two weights. The table is stored 16 times side by side, so the 16
//     lanes of a half-warp (one 64-bit wavefront) each read their own two banks:
//     conflict-free whatever the bytes are.
//   * kDepth tiles of weights (and their absmax inputs) are in flight per lane: a slot is
//     refilled as soon as it has been decoded, so DRAM never waits for the arithmetic.
//   * Rounded weights (bf16/fp16 compute) are rounded in pairs (one cvt per two weights);
//     float32 weights factor the block's absmax out of its 32 products.
constexpr int kTiledMaxWarps = 16;

struct TiledShape {
  int wpr = 0, rb = 0;  // warps per row, rows per block tile
};
TiledShape tiled_shape(int64_t cols) {
  const int64_t chunks = cols / 32;
  TiledShape t;
  t.wpr = static_cast<int>((chunks + 31) / 32);
  t.rb = std::max(1, kTiledMaxWarps / std::max(t.wpr, 1));
  return t;
}

template <int T, int kRound, int kDepth>
__global__ void __launch_bounds__(kTiledMaxWarps * 32, 1)
    gemv_q4_tiled_kernel(Q4Device w, const float* __restrict__ x, float* __restrict__ y, int64_t ldy, int wpr,
                         int rb) {
  __shared__ float2 pair_tab[256 * 16];
  __shared__ float code[16], ncode[256];
  __shared__ float partial[2][kTiledMaxWarps][T];
  stage_codes(w, code, ncode);
  __syncthreads();
  for (int i = threadIdx.x; i < 256 * 16; i += blockDim.x) {
    const int e = i / 16;
    pair_tab[i] = make_float2(code[e >> 4], code[e & 15]);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slot = warp / wpr;
  const int64_t cols = w.cols, chunks = cols / 32;
  const int64_t c = static_cast<int64_t>(warp % wpr) * 32 + lane;  // the chunk this lane owns
  const bool active = c < chunks;
  float xr[T][32];
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float4 v = active ? __ldg(reinterpret_cast<const float4*>(x + t * cols + c * 32) + k)
                              : make_float4(0.f, 0.f, 0.f, 0.f);
      xr[t][4 * k] = v.x;
      xr[t][4 * k + 1] = v.y;
      xr[t][4 * k + 2] = v.z;
      xr[t][4 * k + 3] = v.w;
    }
  const int64_t row_tiles = (w.rows + rb - 1) / rb;
  const int64_t ntiles =
      blockIdx.x < row_tiles ? (row_tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;  // same for all warps
  auto row_of = [&](int64_t i, int s) { return (blockIdx.x + i * gridDim.x) * rb + s; };

  uint4 q[kDepth];
  uint32_t aq[kDepth];
  float am[kDepth];
  auto load = [&](int k, int64_t i) {
    const int64_t r = row_of(i, slot);
    q[k] = make_uint4(0u, 0u, 0u, 0u);
    aq[k] = 0u;
    am[k] = 0.0f;
    if (i < ntiles && r < w.rows && active) {
      q[k] = __ldg(reinterpret_cast<const uint4*>(w.packed + r * cols / 2) + c);
      load_absmax(w, block_of(w, r * cols + c * 32), aq[k], am[k]);
    }
  };
#pragma unroll
  for (int k = 0; k < kDepth; ++k) load(k, k);
  __syncthreads();  // pair_tab ready
  const float2* tab = pair_tab + (lane & 15);

  for (int64_t i0 = 0; i0 < ntiles; i0 += kDepth) {
#pragma unroll
    for (int k = 0; k < kDepth; ++k) {
      const int64_t i = i0 + k;
      if (i >= ntiles) break;
      const float a = absmax_from(w, ncode, aq[k], am[k]);
      const uint32_t words[4] = {q[k].x, q[k].y, q[k].z, q[k].w};
      float acc[T];
#pragma unroll
      for (int t = 0; t < T; ++t) acc[t] = 0.0f;
#pragma unroll
      for (int j = 0; j < 16; ++j) {  // byte j holds weights 2j (high nibble) and 2j+1
        const float2 cv = tab[((words[j >> 2] >> (8 * (j & 3))) & 0xFFu) * 16];
        float w0 = cv.x, w1 = cv.y;
        if constexpr (kRound == kRoundBF16) {
          const __nv_bfloat162 p = __floats2bfloat162_rn(__fmul_rn(w0, a), __fmul_rn(w1, a));
          w0 = __low2float(p);
          w1 = __high2float(p);
        } else if constexpr (kRound == kRoundF16) {
          const __half2 p = __floats2half2_rn(__fmul_rn(w0, a), __fmul_rn(w1, a));
          w0 = __low2float(p);
          w1 = __high2float(p);
        }
#pragma unroll
        for (int t = 0; t < T; ++t) acc[t] += w0 * xr[t][2 * j] + w1 * xr[t][2 * j + 1];
      }
      load(k, i + kDepth);  // the slot is free: refill it
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const float s = warp_sum(kRound == kRound32 ? acc[t] * a : acc[t]);
        if (lane == 0) partial[i & 1][warp][t] = s;
      }
      __syncthreads();
      // partial[i & 1] is rewritten at tile i + 2, after the barrier of tile i + 1.
      if (threadIdx.x < rb * T) {
        const int s = threadIdx.x / T, t = threadIdx.x % T;
        const int64_t r = row_of(i, s);
        if (r < w.rows) {
          float sum = 0.0f;
          for (int v = 0; v < wpr; ++v) sum += partial[i & 1][s * wpr + v][t];
          y[t * ldy + r] = sum;
        }
      }
    }
  }
}

// Any shape: one weight per lane per step.
__global__ void gemv_q4_generic_kernel(Q4Device w, const float* __restrict__ x, int T, float* __restrict__ y,
                                       int64_t ldy, int rnd) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (r >= w.rows) return;
  const int64_t cols = w.cols;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t c = lane; c < cols; c += 32) {
    const int64_t i = r * cols + c;
    const uint8_t b = w.packed[i >> 1];
    const float wv = round_to(__fmul_rn(w.code[(i & 1) ? (b & 15) : (b >> 4)], block_absmax(w, block_of(w, i))), rnd);
#pragma unroll
    for (int t = 0; t < 8; ++t)
      if (t < T) acc[t] += wv * x[t * cols + c];
  }
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    if (t >= T) break;
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[t * ldy + r] = s;
  }
}

// Dense rows: 16-byte loads (4 float32 or 8 half-width weights per lane per step) when the
// row length allows, else one weight per lane per step.
template <int T, DenseType W>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_dense_kernel(const void* __restrict__ wp, int64_t rows,
                                                                     int64_t cols, const float* __restrict__ x,
                                                                     float* __restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (r >= rows) return;
  constexpr int kPer = W == DenseType::F32 ? 4 : 8;  // weights per 16-byte load
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0.0f;
  if (cols % kPer == 0) {
    const int64_t steps = cols / kPer;
    for (int64_t c = lane; c < steps; c += 32) {
      float wv[kPer];
      if constexpr (W == DenseType::F32) {
        const float4 q = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(wp) + r * cols) + c);
        wv[0] = q.x; wv[1] = q.y; wv[2] = q.z; wv[3] = q.w;
      } else {
        const uint4 q = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(wp) + r * cols) + c);
        const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          wv[2 * k] = half_bits_to_f32(static_cast<uint16_t>(words[k] & 0xFFFFu), W);
          wv[2 * k + 1] = half_bits_to_f32(static_cast<uint16_t>(words[k] >> 16), W);
        }
      }
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const float* xv = x + t * cols + c * kPer;
#pragma unroll
        for (int k = 0; k < kPer; ++k) acc[t] += wv[k] * __ldg(xv + k);
      }
    }
  } else {
    for (int64_t c = lane; c < cols; c += 32) {
      float wv;
      if constexpr (W == DenseType::F32)
        wv = static_cast<const float*>(wp)[r * cols + c];
      else
        wv = half_bits_to_f32(static_cast<const uint16_t*>(wp)[r * cols + c], W);
#pragma unroll
      for (int t = 0; t < T; ++t) acc[t] += wv * x[t * cols + c];
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[t * ldy + r] = s;
  }
}

// ---- block ops ------------------------------------------------------------------------

__global__ void embedding_kernel(float* out, const int32_t* tokens, const void* table, DenseType type, int64_t C) {
  const int64_t t = blockIdx.y;
  const int64_t row = tokens[t];
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v;
    if (type == DenseType::F32)
      v = static_cast<const float*>(table)[row * C + i];
    else
      v = half_bits_to_f32(static_cast<const uint16_t*>(table)[row * C + i], type);
    out[t * C + i] = v;
  }
}

// offset != 0: Gemma's (x r) (offset + w) in float32, rounded once.
__global__ void rmsnorm_kernel(float* out, float* rstd, const float* x, const float* weight, int64_t C, float eps,
                               float offset, int rnd, int once) {
  const int64_t t = blockIdx.x;
  const float* xr = x + t * C;
  float* o = out + t * C;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss);
  const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(C)), eps)));
  if (rstd && threadIdx.x == 0) rstd[t] = r;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    if (offset != 0.0f || once)
      o[i] = round_to(__fmul_rn(__fmul_rn(r, xr[i]), __fadd_rn(offset, weight[i])), rnd);
    else if (rnd == kRound32)
      o[i] = __fmul_rn(weight[i], __fmul_rn(r, xr[i]));
    else
      o[i] = round_to(__fmul_rn(weight[i], round_to(__fmul_rn(r, xr[i]), rnd)), rnd);
  }
}

// half = rot / 2: the pairs (i, i + half) of the first rot dims of each head rotate.
__global__ void rope_kernel(float* x, const float* cos, const float* sin, int64_t NH, int64_t HS, int64_t half,
                            int64_t step, int64_t partner) {
  const int64_t t = blockIdx.y, h = blockIdx.x;
  const float* c = cos + t * half;
  const float* s = sin + t * half;
  float* v = x + (t * NH + h) * HS;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    float* a = v + i * step;  // the pair (i, i + half), or (2i, 2i + 1) interleaved
    const float x0 = a[0], x1 = a[partner];
    a[0] = __fsub_rn(__fmul_rn(x0, c[i]), __fmul_rn(x1, s[i]));
    a[partner] = __fadd_rn(__fmul_rn(x1, c[i]), __fmul_rn(x0, s[i]));
  }
}

// One block per (head, query): scores in dynamic shared memory (one float per visible key)
// after the query vector (HS floats).
__global__ void attention_kernel(float* out, const float* q, const float* k, const float* v, int64_t q_pos0,
                                 int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start, AttentionOptions o) {
  extern __shared__ float smem[];
  const int64_t h = blockIdx.x, t = blockIdx.y;
  const int64_t kh = h / (NH / NKV);
  const int64_t qs = NH * HS, kvs = NKV * HS;
  const int64_t n = q_pos0 + t + 1;
  const int64_t j0 = key_start ? key_start[t] : 0;
  float* qv = smem;
  float* sc = smem + HS;  // indexed j - j0
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) qv[d] = q[t * qs + h * HS + d];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int64_t j = j0 + warp; j < n; j += nw) {
    const float* kr = k + j * kvs + kh * HS;
    float dot = 0.0f;
    for (int64_t d = lane; d < HS; d += 32) dot += qv[d] * kr[d];
    dot = warp_sum(dot);
    if (lane == 0) sc[j - j0] = attention_score(o, dot, h, j - j0);
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int64_t j = j0 + threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, sc[j - j0]);
  mx = block_max(mx);
  float sum = 0.0f;
  for (int64_t j = j0 + threadIdx.x; j < n; j += blockDim.x) {
    const float e = expf(sc[j - j0] - mx);
    sc[j - j0] = e;
    sum += e;
  }
  sum = block_sum(sum);  // its barriers also publish the exponentials
  for (int64_t j = j0 + threadIdx.x; j < n; j += blockDim.x) sc[j - j0] = sc[j - j0] / sum;
  __syncthreads();
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = j0; j < n; ++j) acc += sc[j - j0] * v[j * kvs + kh * HS + d];
    out[t * qs + h * HS + d] = acc;
  }
}

// One block per head, kDecodeWarps warps; warp w takes keys w, w + kDecodeWarps, ... and
// keeps a running max, sum and HS/32 accumulators per lane; the warps merge at the end.
constexpr int kDecodeWarps = 8;
constexpr int kMaxDecodeHS = 256;

__global__ void attention_decode_kernel(float* out, const float* q, const float* k, const float* v,
                                        const int32_t* pos, int64_t NH, int64_t NKV, int64_t HS, AttentionOptions o) {
  constexpr int kPer = kMaxDecodeHS / 32;
  __shared__ float s_m[kDecodeWarps], s_l[kDecodeWarps];
  __shared__ float s_acc[kDecodeWarps][kMaxDecodeHS];
  const int64_t h = blockIdx.x, kh = h / (NH / NKV), kvs = NKV * HS;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = static_cast<int64_t>(*pos) + 1;
  float qv[kPer], acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t d = lane + 32 * i;
    qv[i] = d < HS ? q[h * HS + d] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = warp; j < n; j += kDecodeWarps) {
    const float* kr = k + j * kvs + kh * HS;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < HS) dot += qv[i] * kr[d];
    }
    const float sc = attention_score(o, warp_sum(dot), h, j);
    const float m_new = fmaxf(m, sc);
    const float corr = expf(m - m_new), p = expf(sc - m_new);
    l = l * corr + p;
    const float* vr = v + j * kvs + kh * HS;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int64_t d = lane + 32 * i;
      acc[i] = acc[i] * corr + (d < HS ? p * vr[d] : 0.0f);
    }
    m = m_new;
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) s_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, s_m[w]);
  float L = 0.0f;
  for (int w = 0; w < kDecodeWarps; ++w)
    if (s_l[w] > 0.0f) L += s_l[w] * expf(s_m[w] - M);
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kDecodeWarps; ++w)
      if (s_l[w] > 0.0f) o += s_acc[w][d] * expf(s_m[w] - M);
    out[h * HS + d] = o / L;
  }
}

__global__ void kv_store_kernel(float* kc, float* vc, const float* k, const float* v, const int32_t* pos, int64_t kvd) {
  const int64_t p = *pos;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < kvd;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    kc[p * kvd + i] = k[i];
    vc[p * kvd + i] = v[i];
  }
}

__global__ void swiglu_kernel(float* out, const float* gate, const float* up, int64_t N) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = __fmul_rn(__fmul_rn(g, __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)))), up[i]);
  }
}

__global__ void residual_kernel(float* out, const float* a, const float* b, int64_t N) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __fadd_rn(a[i], b[i]);
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t T, int64_t N) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < T * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __fadd_rn(y[i], bias[i % N]);
}

__global__ void axpy_kernel(float* y, float alpha, const float* x, int64_t N) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __fadd_rn(y[i], __fmul_rn(x[i], alpha));
}

__global__ void round_kernel(float* x, int64_t n, int rnd) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = round_to(x[i], rnd);
}

__global__ void to_half_kernel(uint16_t* out, const float* x, int64_t n, DenseType t) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = to_half_bits(x[i], t);
}


}  // namespace

DynamicSmemLimits dynamic_smem_limits(const void* kernel) {
  cudaFuncAttributes attr{};
  QLORA_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  int dev = 0, optin = 0;
  QLORA_CUDA_CHECK(cudaGetDevice(&dev));
  QLORA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  DynamicSmemLimits l;
  l.without_optin = 48 * 1024 > attr.sharedSizeBytes ? 48 * 1024 - attr.sharedSizeBytes : 0;
  l.with_optin = static_cast<size_t>(optin) > attr.sharedSizeBytes ? optin - attr.sharedSizeBytes : 0;
  return l;
}

namespace {

// Whether `bytes` of dynamic shared memory fit `Kernel` (static shared memory counted),
// raising its limit to the device's opt-in maximum the first time that is needed.
template <auto Kernel>
bool fits_shared(size_t bytes) {
  static const DynamicSmemLimits limits = dynamic_smem_limits(reinterpret_cast<const void*>(Kernel));
  if (bytes <= limits.without_optin) return true;
  if (bytes > limits.with_optin) return false;
  static const bool raised = [] {
    QLORA_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(limits.with_optin)));
    return true;
  }();
  return raised;
}

template <int T>
void launch_gemv_q4_staged(const Q4Device& w, const float* x, float* y, int64_t ldy, int rnd, cudaStream_t s) {
  const size_t smem = static_cast<size_t>(T * (w.cols / 32) * kChunkPitch) * sizeof(float);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(grid_for(w.rows, kGemvWarps), sm_count() * 4));
  if (rnd == kRound32)
    gemv_q4_smem_kernel<T, true><<<grid, kGemvWarps * 32, smem, s>>>(w, x, y, ldy, rnd);
  else
    gemv_q4_smem_kernel<T, false><<<grid, kGemvWarps * 32, smem, s>>>(w, x, y, ldy, rnd);
}

template <int T>
void launch_gemv_dense(const void* w, DenseType type, int64_t rows, int64_t cols, const float* x, float* y,
                       int64_t ldy, cudaStream_t s) {
  const unsigned g = grid_for(rows, kGemvWarps);
  switch (type) {
    case DenseType::F32: gemv_dense_kernel<T, DenseType::F32><<<g, kGemvWarps * 32, 0, s>>>(w, rows, cols, x, y, ldy); break;
    case DenseType::BF16: gemv_dense_kernel<T, DenseType::BF16><<<g, kGemvWarps * 32, 0, s>>>(w, rows, cols, x, y, ldy); break;
    case DenseType::F16: gemv_dense_kernel<T, DenseType::F16><<<g, kGemvWarps * 32, 0, s>>>(w, rows, cols, x, y, ldy); break;
  }
}

}  // namespace

void dequantize_q4(const Q4Device& w_in, DenseType out_type, void* out, cudaStream_t s) {
  const Q4Device w = with_shifts(w_in);
  const int64_t n = w.rows * w.cols;
  if (n == 0) return;
  // No more blocks than run at once (each thread then loops), and no more than the work needs.
  const int64_t need = grid_for((n / 8 + kDequantGroups - 1) / kDequantGroups + 1, kDequantThreads);
  auto launch = [&](auto kernel) {
    static const int64_t resident = sm_count() * resident_blocks(kernel, kDequantThreads, 0);
    kernel<<<static_cast<unsigned>(std::min(need, resident)), kDequantThreads, 0, s>>>(w, n, out);
  };
  switch (out_type) {
    case DenseType::F32: launch(dequant_q4_kernel<DenseType::F32>); break;
    case DenseType::BF16: launch(dequant_q4_kernel<DenseType::BF16>); break;
    case DenseType::F16: launch(dequant_q4_kernel<DenseType::F16>); break;
  }
  check_launch("dequantize_q4");
}

namespace {

template <int T, int kDepth>
void launch_gemv_q4_tiled(const Q4Device& w, const float* x, float* y, int64_t ldy, int rnd, cudaStream_t s) {
  const TiledShape sh = tiled_shape(w.cols);
  const int64_t row_tiles = (w.rows + sh.rb - 1) / sh.rb;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(row_tiles, sm_count()));
  const unsigned threads = static_cast<unsigned>(sh.rb * sh.wpr * 32);
  if (rnd == kRoundBF16)
    gemv_q4_tiled_kernel<T, kRoundBF16, kDepth><<<grid, threads, 0, s>>>(w, x, y, ldy, sh.wpr, sh.rb);
  else if (rnd == kRoundF16)
    gemv_q4_tiled_kernel<T, kRoundF16, kDepth><<<grid, threads, 0, s>>>(w, x, y, ldy, sh.wpr, sh.rb);
  else
    gemv_q4_tiled_kernel<T, kRound32, kDepth><<<grid, threads, 0, s>>>(w, x, y, ldy, sh.wpr, sh.rb);
}

bool tiled_ok(int64_t cols, int T) { return cols % 32 == 0 && T <= 2 && tiled_shape(cols).wpr <= kTiledMaxWarps; }

template <int T>
bool staged_ok(const Q4Device& w) {
  const size_t smem = static_cast<size_t>(T * (w.cols / 32) * kChunkPitch) * sizeof(float);
  return w.cols % 32 == 0 && (w.round_to == ComputeDType::F32 ? fits_shared<gemv_q4_smem_kernel<T, true>>(smem)
                                                               : fits_shared<gemv_q4_smem_kernel<T, false>>(smem));
}

bool staged_ok(const Q4Device& w, int T) {
  switch (T) {
    case 1: return staged_ok<1>(w);
    case 2: return staged_ok<2>(w);
    case 3: return staged_ok<3>(w);
    case 4: return staged_ok<4>(w);
    case 5: return staged_ok<5>(w);
    case 6: return staged_ok<6>(w);
    case 7: return staged_ok<7>(w);
    default: return staged_ok<8>(w);
  }
}

const char* kernel_name(GemvQ4Kernel k) {
  switch (k) {
    case GemvQ4Kernel::Auto: return "auto";
    case GemvQ4Kernel::Tiled: return "tiled";
    case GemvQ4Kernel::Staged: return "staged";
    case GemvQ4Kernel::Direct: return "direct";
    case GemvQ4Kernel::Generic: return "generic";
  }
  return "?";
}

}  // namespace

// Staged first: on the H200 (bench/RESULTS.md, 2026-12-04) it beat Tiled on every 7B
// shape (0.144 vs 0.134 of the copy bandwidth on 4096x4096, 0.174 vs 0.138 on 4096x11008);
// Tiled takes the shapes whose x does not fit shared memory at T <= 2.
GemvQ4Kernel gemv_q4_auto(const Q4Device& w, int T) {
  if (w.cols % 32 != 0) return GemvQ4Kernel::Generic;
  if (staged_ok(w, T)) return GemvQ4Kernel::Staged;
  return tiled_ok(w.cols, T) ? GemvQ4Kernel::Tiled : GemvQ4Kernel::Direct;
}

void gemv_q4(const Q4Device& w_in, const float* x, int T, float* y, int64_t ldy, cudaStream_t s,
             GemvQ4Kernel kernel) {
  const Q4Device w = with_shifts(w_in);
  if (T < 1 || T > 8) check(false, "cuda::gemv_q4", "T must be 1..8 (got " + std::to_string(T) + ")");
  if (w.rows == 0) return;
  if (kernel == GemvQ4Kernel::Auto) kernel = gemv_q4_auto(w, T);
  const bool ok = kernel == GemvQ4Kernel::Generic || (w.cols % 32 == 0 && (kernel == GemvQ4Kernel::Direct ||
                                                                          (kernel == GemvQ4Kernel::Tiled && tiled_ok(w.cols, T)) ||
                                                                          (kernel == GemvQ4Kernel::Staged && staged_ok(w, T))));
  // (the messages are built only on failure: these run once per Linear per token)
  if (!ok)
    check(false, "cuda::gemv_q4",
        std::string("the ") + kernel_name(kernel) + " kernel cannot run " + std::to_string(w.rows) + "x" +
            std::to_string(w.cols) + " with T " + std::to_string(T));
  const int rnd = round_code(w.round_to);
  const unsigned direct_grid = grid_for(w.rows, kGemvWarps);
  switch (kernel) {
    case GemvQ4Kernel::Generic:
      gemv_q4_generic_kernel<<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, T, y, ldy, rnd);
      break;
    case GemvQ4Kernel::Tiled:
      if (T == 1)
        launch_gemv_q4_tiled<1, 8>(w, x, y, ldy, rnd, s);
      else
        launch_gemv_q4_tiled<2, 4>(w, x, y, ldy, rnd, s);
      break;
    case GemvQ4Kernel::Staged:
      switch (T) {
        case 1: launch_gemv_q4_staged<1>(w, x, y, ldy, rnd, s); break;
        case 2: launch_gemv_q4_staged<2>(w, x, y, ldy, rnd, s); break;
        case 3: launch_gemv_q4_staged<3>(w, x, y, ldy, rnd, s); break;
        case 4: launch_gemv_q4_staged<4>(w, x, y, ldy, rnd, s); break;
        case 5: launch_gemv_q4_staged<5>(w, x, y, ldy, rnd, s); break;
        case 6: launch_gemv_q4_staged<6>(w, x, y, ldy, rnd, s); break;
        case 7: launch_gemv_q4_staged<7>(w, x, y, ldy, rnd, s); break;
        default: launch_gemv_q4_staged<8>(w, x, y, ldy, rnd, s); break;
      }
      break;
    default:
      switch (T) {
        case 1: gemv_q4_kernel<1><<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, y, ldy, rnd); break;
        case 2: gemv_q4_kernel<2><<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, y, ldy, rnd); break;
        case 3: gemv_q4_kernel<3><<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, y, ldy, rnd); break;
        case 4: gemv_q4_kernel<4><<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, y, ldy, rnd); break;
        case 5: gemv_q4_kernel<5><<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, y, ldy, rnd); break;
        case 6: gemv_q4_kernel<6><<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, y, ldy, rnd); break;
        case 7: gemv_q4_kernel<7><<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, y, ldy, rnd); break;
        default: gemv_q4_kernel<8><<<direct_grid, kGemvWarps * 32, 0, s>>>(w, x, y, ldy, rnd); break;
      }
      break;
  }
  check_launch("gemv_q4");
}

void gemv_dense(const void* w, DenseType type, int64_t rows, int64_t cols, const float* x, int T, float* y,
                int64_t ldy, cudaStream_t s) {
  if (T < 1 || T > 8) check(false, "cuda::gemv_dense", "T must be 1..8 (got " + std::to_string(T) + ")");
  if (rows == 0) return;
  switch (T) {
    case 1: launch_gemv_dense<1>(w, type, rows, cols, x, y, ldy, s); break;
    case 2: launch_gemv_dense<2>(w, type, rows, cols, x, y, ldy, s); break;
    case 3: launch_gemv_dense<3>(w, type, rows, cols, x, y, ldy, s); break;
    case 4: launch_gemv_dense<4>(w, type, rows, cols, x, y, ldy, s); break;
    case 5: launch_gemv_dense<5>(w, type, rows, cols, x, y, ldy, s); break;
    case 6: launch_gemv_dense<6>(w, type, rows, cols, x, y, ldy, s); break;
    case 7: launch_gemv_dense<7>(w, type, rows, cols, x, y, ldy, s); break;
    default: launch_gemv_dense<8>(w, type, rows, cols, x, y, ldy, s); break;
  }
  check_launch("gemv_dense");
}

void embedding_forward(float* out, const int32_t* tokens, int64_t T, const void* table, DenseType type, int64_t C,
                       cudaStream_t s) {
  if (T == 0) return;
  // (tokens on the grid's y dimension, at most 65535 per launch)
  for (int64_t t0 = 0; t0 < T; t0 += kMaxGridY) {
    const int64_t nt = std::min(kMaxGridY, T - t0);
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(grid_for(C, 256), 64)), static_cast<unsigned>(nt));
    embedding_kernel<<<grid, 256, 0, s>>>(out + t0 * C, tokens + t0, table, type, C);
    check_launch("embedding_forward");
  }
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t C, float eps,
                     ComputeDType dtype, cudaStream_t s) {
  rmsnorm_forward(out, rstd, x, weight, T, C, eps, dtype, 0.0f, s);
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t C, float eps,
                     ComputeDType dtype, float weight_offset, cudaStream_t s) {
  rmsnorm_forward(out, rstd, x, weight, T, C, eps, dtype, weight_offset, false, s);
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t C, float eps,
                     ComputeDType dtype, float weight_offset, bool round_once, cudaStream_t s) {
  if (T == 0) return;
  rmsnorm_kernel<<<static_cast<unsigned>(T), 256, 0, s>>>(out, rstd, x, weight, C, eps, weight_offset,
                                                          round_code(dtype), round_once ? 1 : 0);
  check_launch("rmsnorm_forward");
}

void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, cudaStream_t s) {
  rope_forward(x, cos, sin, T, NH, HS, 0, s);
}

void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                  cudaStream_t s) {
  rope_forward(x, cos, sin, T, NH, HS, rot, false, s);
}

void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                  bool interleaved, cudaStream_t s) {
  if (T == 0) return;
  check(rot >= 0 && rot <= HS && rot % 2 == 0, "cuda::rope_forward", "rot must be even and at most the head size");
  const int64_t half = (rot > 0 ? rot : HS) / 2;
  const int threads = static_cast<int>(std::min<int64_t>(128, std::max<int64_t>(32, half)));
  for (int64_t t0 = 0; t0 < T; t0 += kMaxGridY) {  // (tokens on the grid's y dimension)
    const int64_t nt = std::min(kMaxGridY, T - t0);
    rope_kernel<<<dim3(static_cast<unsigned>(NH), static_cast<unsigned>(nt)), threads, 0, s>>>(
        x + t0 * NH * HS, cos + t0 * half, sin + t0 * half, NH, HS, half, interleaved ? 2 : 1,
        interleaved ? 1 : half);
    check_launch("rope_forward");
  }
}

void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t q_pos0,
                       int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start, cudaStream_t s) {
  attention_forward(out, q, k, v, T, q_pos0, NH, NKV, HS, key_start, AttentionOptions{}, s);
}

void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t q_pos0,
                       int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start, const AttentionOptions& opts,
                       cudaStream_t s) {
  if (T == 0) return;
  check(NKV > 0 && NH % NKV == 0, "cuda::attention_forward", "NH must be a multiple of NKV");
  const size_t smem = static_cast<size_t>(HS + q_pos0 + T) * sizeof(float);
  check(T <= 65535, "cuda::attention_forward", "more than 65535 tokens in one forward (run the prompt in pieces)");
  check(fits_shared<attention_kernel>(smem), "cuda::attention_forward",
        "a context of " + std::to_string(q_pos0 + T) + " positions needs " + std::to_string(smem) +
            " bytes of shared memory per block, more than this GPU gives one block");
  attention_kernel<<<dim3(static_cast<unsigned>(NH), static_cast<unsigned>(T)), 128, smem, s>>>(
      out, q, k, v, q_pos0, NH, NKV, HS, key_start, resolved(opts, HS));
  check_launch("attention_forward");
}

void attention_decode(float* out, const float* q, const float* k, const float* v, const int32_t* pos, int64_t NH,
                      int64_t NKV, int64_t HS, cudaStream_t s) {
  attention_decode(out, q, k, v, pos, NH, NKV, HS, AttentionOptions{}, s);
}

void attention_decode(float* out, const float* q, const float* k, const float* v, const int32_t* pos, int64_t NH,
                      int64_t NKV, int64_t HS, const AttentionOptions& opts, cudaStream_t s) {
  check(NKV > 0 && NH % NKV == 0, "cuda::attention_decode", "NH must be a multiple of NKV");
  check(HS <= kMaxDecodeHS, "cuda::attention_decode",
        "head size " + std::to_string(HS) + " above " + std::to_string(kMaxDecodeHS));
  attention_decode_kernel<<<static_cast<unsigned>(NH), kDecodeWarps * 32, 0, s>>>(
      out, q, k, v, pos, NH, NKV, HS, resolved(opts, HS));
  check_launch("attention_decode");
}

void kv_store(float* kc, float* vc, const float* k, const float* v, const int32_t* pos, int64_t kvd, cudaStream_t s) {
  kv_store_kernel<<<static_cast<unsigned>(std::min<int64_t>(grid_for(kvd, 256), 64)), 256, 0, s>>>(kc, vc, k, v, pos,
                                                                                                    kvd);
  check_launch("kv_store");
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t N, cudaStream_t s) {
  if (N == 0) return;
  swiglu_kernel<<<ew_grid(N), 256, 0, s>>>(out, gate, up, N);
  check_launch("swiglu_forward");
}

void residual_forward(float* out, const float* a, const float* b, int64_t N, cudaStream_t s) {
  if (N == 0) return;
  residual_kernel<<<ew_grid(N), 256, 0, s>>>(out, a, b, N);
  check_launch("residual_forward");
}

void add_bias(float* y, const float* bias, int64_t T, int64_t N, cudaStream_t s) {
  if (T * N == 0) return;
  add_bias_kernel<<<ew_grid(T * N), 256, 0, s>>>(y, bias, T, N);
  check_launch("add_bias");
}

__global__ void clamp_kernel(float* out, const float* in, int64_t N, float limit) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = fminf(fmaxf(in[i], -limit), limit);
}

__global__ void clamp_backward_kernel(float* din, const float* dout, const float* in, int64_t N, float limit) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (in[i] >= -limit && in[i] <= limit) din[i] = __fadd_rn(din[i], dout[i]);
}

void clamp(float* out, const float* in, int64_t N, float limit, cudaStream_t s) {
  if (N == 0) return;
  clamp_kernel<<<ew_grid(N), 256, 0, s>>>(out, in, N, limit);
  check_launch("clamp");
}

void clamp_backward(float* din, const float* dout, const float* in, int64_t N, float limit, cudaStream_t s) {
  if (N == 0) return;
  clamp_backward_kernel<<<ew_grid(N), 256, 0, s>>>(din, dout, in, N, limit);
  check_launch("clamp_backward");
}

void axpy(float* y, float alpha, const float* x, int64_t N, cudaStream_t s) {
  if (N == 0) return;
  axpy_kernel<<<ew_grid(N), 256, 0, s>>>(y, alpha, x, N);
  check_launch("axpy");
}

void round_activations(float* x, int64_t n, ComputeDType t, cudaStream_t s) {
  if (t == ComputeDType::F32 || n == 0) return;
  round_kernel<<<ew_grid(n), 256, 0, s>>>(x, n, round_code(t));
  check_launch("round_activations");
}

void f32_to_half(uint16_t* out, const float* x, int64_t n, DenseType type, cudaStream_t s) {
  if (n == 0) return;
  check(type != DenseType::F32, "cuda::f32_to_half", "the target must be BF16 or F16");
  to_half_kernel<<<ew_grid(n), 256, 0, s>>>(out, x, n, type);
  check_launch("f32_to_half");
}

}  // namespace qlora::cuda
