#pragma once
// Mamba (1)'s scan (model/mamba1.h), written once and compiled twice: by mamba1.cpp for the
// baseline instruction set (the scalar reference) and by mamba1_avx512.cpp with AVX-512 enabled,
// where the compiler widens the loops over the state to 16 floats. Internal linkage: each object
// keeps its own copies. The decays exp(step A) go through the exp kernel the including file
// passes (activation_kernels.h: its AVX2 exp is bit-identical to the scalar one), a block of
// channels at a time; the two builds differ only in how the compiler contracts and orders float
// operations (tests/model/test_mamba1.cpp compares them).
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/linear_kernels.h"
#include "model/mamba1.h"

namespace qlora::mamba1_detail {

namespace {

using kernels::round_to_dtype;
using ExpFn = void (*)(const float* x, float* y, int64_t n);

// torch's softplus (beta 1, threshold 20), in the dtype; *grad = its slope (treating rounding
// as the identity).
inline float ssm1_step(float raw, ComputeDType dtype, float* grad) {
  const float v = round_to_dtype(raw, dtype);
  if (grad) *grad = v > 20.0f ? 1.0f : 1.0f / (1.0f + std::exp(-v));
  return round_to_dtype(v > 20.0f ? v : std::log1p(std::exp(v)), dtype);
}

// The decays of channels [d0, d0 + nb) at token t: a (nb, N) = exp(step A), steps (nb) kept;
// A (nb, N): the block's rates (-exp(A_log)). grads (nb) when not null.
inline void block_decays(float* a, float* steps, float* grads, const float* A, const float* dt_row, int64_t d0,
                         int64_t nb, int64_t N, ComputeDType dtype, ExpFn expv) {
  for (int64_t i = 0; i < nb; ++i) {
    const float st = ssm1_step(dt_row[d0 + i], dtype, grads ? grads + i : nullptr);
    steps[i] = st;
    float* ai = a + i * N;
    const float* Ai = A + i * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) ai[n] = st * Ai[n];
  }
  expv(a, a, nb * N);
}

void scan_forward(const Ssm1Shape& sh, float* y, const float* x, const float* dt, const float* bc, const float* A,
                  const float* Dskip, int64_t T, float* state, ComputeDType dtype, ExpFn expv) {
  const int64_t D = sh.D, N = sh.N, BL = kSsm1Block, n_blocks = (D + BL - 1) / BL;
#pragma omp parallel
  {
    std::vector<float> S(static_cast<size_t>(BL * N)), a(static_cast<size_t>(BL * N)),
        steps(static_cast<size_t>(BL));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t d0 = b * BL, nb = std::min(BL, D - d0);
      const float* Ab = A + d0 * N;
      float* Sb = state ? state + d0 * N : S.data();
      if (!state) std::fill(S.begin(), S.end(), 0.0f);
      for (int64_t t = 0; t < T; ++t) {
        block_decays(a.data(), steps.data(), nullptr, Ab, dt + t * D, d0, nb, N, dtype, expv);
        const float* B = bc + t * 2 * N;
        const float* C = B + N;
        for (int64_t i = 0; i < nb; ++i) {
          const float xv = x[t * D + d0 + i], xs = steps[static_cast<size_t>(i)] * xv;
          float* Si = Sb + i * N;
          const float* ai = a.data() + i * N;
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < N; ++n) {
            const float s = ai[n] * Si[n] + xs * B[n];
            Si[n] = s;
            acc += s * C[n];
          }
          y[t * D + d0 + i] = acc + Dskip[d0 + i] * xv;
        }
      }
    }
  }
}

void scan_backward(const Ssm1Shape& sh, float* dx, float* ddt, float* dbc, const float* dy, const float* x,
                   const float* dt, const float* bc, const float* A, const float* Dskip, int64_t T,
                   ComputeDType dtype, ExpFn expv) {
  const int64_t D = sh.D, N = sh.N, BL = kSsm1Block, n_blocks = (D + BL - 1) / BL, SB = BL * N;
  // Every channel reads the same B and C: each thread sums its channels' dB and dC apart, added at the end.
  std::vector<float> dbc_total(static_cast<size_t>(T * 2 * N), 0.0f);
#pragma omp parallel
  {
    // (kept in step with ssm1_backward_thread_floats)
    std::vector<float> states(static_cast<size_t>(T * SB)), decays(static_cast<size_t>(T * SB)),
        steps(static_cast<size_t>(T * BL)), grads(static_cast<size_t>(T * BL)), local(static_cast<size_t>(T * 2 * N), 0.0f),
        dS(static_cast<size_t>(SB)), zeros(static_cast<size_t>(SB), 0.0f);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t d0 = b * BL, nb = std::min(BL, D - d0);
      const float* Ab = A + d0 * N;
      // The forward again, keeping every state (after each token) and decay.
      for (int64_t t = 0; t < T; ++t) {
        float* at = decays.data() + t * SB;
        block_decays(at, steps.data() + t * BL, grads.data() + t * BL, Ab, dt + t * D, d0, nb, N, dtype, expv);
        const float* prev = t > 0 ? states.data() + (t - 1) * SB : zeros.data();
        float* cur = states.data() + t * SB;
        const float* B = bc + t * 2 * N;
        for (int64_t i = 0; i < nb; ++i) {
          const float xs = steps[static_cast<size_t>(t * BL + i)] * x[t * D + d0 + i];
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) cur[i * N + n] = at[i * N + n] * prev[i * N + n] + xs * B[n];
        }
      }
      // Backwards through the tokens: y = S_t C + Dk x, S_t = a S_prev + st x B, a = exp(st A):
      // dC += S_t gy; dS_t += gy C; dx += Dk gy + st <dS_t, B>; dB += st x dS_t;
      // dstep = x <dS_t, B> + <dS_t, S_prev a A>; dS_prev = a dS_t.
      std::fill(dS.begin(), dS.end(), 0.0f);
      for (int64_t t = T - 1; t >= 0; --t) {
        const float* at = decays.data() + t * SB;
        const float* prev = t > 0 ? states.data() + (t - 1) * SB : zeros.data();
        const float* cur = states.data() + t * SB;
        const float* B = bc + t * 2 * N;
        const float* C = B + N;
        float* dB = local.data() + t * 2 * N;
        float* dC = dB + N;
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t d = d0 + i;
          const float gy = dy[t * D + d], xv = x[t * D + d], st = steps[static_cast<size_t>(t * BL + i)];
          const float* ai = at + i * N;
          const float* Ai = Ab + i * N;
          const float* Pi = prev + i * N;
          const float* Si = cur + i * N;
          float* dSi = dS.data() + i * N;
          const float sx = st * xv;
          float sB = 0.0f, sa = 0.0f;
#pragma omp simd reduction(+ : sB, sa)
          for (int64_t n = 0; n < N; ++n) {
            dC[n] += Si[n] * gy;
            const float ds = dSi[n] + gy * C[n];
            sB += ds * B[n];
            dB[n] += sx * ds;
            sa += ds * Pi[n] * ai[n] * Ai[n];
            dSi[n] = ai[n] * ds;
          }
          dx[t * D + d] += Dskip[d] * gy + st * sB;
          ddt[t * D + d] += (xv * sB + sa) * grads[static_cast<size_t>(t * BL + i)];
        }
      }
    }
#pragma omp critical
    for (size_t i = 0; i < local.size(); ++i) dbc_total[i] += local[i];
  }
  for (int64_t i = 0; i < T * 2 * N; ++i) dbc[i] += dbc_total[static_cast<size_t>(i)];
}

}  // namespace

}  // namespace qlora::mamba1_detail
