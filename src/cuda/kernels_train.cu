// The training kernels (cuda/kernels_train.h). Float operations whose CPU result is exact
// per element (rotary, element-wise products, the AdamW update) are written with explicit
// round-to-nearest intrinsics in the CPU's order, so that nvcc cannot contract them into
// fused multiply-adds the CPU does not do; AdamW uses __fmaf_rn exactly where torch's CPU
// kernels (and ours) fuse. Reductions use float64 where the CPU does.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/attention_score.cuh"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_error.h"
#include "cuda/kernel_common.cuh"
#include "cuda/kernels.h"
#include "cuda/kernels_train.h"

namespace qlora::cuda {

namespace {

#define GRID_STRIDE(i, n) QLORA_GRID_STRIDE(i, n)

// The scale is (offset + w); offset 0 leaves w as it is (no +0 added: -0 stays -0).
__device__ __forceinline__ float norm_scale(float offset, float w) { return offset != 0.0f ? __fadd_rn(offset, w) : w; }

__global__ void rmsnorm_backward_kernel(float* dinp, const float* dout, const float* inp, const float* weight,
                                        const float* rstd, int64_t C, float offset) {
  const int64_t t = blockIdx.x;
  const float* x = inp + t * C;
  const float* d = dout + t * C;
  float* dx = dinp + t * C;
  const float r = rstd[t];
  double dot = 0.0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dot += static_cast<double>(__fmul_rn(norm_scale(offset, weight[i]), d[i])) * x[i];
  dot = block_sum(dot);
  const float k = static_cast<float>(dot * r * r * r / static_cast<double>(C));
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
    dx[i] = __fadd_rn(dx[i], __fsub_rn(__fmul_rn(__fmul_rn(r, norm_scale(offset, weight[i])), d[i]), __fmul_rn(k, x[i])));
}

__global__ void rope_backward_kernel(float* dx, const float* cos, const float* sin, int64_t NH, int64_t HS,
                                     int64_t half, int64_t step, int64_t partner) {
  const int64_t t = blockIdx.y, h = blockIdx.x;
  const float* c = cos + t * half;
  const float* s = sin + t * half;
  float* g = dx + (t * NH + h) * HS;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    float* a = g + i * step;  // the pair (i, i + half), or (2i, 2i + 1) interleaved
    const float g0 = a[0], g1 = a[partner];
    a[0] = __fadd_rn(__fmul_rn(g0, c[i]), __fmul_rn(g1, s[i]));
    a[partner] = __fsub_rn(__fmul_rn(g1, c[i]), __fmul_rn(g0, s[i]));
  }
}

__global__ void swiglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                       int64_t N) {
  GRID_STRIDE(i, N) {
    const float g = gate[i];
    const float sg = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
    const float silu = __fmul_rn(g, sg);
    dgate[i] = __fadd_rn(dgate[i], __fmul_rn(__fmul_rn(dout[i], up[i]),
                                              __fmul_rn(sg, __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, sg))))));
    dup[i] = __fadd_rn(dup[i], __fmul_rn(dout[i], silu));
  }
}

// One block per (head, query): scores in shared memory, then the probabilities are
// written to att's row (zeros outside the window) and used for the output.
__global__ void attention_train_kernel(float* out, float* att, const float* q, const float* k, const float* v,
                                       int64_t T, int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS,
                                       const int32_t* key_start, AttentionOptions o) {
  extern __shared__ float smem[];
  const int64_t h = blockIdx.x, t = blockIdx.y, Tk = q_pos0 + T;
  const int64_t kh = h / (NH / NKV), qs = NH * HS, kvs = NKV * HS;
  const int64_t n = q_pos0 + t + 1, j0 = key_start ? key_start[t] : 0;
  float* qv = smem;
  float* sc = smem + HS;
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
  double sum = 0.0;
  for (int64_t j = j0 + threadIdx.x; j < n; j += blockDim.x) {
    const float e = expf(sc[j - j0] - mx);
    sc[j - j0] = e;
    sum += e;
  }
  const float total = static_cast<float>(block_sum(sum));
  float* arow = att + (h * T + t) * Tk;
  for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) {
    float p = 0.0f;
    if (j >= j0 && j < n) {
      p = sc[j - j0] / total;
      sc[j - j0] = p;
    }
    arow[j] = p;
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = j0; j < n; ++j) acc += sc[j - j0] * v[j * kvs + kh * HS + d];
    out[t * qs + h * HS + d] = acc;
  }
}

// Pass 1, one block per (head, query): datt row and dq row.
// With a softcap, the chain rule goes through cap * tanh(s / cap): each key's factor is
// scale * (1 - tanh^2) of the recomputed raw score (as ops_backward.h does; kept in `fac`).
__global__ void attention_backward_q_kernel(float* dq, float* datt, const float* dout, const float* q, const float* k,
                                            const float* v, const float* att, int64_t T, int64_t q_pos0, int64_t NH,
                                            int64_t NKV, int64_t HS, const int32_t* key_start, float scale,
                                            float softcap) {
  extern __shared__ float smem[];
  const int64_t h = blockIdx.x, t = blockIdx.y, Tk = q_pos0 + T;
  const int64_t kh = h / (NH / NKV), qs = NH * HS, kvs = NKV * HS;
  const int64_t n = q_pos0 + t + 1, j0 = key_start ? key_start[t] : 0;
  float* go = smem;       // dout row (HS)
  float* qv = smem + HS;  // q row (HS), softcap only
  float* fac = smem + 2 * HS;  // per visible key (n - j0), softcap only
  const float* p = att + (h * T + t) * Tk;
  float* da = datt + (h * T + t) * Tk;
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
    go[d] = dout[t * qs + h * HS + d];
    if (softcap > 0.0f) qv[d] = q[t * qs + h * HS + d];
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int64_t j = j0 + warp; j < n; j += nw) {
    const float* vr = v + j * kvs + kh * HS;
    float dot = 0.0f;
    for (int64_t d = lane; d < HS; d += 32) dot += go[d] * vr[d];
    dot = warp_sum(dot);
    if (lane == 0) da[j] = dot;
    if (softcap > 0.0f) {
      const float* kr = k + j * kvs + kh * HS;
      float raw = 0.0f;
      for (int64_t d = lane; d < HS; d += 32) raw += qv[d] * kr[d];
      raw = warp_sum(raw);
      if (lane == 0) {
        const float th = tanhf(__fdiv_rn(__fmul_rn(raw, scale), softcap));
        fac[j - j0] = __fmul_rn(scale, __fsub_rn(1.0f, __fmul_rn(th, th)));
      }
    }
  }
  __syncthreads();
  double s = 0.0;
  for (int64_t j = j0 + threadIdx.x; j < n; j += blockDim.x) s += static_cast<double>(p[j]) * da[j];
  const float sf = static_cast<float>(block_sum(s));
  for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) {
    const float f = softcap > 0.0f && j >= j0 && j < n ? fac[j - j0] : scale;
    da[j] = (j >= j0 && j < n) ? __fmul_rn(__fmul_rn(p[j], __fsub_rn(da[j], sf)), f) : 0.0f;
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = j0; j < n; ++j) acc += da[j] * k[j * kvs + kh * HS + d];
    dq[t * qs + h * HS + d] += acc;
  }
}

// Pass 2, one block per (key row j, kv head): dk_j, dv_j summed over the group's query
// heads and the queries that see key j.
__global__ void attention_backward_kv_kernel(float* dk, float* dv, const float* datt, const float* dout,
                                             const float* q, const float* att, int64_t T, int64_t q_pos0, int64_t NH,
                                             int64_t NKV, int64_t HS) {
  const int64_t j = blockIdx.x, kh = blockIdx.y, Tk = q_pos0 + T;
  const int64_t group = NH / NKV, qs = NH * HS, kvs = NKV * HS;
  const int64_t t0 = j > q_pos0 ? j - q_pos0 : 0;
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
    float gk = 0.0f, gv = 0.0f;
    for (int64_t h = kh * group; h < (kh + 1) * group; ++h)
      for (int64_t t = t0; t < T; ++t) {
        const float a = att[(h * T + t) * Tk + j];
        const float g = datt[(h * T + t) * Tk + j];
        gk += g * q[t * qs + h * HS + d];
        gv += a * dout[t * qs + h * HS + d];
      }
    dk[j * kvs + kh * HS + d] += gk;
    dv[j * kvs + kh * HS + d] += gv;
  }
}

__global__ void cross_entropy_kernel(float* row_loss, float* dlogits, const float* logits, const int32_t* targets,
                                     int64_t V, float inv_n, int ignore_index) {
  const int64_t t = blockIdx.x;
  const float* x = logits + t * V;
  float* g = dlogits + t * V;
  const int tgt = targets[t];
  if (tgt == ignore_index) {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) g[j] = 0.0f;
    if (threadIdx.x == 0) row_loss[t] = 0.0f;
    return;
  }
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, x[j]);
  mx = block_max(mx);
  const float xt = x[tgt];
  __syncthreads();  // every thread has read x[tgt] before any writes the row (g may alias x)
  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float e = expf(x[j] - mx);
    g[j] = e;
    sum += e;
  }
  sum = block_sum(sum);
  const float f = __fmul_rn(static_cast<float>(1.0 / sum), inv_n);
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    float v = __fmul_rn(g[j], f);
    if (j == tgt) v = __fsub_rn(v, inv_n);
    g[j] = v;
  }
  if (threadIdx.x == 0) row_loss[t] = static_cast<float>(log(sum) + static_cast<double>(mx) - static_cast<double>(xt));
}

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamWStepScalars s) {
  const float w1m1 = __fsub_rn(s.w1, 1.f);
  GRID_STRIDE(i, n) {
    float pi = p[i];
    if (s.do_decay) pi = __fmul_rn(pi, s.decay);
    const float gi = g[i];
    const float diff = __fsub_rn(gi, m[i]);
    const float mi = s.w1_small ? __fmaf_rn(s.w1, diff, m[i]) : __fmaf_rn(w1m1, diff, gi);
    const float vi = __fmaf_rn(__fmul_rn(s.one_minus_b2, gi), gi, __fmul_rn(v[i], s.b2));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));
    m[i] = mi;
    v[i] = vi;
  }
}

__global__ void sum_squares_kernel(double* out, const float* g, int64_t n) {
  double acc = 0.0;
  GRID_STRIDE(i, n) acc += static_cast<double>(g[i]) * g[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) atomicAdd(out, acc);
}

__global__ void scale_kernel(float* x, float c, int64_t n) {
  GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], c);
}

// LoraRng (lora/lora.cpp): xoshiro256** seeded through splitmix64.
struct DevRng {
  uint64_t s[4];
  __device__ explicit DevRng(uint64_t seed) {
    for (int i = 0; i < 4; ++i) {
      uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      s[i] = z ^ (z >> 31);
    }
  }
  __device__ static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  __device__ uint64_t next() {
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
};

// One thread per row: the generator is sequential along a row, as on the CPU.
__global__ void dropout_mask_kernel(float* mask, int64_t T, int64_t in, uint64_t call_seed, float p, float keep) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  DevRng row(call_seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(t + 1)));
  float* m = mask + t * in;
  int64_t i = 0;
  for (; i + 2 <= in; i += 2) {
    const uint64_t r = row.next();
    const float u0 = static_cast<float>((r >> 8) & 0xFFFFFFu) * 0x1.0p-24f;
    const float u1 = static_cast<float>(r >> 40) * 0x1.0p-24f;
    m[i] = u0 < p ? 0.f : keep;
    m[i + 1] = u1 < p ? 0.f : keep;
  }
  if (i < in) m[i] = static_cast<float>(row.next() >> 40) * 0x1.0p-24f < p ? 0.f : keep;
}

__global__ void multiply_kernel(float* out, const float* a, const float* b, int64_t n) {
  GRID_STRIDE(i, n) out[i] = __fmul_rn(a[i], b[i]);
}

__global__ void multiply_add_kernel(float* y, const float* a, const float* b, int64_t n) {
  GRID_STRIDE(i, n) y[i] = __fadd_rn(y[i], __fmul_rn(a[i], b[i]));
}

__global__ void gather_rows_kernel(float* out, const float* x, const int32_t* idx, int64_t C) {
  const int64_t i = blockIdx.x;
  const float* src = x + static_cast<int64_t>(idx[i]) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[i * C + c] = src[c];
}

__global__ void scatter_rows_kernel(float* out, const float* x, const int32_t* idx, int64_t C) {
  const int64_t i = blockIdx.x;
  float* dst = out + static_cast<int64_t>(idx[i]) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dst[c] = x[i * C + c];
}

__global__ void half_to_f32_kernel(float* out, const uint16_t* x, int64_t n, bool bf16) {
  GRID_STRIDE(i, n) out[i] = bf16 ? __bfloat162float(__ushort_as_bfloat16(x[i])) : __half2float(__ushort_as_half(x[i]));
}

// Dynamic shared memory for `Kernel` (its static shared memory counted), raised once to the
// device's opt-in limit when needed; a clear Error when even that is too little.
template <auto Kernel>
void allow_shared(size_t bytes, const char* what) {
  static const DynamicSmemLimits limits = dynamic_smem_limits(reinterpret_cast<const void*>(Kernel));
  if (bytes <= limits.without_optin) return;
  check(bytes <= limits.with_optin, what,
        "needs " + std::to_string(bytes) + " bytes of shared memory per block; this GPU allows " +
            std::to_string(limits.with_optin) + " (a shorter sequence fits)");
  static const bool raised = [] {
    QLORA_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(limits.with_optin)));
    return true;
  }();
  (void)raised;
}

}  // namespace

void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int64_t T, int64_t C, cudaStream_t s) {
  if (T == 0) return;
  rmsnorm_backward_kernel<<<static_cast<unsigned>(T), 256, 0, s>>>(dinp, dout, inp, weight, rstd, C, 0.0f);
  check_launch("rmsnorm_backward");
}

void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int64_t T, int64_t C, float weight_offset, cudaStream_t s) {
  if (T == 0) return;
  rmsnorm_backward_kernel<<<static_cast<unsigned>(T), 256, 0, s>>>(dinp, dout, inp, weight, rstd, C, weight_offset);
  check_launch("rmsnorm_backward");
}

void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, cudaStream_t s) {
  rope_backward(dx, cos, sin, T, NH, HS, 0, s);
}

void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                   cudaStream_t s) {
  rope_backward(dx, cos, sin, T, NH, HS, rot, false, s);
}

void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                   bool interleaved, cudaStream_t s) {
  if (T == 0) return;
  check(rot >= 0 && rot <= HS && rot % 2 == 0, "cuda::rope_backward", "rot must be even and at most the head size");
  const int64_t half = (rot > 0 ? rot : HS) / 2;
  const int threads = static_cast<int>(std::min<int64_t>(128, std::max<int64_t>(32, half)));
  for (int64_t t0 = 0; t0 < T; t0 += kMaxGridY) {  // (tokens on the grid's y dimension)
    const int64_t nt = std::min(kMaxGridY, T - t0);
    rope_backward_kernel<<<dim3(static_cast<unsigned>(NH), static_cast<unsigned>(nt)), threads, 0, s>>>(
        dx + t0 * NH * HS, cos + t0 * half, sin + t0 * half, NH, HS, half, interleaved ? 2 : 1,
        interleaved ? 1 : half);
    check_launch("rope_backward");
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N,
                     cudaStream_t s) {
  if (N == 0) return;
  swiglu_backward_kernel<<<ew_grid(N), 256, 0, s>>>(dgate, dup, dout, gate, up, N);
  check_launch("swiglu_backward");
}

void attention_forward_train(float* out, float* att, const float* q, const float* k, const float* v, int64_t T,
                             int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start,
                             cudaStream_t s) {
  attention_forward_train(out, att, q, k, v, T, q_pos0, NH, NKV, HS, key_start, AttentionOptions{}, s);
}

void attention_forward_train(float* out, float* att, const float* q, const float* k, const float* v, int64_t T,
                             int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start,
                             const AttentionOptions& opts, cudaStream_t s) {
  if (T == 0) return;
  check(NKV > 0 && NH % NKV == 0, "cuda::attention_forward_train", "NH must be a multiple of NKV");
  check(T <= 65535, "cuda::attention_forward_train", "more than 65535 tokens in one sequence");
  const size_t smem = static_cast<size_t>(HS + q_pos0 + T) * sizeof(float);
  allow_shared<attention_train_kernel>(smem, "cuda::attention_forward_train");
  attention_train_kernel<<<dim3(static_cast<unsigned>(NH), static_cast<unsigned>(T)), 128, smem, s>>>(
      out, att, q, k, v, T, q_pos0, NH, NKV, HS, key_start, resolved(opts, HS));
  check_launch("attention_forward_train");
}

void attention_backward(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, int64_t T, int64_t q_pos0, int64_t NH,
                        int64_t NKV, int64_t HS, const int32_t* key_start, cudaStream_t s) {
  attention_backward(dq, dk, dv, datt, dout, q, k, v, att, T, q_pos0, NH, NKV, HS, key_start, 0.0f, 0.0f, s);
}

void attention_backward(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, int64_t T, int64_t q_pos0, int64_t NH,
                        int64_t NKV, int64_t HS, const int32_t* key_start, float scale, float softcap,
                        cudaStream_t s) {
  if (T == 0) return;
  check(NKV > 0 && NH % NKV == 0, "cuda::attention_backward", "NH must be a multiple of NKV");
  if (!(scale > 0.0f)) scale = 1.0f / std::sqrt(static_cast<float>(HS));
  // dout and q rows, and with a softcap one factor per visible key (at most q_pos0 + T).
  const size_t smem = static_cast<size_t>(2 * HS + (softcap > 0.0f ? q_pos0 + T : 0)) * sizeof(float);
  allow_shared<attention_backward_q_kernel>(smem, "cuda::attention_backward");
  attention_backward_q_kernel<<<dim3(static_cast<unsigned>(NH), static_cast<unsigned>(T)), 128, smem, s>>>(
      dq, datt, dout, q, k, v, att, T, q_pos0, NH, NKV, HS, key_start, scale, softcap);
  check_launch("attention_backward (queries)");
  const int threads = static_cast<int>(std::min<int64_t>(256, ((HS + 31) / 32) * 32));
  attention_backward_kv_kernel<<<dim3(static_cast<unsigned>(q_pos0 + T), static_cast<unsigned>(NKV)), threads, 0, s>>>(
      dk, dv, datt, dout, q, att, T, q_pos0, NH, NKV, HS);
  check_launch("attention_backward (keys)");
}

void cross_entropy_forward_backward(float* row_loss, float* dlogits, const float* logits, const int32_t* targets,
                                    int64_t T, int64_t V, float inv_valid, int ignore_index, cudaStream_t s) {
  if (T == 0) return;
  cross_entropy_kernel<<<static_cast<unsigned>(T), 512, 0, s>>>(row_loss, dlogits, logits, targets, V, inv_valid,
                                                                ignore_index);
  check_launch("cross_entropy_forward_backward");
}

void adamw_torch(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStepScalars& sc,
                 cudaStream_t s) {
  if (n == 0) return;
  adamw_kernel<<<ew_grid(n), 256, 0, s>>>(p, g, m, v, n, sc);
  check_launch("adamw_torch");
}

void sum_squares(double* out, const float* g, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  sum_squares_kernel<<<std::min<unsigned>(ew_grid(n), 1024), 256, 0, s>>>(out, g, n);
  check_launch("sum_squares");
}

void lora_dropout_mask(float* mask, int64_t T, int64_t in, uint64_t call_seed, float p, cudaStream_t s) {
  if (T == 0) return;
  const float keep = 1.f / (1.f - p);
  dropout_mask_kernel<<<static_cast<unsigned>((T + 63) / 64), 64, 0, s>>>(mask, T, in, call_seed, p, keep);
  check_launch("lora_dropout_mask");
}

void multiply(float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  multiply_kernel<<<ew_grid(n), 256, 0, s>>>(out, a, b, n);
  check_launch("multiply");
}

void multiply_add(float* y, const float* a, const float* b, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  multiply_add_kernel<<<ew_grid(n), 256, 0, s>>>(y, a, b, n);
  check_launch("multiply_add");
}

void gather_rows(float* out, const float* x, const int32_t* idx, int64_t M, int64_t C, cudaStream_t s) {
  if (M == 0) return;
  gather_rows_kernel<<<static_cast<unsigned>(M), 256, 0, s>>>(out, x, idx, C);
  check_launch("gather_rows");
}

void scatter_rows(float* out, const float* x, const int32_t* idx, int64_t M, int64_t C, cudaStream_t s) {
  if (M == 0) return;
  scatter_rows_kernel<<<static_cast<unsigned>(M), 256, 0, s>>>(out, x, idx, C);
  check_launch("scatter_rows");
}

void half_to_f32(float* out, const uint16_t* x, int64_t n, bool bf16, cudaStream_t s) {
  if (n == 0) return;
  half_to_f32_kernel<<<ew_grid(n), 256, 0, s>>>(out, x, n, bf16);
  check_launch("half_to_f32");
}

void scale(float* x, float c, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<ew_grid(n), 256, 0, s>>>(x, c, n);
  check_launch("scale");
}

}  // namespace qlora::cuda
