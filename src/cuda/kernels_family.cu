// The family kernels (cuda/kernels_family.h). As in kernels.cu, float operations whose CPU
// result is a fixed sequence (norms' element-wise part, scaling, slices) are written with
// explicit round-to-nearest intrinsics in the CPU's order, so nvcc cannot contract them into
// fused multiply-adds the CPU does not do; reductions use float64 where the CPU does (the
// order of a float64 sum differs, which reaches the float32 result only rarely, in its last
// bit). tanh, erf and exp are CUDA's (within 2 ulp of glibc's).
#include <cmath>
#include <string>

#include "base/error.h"
#include "base/float_formats.h"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_error.h"
#include "cuda/kernel_common.cuh"
#include "cuda/kernels_family.h"

namespace qlora::cuda {

namespace {

constexpr float kGeluBeta = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluKappa = 0.044715f;

// ---- norms -----------------------------------------------------------------------------

// One block per row: the mean from a float64 sum, then the variance of (x - mean) in float64,
// as layernorm_forward on the CPU.
__global__ void layernorm_kernel(float* out, float* stats, const float* x, const float* weight, const float* bias,
                                 int64_t C, float eps, int rnd, float offset) {
  const int64_t t = blockIdx.x;
  const float* xr = x + t * C;
  float* o = out + t * C;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) sum += xr[i];
  sum = block_sum(sum);
  const float mean = static_cast<float>(sum / static_cast<double>(C));
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    const float c = __fsub_rn(xr[i], mean);
    ss += static_cast<double>(c) * c;
  }
  ss = block_sum(ss);
  const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(static_cast<float>(ss / static_cast<double>(C)), eps)));
  if (stats && threadIdx.x == 0) {
    stats[2 * t] = mean;
    stats[2 * t + 1] = r;
  }
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    const float w = offset == 0.0f ? weight[i] : round_to(__fadd_rn(offset, weight[i]), rnd);  // (LayerNorm1P)
    o[i] = round_to(__fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(xr[i], mean), r), w), bias[i]), rnd);
  }
}

__global__ void layernorm_backward_kernel(float* dinp, const float* dout, const float* x, const float* weight,
                                          const float* stats, int64_t C, float offset) {
  const int64_t t = blockIdx.x;
  const float* xr = x + t * C;
  const float* d = dout + t * C;
  float* dx = dinp + t * C;
  const float mean = stats[2 * t], r = stats[2 * t + 1];
  double s1 = 0.0, s2 = 0.0;  // sums of w dout and of w dout xhat
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    const double wd = static_cast<double>(__fadd_rn(offset, weight[i])) * d[i];
    s1 += wd;
    s2 += wd * __fmul_rn(__fsub_rn(xr[i], mean), r);
  }
  s1 = block_sum(s1);
  s2 = block_sum(s2);
  const float m1 = static_cast<float>(s1 / static_cast<double>(C));
  const float m2 = static_cast<float>(s2 / static_cast<double>(C));
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    const float xhat_m2 = __fmul_rn(__fmul_rn(__fsub_rn(xr[i], mean), r), m2);
    dx[i] = __fadd_rn(dx[i],
                      __fmul_rn(r, __fsub_rn(__fsub_rn(__fmul_rn(__fadd_rn(offset, weight[i]), d[i]), m1), xhat_m2)));
  }
}

// ---- activations -----------------------------------------------------------------------

// gelu_tanh(g) and its derivative, in the CPU's order of operations.
__device__ __forceinline__ float gelu_tanh_of(float g, float* th_out) {
  const float g3 = __fmul_rn(__fmul_rn(__fmul_rn(kGeluKappa, g), g), g);
  const float th = tanhf(__fmul_rn(kGeluBeta, __fadd_rn(g, g3)));
  *th_out = th;
  return __fmul_rn(__fmul_rn(0.5f, g), __fadd_rn(1.0f, th));
}
__device__ __forceinline__ float gelu_tanh_grad(float g, float th) {
  // 0.5 (1 + th) + 0.5 g (1 - th^2) beta (1 + 3 kappa g^2)
  const float a = __fmul_rn(0.5f, __fadd_rn(1.0f, th));
  const float b = __fmul_rn(__fmul_rn(__fmul_rn(0.5f, g), __fsub_rn(1.0f, __fmul_rn(th, th))), kGeluBeta);
  const float c = __fadd_rn(1.0f, __fmul_rn(__fmul_rn(__fmul_rn(3.0f, kGeluKappa), g), g));
  return __fadd_rn(a, __fmul_rn(b, c));
}

__global__ void geglu_kernel(float* out, const float* gate, const float* up, int64_t N) {
  QLORA_GRID_STRIDE(i, N) {
    float th;
    out[i] = __fmul_rn(gelu_tanh_of(gate[i], &th), up[i]);
  }
}

__global__ void geglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                      int64_t N) {
  QLORA_GRID_STRIDE(i, N) {
    const float g = gate[i];
    float th;
    const float gelu = gelu_tanh_of(g, &th);
    dgate[i] = __fadd_rn(dgate[i], __fmul_rn(__fmul_rn(dout[i], up[i]), gelu_tanh_grad(g, th)));
    dup[i] = __fadd_rn(dup[i], __fmul_rn(dout[i], gelu));
  }
}

__global__ void activation_kernel(float* out, const float* x, int64_t N, ActKind act) {
  QLORA_GRID_STRIDE(i, N) {
    const float g = x[i];
    float v;
    switch (act) {
      case ActKind::Gelu:  // x * 0.5 * (1 + erf(x / sqrt 2))
        v = __fmul_rn(__fmul_rn(g, 0.5f), __fadd_rn(1.0f, erff(__fmul_rn(g, 0.7071067811865476f))));
        break;
      case ActKind::GeluTanh: {
        float th;
        v = gelu_tanh_of(g, &th);
        break;
      }
      case ActKind::Relu2: v = g > 0.0f ? __fmul_rn(g, g) : 0.0f; break;
      default: v = g > 0.0f ? g : 0.0f; break;
    }
    out[i] = v;
  }
}

__global__ void activation_backward_kernel(float* dx, const float* dout, const float* x, int64_t N, ActKind act) {
  QLORA_GRID_STRIDE(i, N) {
    const float g = x[i];
    float dg;
    switch (act) {
      case ActKind::Gelu: {  // 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
        const float a = __fmul_rn(0.5f, __fadd_rn(1.0f, erff(__fmul_rn(g, 0.7071067811865476f))));
        const float b = __fmul_rn(__fmul_rn(g, expf(__fmul_rn(__fmul_rn(-0.5f, g), g))), 0.3989422804014327f);
        dg = __fadd_rn(a, b);
        break;
      }
      case ActKind::GeluTanh: {
        float th;
        gelu_tanh_of(g, &th);
        dg = gelu_tanh_grad(g, th);
        break;
      }
      case ActKind::Relu2: dg = g > 0.0f ? __fmul_rn(2.0f, g) : 0.0f; break;
      default: dg = g > 0.0f ? 1.0f : 0.0f; break;
    }
    dx[i] = __fadd_rn(dx[i], __fmul_rn(dout[i], dg));
  }
}

// ---- scaling and slices ----------------------------------------------------------------

__global__ void softcap_kernel(float* x, int64_t n, float cap, int rnd) {
  QLORA_GRID_STRIDE(i, n) {
    x[i] = round_to(__fmul_rn(round_to(tanhf(round_to(__fdiv_rn(x[i], cap), rnd)), rnd), cap), rnd);
  }
}

__global__ void softcap_backward_kernel(float* d, const float* capped, int64_t n, float cap) {
  QLORA_GRID_STRIDE(i, n) {
    const float t = __fdiv_rn(capped[i], cap);
    d[i] = __fmul_rn(d[i], __fsub_rn(1.0f, __fmul_rn(t, t)));
  }
}

__global__ void scale_round_kernel(float* x, int64_t n, float scale, int rnd) {
  QLORA_GRID_STRIDE(i, n) { x[i] = round_to(__fmul_rn(x[i], scale), rnd); }
}

// Element e of the output (T, groups*width): row t = e / out_w, group g, column c.
__global__ void slice_kernel(float* out, const float* in, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                             int64_t groups, int64_t stride) {
  const int64_t out_w = groups * width;
  QLORA_GRID_STRIDE(e, T * out_w) {
    const int64_t t = e / out_w, j = e - t * out_w, g = j / width, c = j - g * width;
    out[e] = in[t * in_width + g * stride + offset + c];
  }
}

__global__ void slice_backward_kernel(float* din, const float* dout, int64_t T, int64_t in_width, int64_t offset,
                                      int64_t width, int64_t groups, int64_t stride) {
  const int64_t out_w = groups * width;
  QLORA_GRID_STRIDE(e, T * out_w) {
    const int64_t t = e / out_w, j = e - t * out_w, g = j / width, c = j - g * width;
    float* d = din + t * in_width + g * stride + offset + c;
    *d = __fadd_rn(*d, dout[e]);
  }
}

unsigned rows_grid(int64_t T, const char* what) {
  check(T <= 0x7fffffff, what, "more than 2^31 rows in one call");
  return static_cast<unsigned>(T);
}

}  // namespace

void layernorm_forward(float* out, float* stats, const float* x, const float* weight, const float* bias, int64_t T,
                       int64_t C, float eps, ComputeDType dtype, cudaStream_t s, float weight_offset) {
  if (T == 0) return;
  layernorm_kernel<<<rows_grid(T, "cuda::layernorm_forward"), 256, 0, s>>>(out, stats, x, weight, bias, C, eps,
                                                                           round_code(dtype), weight_offset);
  check_launch("layernorm_forward");
}

void layernorm_backward(float* dinp, const float* dout, const float* x, const float* weight, const float* stats,
                        int64_t T, int64_t C, cudaStream_t s, float weight_offset) {
  if (T == 0) return;
  layernorm_backward_kernel<<<rows_grid(T, "cuda::layernorm_backward"), 256, 0, s>>>(dinp, dout, x, weight, stats, C,
                                                                                     weight_offset);
  check_launch("layernorm_backward");
}

void geglu_forward(float* out, const float* gate, const float* up, int64_t N, cudaStream_t s) {
  if (N == 0) return;
  geglu_kernel<<<ew_grid(N), 256, 0, s>>>(out, gate, up, N);
  check_launch("geglu_forward");
}

void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N,
                    cudaStream_t s) {
  if (N == 0) return;
  geglu_backward_kernel<<<ew_grid(N), 256, 0, s>>>(dgate, dup, dout, gate, up, N);
  check_launch("geglu_backward");
}

void activation_forward(float* out, const float* x, int64_t N, ActKind act, cudaStream_t s) {
  if (N == 0) return;
  activation_kernel<<<ew_grid(N), 256, 0, s>>>(out, x, N, act);
  check_launch("activation_forward");
}

void activation_backward(float* dx, const float* dout, const float* x, int64_t N, ActKind act, cudaStream_t s) {
  if (N == 0) return;
  activation_backward_kernel<<<ew_grid(N), 256, 0, s>>>(dx, dout, x, N, act);
  check_launch("activation_backward");
}

void softcap_forward(float* x, int64_t n, float cap, ComputeDType dtype, cudaStream_t s) {
  if (n == 0) return;
  check(cap > 0.0f, "cuda::softcap_forward", "the cap must be positive");
  softcap_kernel<<<ew_grid(n), 256, 0, s>>>(x, n, cap, round_code(dtype));
  check_launch("softcap_forward");
}

void softcap_backward(float* d, const float* capped, int64_t n, float cap, cudaStream_t s) {
  if (n == 0) return;
  check(cap > 0.0f, "cuda::softcap_backward", "the cap must be positive");
  softcap_backward_kernel<<<ew_grid(n), 256, 0, s>>>(d, capped, n, cap);
  check_launch("softcap_backward");
}

void embed_scale(float* x, int64_t n, int64_t hidden, ComputeDType dtype, cudaStream_t s) {
  if (n == 0) return;
  // The CPU's scale: sqrt in float64, to float32, then rounded to the compute dtype.
  float scale = static_cast<float>(std::sqrt(static_cast<double>(hidden)));
  if (dtype == ComputeDType::BF16) scale = bf16_to_f32(f32_to_bf16(scale));
  if (dtype == ComputeDType::F16) scale = fp16_to_f32(f32_to_fp16(scale));
  scale_round_kernel<<<ew_grid(n), 256, 0, s>>>(x, n, scale, round_code(dtype));
  check_launch("embed_scale");
}

void slice_forward(float* out, const float* in, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                   int64_t groups, int64_t stride, cudaStream_t s) {
  if (T * groups * width == 0) return;
  check(offset >= 0 && (groups == 1 || offset + width <= stride) && (groups - 1) * stride + offset + width <= in_width,
        "cuda::slice_forward", "the slice reaches past the input row");
  slice_kernel<<<ew_grid(T * groups * width), 256, 0, s>>>(out, in, T, in_width, offset, width, groups, stride);
  check_launch("slice_forward");
}

void slice_backward(float* din, const float* dout, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                    int64_t groups, int64_t stride, cudaStream_t s) {
  if (T * groups * width == 0) return;
  check(offset >= 0 && (groups == 1 || offset + width <= stride) && (groups - 1) * stride + offset + width <= in_width,
        "cuda::slice_backward", "the slice reaches past the input row");
  slice_backward_kernel<<<ew_grid(T * groups * width), 256, 0, s>>>(din, dout, T, in_width, offset, width, groups,
                                                                    stride);
  check_launch("slice_backward");
}

}  // namespace qlora::cuda
