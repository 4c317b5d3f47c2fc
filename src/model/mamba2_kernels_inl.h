#pragma once
// Mamba2's scan (model/mamba2.h), written once and compiled twice: by mamba2.cpp for the
// baseline instruction set (the scalar reference) and by mamba2_avx512.cpp with AVX-512
// enabled, where the compiler widens the loops over the state to 16 floats. Internal linkage:
// each object keeps its own copies. The two differ only in how the compiler contracts and
// orders float operations (tests/model/test_mamba2.cpp compares them).
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/linear_kernels.h"
#include "model/mamba2.h"

namespace qlora::mamba2_detail {

namespace {

using kernels::round_to_dtype;

inline float sigmoidf(float x) { return 1.0f / (1.0f + std::exp(-x)); }
// torch's softplus (beta 1, threshold 20): x beyond the threshold is returned as it is.
inline float softplusf(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// The step of one head at one token as transformers computes it (dt + dt_bias and the softplus
// in the dtype, then the clamp); *grad = d step / d dt (0 where the clamp holds it).
inline float ssm_step(float raw, float bias, const SsmShape& sh, ComputeDType dtype, float* grad) {
  const float v = round_to_dtype(raw + bias, dtype);
  const float sp = round_to_dtype(softplusf(v), dtype);
  const bool clamped = sp < sh.dt_min || sp > sh.dt_max;
  if (grad) *grad = clamped ? 0.0f : v > 20.0f ? 1.0f : sigmoidf(v);
  return std::clamp(sp, sh.dt_min, sh.dt_max);
}

// One token on the (P, N) state S: S = a S + step x B^T; y = S C + D x (y may be null).
inline void scan_step(float* S, const float* x, const float* B, const float* C, float step, float a, float D,
                      int64_t P, int64_t N, float* y) {
  for (int64_t p = 0; p < P; ++p) {
    float* Sp = S + p * N;
    const float xs = step * x[p];
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t n = 0; n < N; ++n) {
      const float s = a * Sp[n] + xs * B[n];
      Sp[n] = s;
      acc += s * C[n];
    }
    if (y) y[p] = acc + D * x[p];
  }
}

void scan_forward(const SsmShape& sh, float* y, const float* xbc, const float* dt, const float* A_log,
                  const float* dt_bias, const float* D, int64_t T, float* state, ComputeDType dtype) {
  const int64_t W = sh.xbc_width(), HP = sh.inner(), GN = sh.G * sh.N, P = sh.P, N = sh.N, per = sh.H / sh.G;
#pragma omp parallel
  {
    std::vector<float> S;
#pragma omp for schedule(static)
    for (int64_t h = 0; h < sh.H; ++h) {
      const int64_t g = h / per;
      const float A = -std::exp(A_log[h]);
      float* Sh = nullptr;
      if (state) {
        Sh = state + h * P * N;
      } else {
        S.assign(static_cast<size_t>(P * N), 0.0f);
        Sh = S.data();
      }
      for (int64_t t = 0; t < T; ++t) {
        const float step = ssm_step(dt[t * sh.H + h], dt_bias[h], sh, dtype, nullptr);
        const float* row = xbc + t * W;
        scan_step(Sh, row + h * P, row + HP + g * sh.N, row + HP + GN + g * sh.N, step, std::exp(step * A), D[h], P, N,
                  y + t * HP + h * P);
      }
    }
  }
}

void scan_backward(const SsmShape& sh, float* dxbc, float* ddt, const float* dy, const float* xbc, const float* dt,
                   const float* A_log, const float* dt_bias, const float* D, int64_t T, ComputeDType dtype) {
  const int64_t W = sh.xbc_width(), HP = sh.inner(), GN = sh.G * sh.N, P = sh.P, N = sh.N, per = sh.H / sh.G;
  const int64_t SS = P * N, CH = kSsmChunk, n_chunks = (T + CH - 1) / CH;
  // Heads of one group share B and C: each thread sums its heads' dB and dC apart, added at the end.
  std::vector<float> dbc_total(static_cast<size_t>(T * 2 * GN), 0.0f);
#pragma omp parallel
  {
    std::vector<float> dbc(static_cast<size_t>(T * 2 * GN), 0.0f), checkpoints, states(static_cast<size_t>((CH + 1) * SS)),
        dS(static_cast<size_t>(SS)), steps(static_cast<size_t>(T)), grads(static_cast<size_t>(T)), dal(static_cast<size_t>(N));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < sh.H; ++h) {
      const int64_t g = h / per;
      const float A = -std::exp(A_log[h]), Dh = D[h];
      for (int64_t t = 0; t < T; ++t)
        steps[static_cast<size_t>(t)] = ssm_step(dt[t * sh.H + h], dt_bias[h], sh, dtype, &grads[static_cast<size_t>(t)]);
      auto step_at = [&](float* S, int64_t t) {
        const float* row = xbc + t * W;
        const float st = steps[static_cast<size_t>(t)];
        scan_step(S, row + h * P, row + HP + g * N, row + HP + GN + g * N, st, std::exp(st * A), 0.0f, P, N, nullptr);
      };
      // Forward from zeros, keeping the state before each chunk.
      checkpoints.assign(static_cast<size_t>(n_chunks * SS), 0.0f);
      std::fill(dS.begin(), dS.end(), 0.0f);  // (as the running state here)
      for (int64_t t = 0; t < T; ++t) {
        if (t % CH == 0) std::copy(dS.begin(), dS.end(), checkpoints.begin() + (t / CH) * SS);
        step_at(dS.data(), t);
      }
      std::fill(dS.begin(), dS.end(), 0.0f);  // d loss / d S_t, carried backwards
      for (int64_t ch = n_chunks - 1; ch >= 0; --ch) {
        const int64_t t0 = ch * CH, t1 = std::min(T, t0 + CH);
        // states[i] = the state before token t0 + i (states[i + 1]: after it).
        std::copy(checkpoints.begin() + ch * SS, checkpoints.begin() + (ch + 1) * SS, states.begin());
        for (int64_t t = t0; t < t1; ++t) {
          float* next = states.data() + (t - t0 + 1) * SS;
          std::copy(next - SS, next, next);
          step_at(next, t);
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const float* Sprev = states.data() + (t - t0) * SS;
          const float* St = Sprev + SS;
          const float* row = xbc + t * W;
          const float* x = row + h * P;
          const float* B = row + HP + g * N;
          const float* C = B + GN;
          const float* gy = dy + t * HP + h * P;
          float* dx = dxbc + t * W + h * P;
          float* dB = dbc.data() + t * 2 * GN + g * N;
          float* dC = dB + GN;
          const float st = steps[static_cast<size_t>(t)], a = std::exp(st * A);
          // y = S_t C + D x: dC += S_t^T gy, dS_t += gy C^T; then S_t = a S_prev + st x B^T:
          // dx += st dS_t B, dB += st dS_t^T x, dstep = x^T dS_t B, da = <dS_t, S_prev>;
          // dS_{t-1} = a dS_t.
          float dstep = 0.0f;
          std::fill(dal.begin(), dal.end(), 0.0f);
          for (int64_t p = 0; p < P; ++p) {
            const float* Sp = St + p * N;
            const float* Pp = Sprev + p * N;
            float* dSp = dS.data() + p * N;
            const float gp = gy[p], xp = x[p];
            float sB = 0.0f;
#pragma omp simd reduction(+ : sB)
            for (int64_t n = 0; n < N; ++n) {
              dC[n] += Sp[n] * gp;
              const float ds = dSp[n] + gp * C[n];
              sB += ds * B[n];
              dB[n] += st * ds * xp;
              dal[n] += ds * Pp[n];
              dSp[n] = a * ds;
            }
            dx[p] += Dh * gp + st * sB;
            dstep += xp * sB;
          }
          float da = 0.0f;
          for (int64_t n = 0; n < N; ++n) da += dal[n];
          ddt[t * sh.H + h] += (dstep + da * a * A) * grads[static_cast<size_t>(t)];
        }
      }
    }
#pragma omp critical
    for (size_t i = 0; i < dbc.size(); ++i) dbc_total[i] += dbc[i];
  }
  for (int64_t t = 0; t < T; ++t) {
    float* d = dxbc + t * W + HP;
    const float* s = dbc_total.data() + t * 2 * GN;
    for (int64_t i = 0; i < 2 * GN; ++i) d[i] += s[i];
  }
}

}  // namespace

}  // namespace qlora::mamba2_detail
