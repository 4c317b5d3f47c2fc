#pragma once
// The gated DeltaNet kernels (model/delta_net.h), written once and compiled twice: by
// delta_net.cpp for the baseline instruction set (the scalar reference) and by
// delta_net_avx512.cpp with AVX-512 enabled, where the compiler widens the same loops to 16
// floats. Internal linkage: each object keeps its own copies (an AVX-512 copy must never
// serve the baseline's callers). The two differ only in how the compiler contracts and
// orders float operations (tests/model/test_delta_net.cpp compares them).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "model/delta_net.h"
#include "model/linear_kernels.h"

namespace qlora::delta_net_detail {

namespace {

using kernels::round_to_dtype;

inline float sigmoidf(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float siluf(float x) { return x * sigmoidf(x); }
// d silu(x) / dx
inline float silu_grad(float x) {
  const float s = sigmoidf(x);
  return s * (1.0f + x * (1.0f - s));
}
// torch's softplus (beta 1, threshold 20): x beyond the threshold is returned as it is.
inline float softplusf(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// The per-token quantities of one value head's rule: its normalized q and k, beta and the
// decay exp(g), for T tokens.
struct HeadInputs {
  std::vector<float> q, k, beta, alpha, g_grad;  // (T, dk) (T, dk) (T) (T) (T): d g / d a
  float q_rnorm_scale = 1.0f;
};

void l2_normalize(float* dst, const float* src, int64_t n, float scale) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += src[i] * src[i];
  const float r = 1.0f / std::sqrt(ss + 1e-6f);
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * r * scale;
}

void head_inputs(const DeltaRuleShape& sh, int64_t h, const float* qkv, const float* b, const float* a,
                 const float* A_log, const float* dt_bias, int64_t T, ComputeDType dtype, HeadInputs& in) {
  const int64_t W = sh.qkv_width(), kh = h / (sh.Hv / sh.Hk), KD = sh.Hk * sh.dk;
  const float qscale = 1.0f / std::sqrt(static_cast<float>(sh.dk));
  in.q.resize(static_cast<size_t>(T * sh.dk));
  in.k.resize(static_cast<size_t>(T * sh.dk));
  in.beta.resize(static_cast<size_t>(T));
  in.alpha.resize(static_cast<size_t>(T));
  in.g_grad.resize(static_cast<size_t>(T));
  const float A = -std::exp(A_log[h]);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = qkv + t * W;
    l2_normalize(in.q.data() + t * sh.dk, row + kh * sh.dk, sh.dk, qscale);
    l2_normalize(in.k.data() + t * sh.dk, row + KD + kh * sh.dk, sh.dk, 1.0f);
    in.beta[static_cast<size_t>(t)] = round_to_dtype(sigmoidf(b[t * sh.Hv + h]), dtype);
    const float x = a[t * sh.Hv + h] + dt_bias[h];
    in.alpha[static_cast<size_t>(t)] = std::exp(A * softplusf(x));
    in.g_grad[static_cast<size_t>(t)] = x > 20.0f ? A : A * sigmoidf(x);
  }
}

// One step of the rule on state S (dk, dv): S = alpha S + k delta^T with delta = (v - alpha
// S^T k) beta; o = S^T q of the new state (o may be null). delta (dv) and u (dv) are
// written: u = alpha S_prev^T k.
inline void rule_step(float* S, const float* q, const float* k, const float* v, float beta, float alpha, int64_t dk,
                      int64_t dv, float* u, float* delta, float* o) {
  std::fill(u, u + dv, 0.0f);
  for (int64_t i = 0; i < dk; ++i) {
    const float ki = k[i];
    const float* Si = S + i * dv;
#pragma omp simd
    for (int64_t j = 0; j < dv; ++j) u[j] += ki * Si[j];
  }
#pragma omp simd
  for (int64_t j = 0; j < dv; ++j) {
    u[j] *= alpha;
    delta[j] = (v[j] - u[j]) * beta;
  }
  if (o) std::fill(o, o + dv, 0.0f);
  for (int64_t i = 0; i < dk; ++i) {
    const float ki = k[i], qi = q ? q[i] : 0.0f;
    float* Si = S + i * dv;
#pragma omp simd
    for (int64_t j = 0; j < dv; ++j) Si[j] = alpha * Si[j] + ki * delta[j];
    if (o) {
#pragma omp simd
      for (int64_t j = 0; j < dv; ++j) o[j] += qi * Si[j];
    }
  }
}


// The taps transposed, (K, C): tap j of every channel contiguous (the loops run over channels).
std::vector<float> taps_by_offset(const float* w, int64_t C, int64_t K) {
  std::vector<float> wt(static_cast<size_t>(K * C));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) wt[static_cast<size_t>(j * C + c)] = w[c * K + j];
  return wt;
}

// pre (C) = the conv at token t before its activation (unrounded): the bias (or zeros), then
// taps in order j = 0..K-1, reading x before t = 0 from prev ((K - 1, C), oldest first) or zeros.
inline void conv_row(float* pre, const float* x, const float* prev, int64_t t, int64_t C, const float* wt,
                     const float* bias, int64_t K) {
  if (bias)
    std::copy(bias, bias + C, pre);
  else
    std::fill(pre, pre + C, 0.0f);
  for (int64_t j = 0; j < K; ++j) {
    const int64_t s = t + j - (K - 1);
    const float* src = s >= 0 ? x + s * C : prev ? prev + (K - 1 + s) * C : nullptr;
    if (!src) continue;
    const float* wj = wt + j * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) pre[c] += wj[c] * src[c];
  }
}

void conv_forward(float* out, const float* x, int64_t T, int64_t C, const float* w, const float* bias, int64_t K,
                  float* state, bool update_state, bool silu, ComputeDType dtype) {
  const std::vector<float> wt = taps_by_offset(w, C, K);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* o = out + t * C;
    conv_row(o, x, state, t, C, wt.data(), bias, K);
    if (silu)
      for (int64_t c = 0; c < C; ++c) o[c] = round_to_dtype(siluf(round_to_dtype(o[c], dtype)), dtype);
    else
      for (int64_t c = 0; c < C; ++c) o[c] = round_to_dtype(o[c], dtype);
  }
  if (!update_state || K <= 1) return;
  // The last K - 1 inputs of prev | x, oldest first.
  std::vector<float> tail(static_cast<size_t>((K - 1) * C));
  for (int64_t r = 0; r < K - 1; ++r) {
    const int64_t s = T - (K - 1) + r;  // index into x (negative: into the old state)
    const float* src = s >= 0 ? x + s * C : state + (K - 1 + s) * C;
    std::memcpy(tail.data() + r * C, src, static_cast<size_t>(C) * sizeof(float));
  }
  std::memcpy(state, tail.data(), tail.size() * sizeof(float));
}

void conv_backward(float* dx, const float* dout, const float* x, int64_t T, int64_t C, const float* w,
                   const float* bias, int64_t K, bool silu, ComputeDType dtype) {
  const std::vector<float> wt = taps_by_offset(w, C, K);
  std::vector<float> dy_silu;  // d loss / d pre-activation (without the SiLU: dout itself)
  if (silu) {
    dy_silu.resize(static_cast<size_t>(T * C));
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      float* d = dy_silu.data() + t * C;
      conv_row(d, x, nullptr, t, C, wt.data(), bias, K);
      for (int64_t c = 0; c < C; ++c) d[c] = dout[t * C + c] * silu_grad(round_to_dtype(d[c], dtype));
    }
  }
  const float* dy = silu ? dy_silu.data() : dout;
  // pre[t] reads x[t + j - (K - 1)] with tap j: x[s] feeds pre[s - j + K - 1].
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < T; ++s) {
    float* o = dx + s * C;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t t = s - j + K - 1;
      if (t >= T) continue;
      const float* wj = wt.data() + j * C;
      const float* d = dy + t * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] += wj[c] * d[c];
    }
  }
}

void rule_forward(const DeltaRuleShape& sh, float* out, const float* qkv, const float* b, const float* a,
                        const float* A_log, const float* dt_bias, int64_t T, float* state, ComputeDType dtype) {
  const int64_t W = sh.qkv_width(), VD = sh.Hv * sh.dv, voff = 2 * sh.Hk * sh.dk;
#pragma omp parallel
  {
    HeadInputs in;
    std::vector<float> S, u(static_cast<size_t>(sh.dv)), delta(static_cast<size_t>(sh.dv));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < sh.Hv; ++h) {
      head_inputs(sh, h, qkv, b, a, A_log, dt_bias, T, dtype, in);
      float* Sh = nullptr;
      if (state) {
        Sh = state + h * sh.dk * sh.dv;
      } else {
        S.assign(static_cast<size_t>(sh.dk * sh.dv), 0.0f);
        Sh = S.data();
      }
      for (int64_t t = 0; t < T; ++t) {
        float* o = out + t * VD + h * sh.dv;
        rule_step(Sh, in.q.data() + t * sh.dk, in.k.data() + t * sh.dk, qkv + t * W + voff + h * sh.dv,
                  in.beta[static_cast<size_t>(t)], in.alpha[static_cast<size_t>(t)], sh.dk, sh.dv, u.data(),
                  delta.data(), o);
        for (int64_t j = 0; j < sh.dv; ++j) o[j] = round_to_dtype(o[j], dtype);
      }
    }
  }
}

void rule_backward(const DeltaRuleShape& sh, float* dqkv, float* db, float* da, const float* dout,
                         const float* qkv, const float* b, const float* a, const float* A_log, const float* dt_bias,
                         int64_t T, ComputeDType dtype) {
  const int64_t W = sh.qkv_width(), VD = sh.Hv * sh.dv, KD = sh.Hk * sh.dk, voff = 2 * KD;
  const int64_t dk = sh.dk, dv = sh.dv, SS = dk * dv, group = sh.Hv / sh.Hk;
  const int64_t C = kDeltaRuleChunk, n_chunks = (T + C - 1) / C;
  const float qscale = 1.0f / std::sqrt(static_cast<float>(dk));
  // Parallel over key heads: each writes its own q and k columns and its value heads' v columns.
#pragma omp parallel
  {
    HeadInputs in;
    std::vector<float> checkpoints, states, S(static_cast<size_t>(SS)), dS(static_cast<size_t>(SS)),
        dal(static_cast<size_t>(dv)), u(static_cast<size_t>(dv)), delta(static_cast<size_t>(dv)),
        ddelta(static_cast<size_t>(dv)), du(static_cast<size_t>(dv)), dqn, dkn;
#pragma omp for schedule(static)
    for (int64_t kh = 0; kh < sh.Hk; ++kh) {
      dqn.assign(static_cast<size_t>(T * dk), 0.0f);  // d loss / d (normalized, scaled) q, k of this key head
      dkn.assign(static_cast<size_t>(T * dk), 0.0f);
      for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
        head_inputs(sh, h, qkv, b, a, A_log, dt_bias, T, dtype, in);
        // Forward from zeros, keeping the state before each chunk.
        checkpoints.assign(static_cast<size_t>(n_chunks * SS), 0.0f);
        std::fill(S.begin(), S.end(), 0.0f);
        for (int64_t t = 0; t < T; ++t) {
          if (t % C == 0) std::copy(S.begin(), S.end(), checkpoints.begin() + (t / C) * SS);
          rule_step(S.data(), nullptr, in.k.data() + t * dk, qkv + t * W + voff + h * dv, in.beta[static_cast<size_t>(t)],
                    in.alpha[static_cast<size_t>(t)], dk, dv, u.data(), delta.data(), nullptr);
        }
        std::fill(dS.begin(), dS.end(), 0.0f);  // d loss / d S_t, carried backwards
        states.resize(static_cast<size_t>((C + 1) * SS));
        for (int64_t ch = n_chunks - 1; ch >= 0; --ch) {
          const int64_t t0 = ch * C, t1 = std::min(T, t0 + C);
          // states[i] = the state before token t0 + i (states[i + 1]: after it).
          std::copy(checkpoints.begin() + ch * SS, checkpoints.begin() + (ch + 1) * SS, states.begin());
          for (int64_t t = t0; t < t1; ++t) {
            float* next = states.data() + (t - t0 + 1) * SS;
            std::copy(next - SS, next, next);
            rule_step(next, nullptr, in.k.data() + t * dk, qkv + t * W + voff + h * dv, in.beta[static_cast<size_t>(t)],
                      in.alpha[static_cast<size_t>(t)], dk, dv, u.data(), delta.data(), nullptr);
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            const float* Sprev = states.data() + (t - t0) * SS;
            const float* St = Sprev + SS;
            const float* q = in.q.data() + t * dk;
            const float* k = in.k.data() + t * dk;
            const float* v = qkv + t * W + voff + h * dv;
            const float beta = in.beta[static_cast<size_t>(t)], alpha = in.alpha[static_cast<size_t>(t)];
            const float* dot = dout + t * VD + h * dv;
            // u = alpha S_prev^T k, delta = (v - u) beta (as rule_step computed them).
            std::fill(u.begin(), u.end(), 0.0f);
            for (int64_t i = 0; i < dk; ++i) {
              const float ki = k[i];
              const float* Pi = Sprev + i * dv;
#pragma omp simd
              for (int64_t j = 0; j < dv; ++j) u[j] += ki * Pi[j];
            }
            for (int64_t j = 0; j < dv; ++j) {
              u[j] *= alpha;
              delta[j] = (v[j] - u[j]) * beta;
            }
            // o = S_t^T q: dq = S_t do, dS_t += q do^T; then S_t = S' + k delta^T: dk += dS delta,
            // ddelta = dS^T k (one pass over each row).
            float* dq = dqn.data() + t * dk;
            float* dkt = dkn.data() + t * dk;
            std::fill(ddelta.begin(), ddelta.end(), 0.0f);
            for (int64_t i = 0; i < dk; ++i) {
              const float* Si = St + i * dv;
              float* dSi = dS.data() + i * dv;
              const float qi = q[i], ki = k[i];
              float acc = 0.0f, acc_k = 0.0f;
#pragma omp simd reduction(+ : acc, acc_k)
              for (int64_t j = 0; j < dv; ++j) {
                acc += Si[j] * dot[j];
                const float ds = dSi[j] + qi * dot[j];
                dSi[j] = ds;
                acc_k += ds * delta[j];
                ddelta[j] += ds * ki;
              }
              dq[i] += acc;
              dkt[i] += acc_k;
            }
            // delta = (v - u) beta, u = S'^T k with S' = alpha S_prev.
            float dbeta = 0.0f;
            float* dvv = dqkv + t * W + voff + h * dv;
            for (int64_t j = 0; j < dv; ++j) {
              dvv[j] += beta * ddelta[j];
              dbeta += ddelta[j] * (v[j] - u[j]);
              du[j] = -beta * ddelta[j];
            }
            // dS' = dS + k du^T; dk += S' du; dalpha = <dS', S_prev>; dS_{t-1} = alpha dS'.
            // (dalpha's products summed per column across the rows, then once over the columns:
            // one horizontal sum per token instead of one per row)
            std::fill(dal.begin(), dal.end(), 0.0f);
            for (int64_t i = 0; i < dk; ++i) {
              const float* Pi = Sprev + i * dv;
              float* dSi = dS.data() + i * dv;
              const float ki = k[i];
              float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
              for (int64_t j = 0; j < dv; ++j) {
                acc += Pi[j] * du[j];
                const float ds = dSi[j] + ki * du[j];
                dal[j] += ds * Pi[j];
                dSi[j] = alpha * ds;
              }
              dkt[i] += alpha * acc;
            }
            float dalpha = 0.0f;
            for (int64_t j = 0; j < dv; ++j) dalpha += dal[j];
            // beta = sigmoid(b) (rounded: straight through); alpha = exp(g), g(a).
            db[t * sh.Hv + h] += dbeta * beta * (1.0f - beta);
            da[t * sh.Hv + h] += dalpha * alpha * in.g_grad[static_cast<size_t>(t)];
          }
        }
      }
      // Through q * scale = l2norm(q_raw) * scale and k = l2norm(k_raw).
      for (int64_t t = 0; t < T; ++t) {
        const float* row = qkv + t * W;
        for (int part = 0; part < 2; ++part) {
          const float* x = row + part * KD + kh * dk;
          const float* dn = (part == 0 ? dqn : dkn).data() + t * dk;
          const float sc = part == 0 ? qscale : 1.0f;
          float ss = 0.0f;
          for (int64_t i = 0; i < dk; ++i) ss += x[i] * x[i];
          const float r = 1.0f / std::sqrt(ss + 1e-6f);
          float dot = 0.0f;  // (x r) . dn
          for (int64_t i = 0; i < dk; ++i) dot += x[i] * r * dn[i];
          float* dx = dqkv + t * W + part * KD + kh * dk;
          for (int64_t i = 0; i < dk; ++i) dx[i] += sc * r * (dn[i] - x[i] * r * dot);
        }
      }
    }
  }
}

// The element-wise ops: the baseline build only (QLORA_DELTA_NET_HOT_LOOPS_ONLY: the AVX-512 one).
#ifndef QLORA_DELTA_NET_HOT_LOOPS_ONLY
void norm_forward(float* out, float* rstd, const float* x, const float* z, const float* w, int64_t rows,
                        int64_t D, float eps, ComputeDType dtype) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * D;
    const float* zr = z + r * D;
    float ss = 0.0f;
    for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
    const float rs = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
    if (rstd) rstd[r] = rs;
    float* o = out + r * D;
    for (int64_t i = 0; i < D; ++i) {
      const float n2 = round_to_dtype(w[i] * round_to_dtype(xr[i] * rs, dtype), dtype);
      o[i] = round_to_dtype(n2 * siluf(zr[i]), dtype);
    }
  }
}

void norm_backward(float* dx, float* dz, const float* dout, const float* x, const float* z, const float* w,
                         const float* rstd, int64_t rows, int64_t D, ComputeDType dtype) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * D;
    const float* zr = z + r * D;
    const float* dor = dout + r * D;
    const float rs = rstd[r];
    float* dxr = dx + r * D;
    float dot = 0.0f;  // mean over the row of dn1 * xhat
    for (int64_t i = 0; i < D; ++i) {
      const float xhat = xr[i] * rs;
      const float n2 = round_to_dtype(w[i] * round_to_dtype(xhat, dtype), dtype);
      dz[r * D + i] += dor[i] * n2 * silu_grad(zr[i]);
      dot += dor[i] * siluf(zr[i]) * w[i] * xhat;
    }
    dot /= static_cast<float>(D);
    for (int64_t i = 0; i < D; ++i) dxr[i] += rs * (dor[i] * siluf(zr[i]) * w[i] - xr[i] * rs * dot);
  }
}

void gate_forward(float* out, const float* x, const float* g, int64_t n, ComputeDType dtype) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = round_to_dtype(x[i] * round_to_dtype(sigmoidf(g[i]), dtype), dtype);
}

void gate_backward(float* dx, float* dg, const float* dout, const float* x, const float* g, int64_t n,
                          ComputeDType dtype) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float s = round_to_dtype(sigmoidf(g[i]), dtype);
    dx[i] += dout[i] * s;
    dg[i] += dout[i] * x[i] * s * (1.0f - s);
  }
}

#endif  // QLORA_DELTA_NET_HOT_LOOPS_ONLY

}  // namespace

}  // namespace qlora::delta_net_detail
