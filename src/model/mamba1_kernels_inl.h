#pragma once
// Mamba (1)'s scan (model/mamba1.h), written once and compiled twice: by mamba1.cpp for the
// baseline instruction set (the scalar reference) and by mamba1_avx512.cpp with AVX-512 enabled,
// where the compiler widens the loops over the state to 16 floats. Internal linkage: each object
// keeps its own copies. The steps and decays go through the softplus and exp kernels the including
// file passes (activation_kernels.h: the AVX2 exp is bit-identical to the scalar one, the softplus
// within an ulp), a block of channels at a time; otherwise the two builds differ only in how the
// compiler contracts and orders float operations (tests/model/test_mamba1.cpp compares them).
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/activation_kernels.h"
#include "model/linear_kernels.h"
#include "model/mamba1.h"

namespace qlora::mamba1_detail {

namespace {

using kernels::round_to_dtype;
using Acts = kernels::ActivationKernels;

// The steps of channels [d0, d0 + nb) at every token: steps (T, BL) = softplus(dt) as transformers
// computes it in the dtype (torch's softplus, threshold 20; the dt and the result rounded), and
// grads (T, BL), when not null, its slope sigmoid(dt) (rounding as the identity). Lanes past nb: 0.
// One call of the softplus and exp kernels for the block's whole sequence.
inline void block_steps(float* steps, float* grads, const float* dt, int64_t T, int64_t D, int64_t d0, int64_t nb,
                        ComputeDType dtype, const Acts& k) {
  const int64_t BL = kSsm1Block;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < BL; ++i) steps[t * BL + i] = i < nb ? round_to_dtype(dt[t * D + d0 + i], dtype) : 0.0f;
  if (grads) {
    for (int64_t j = 0; j < T * BL; ++j) grads[j] = -steps[j];
    k.exp(grads, grads, T * BL);
    for (int64_t j = 0; j < T * BL; ++j) grads[j] = 1.0f / (1.0f + grads[j]);
  }
  k.softplus(steps, steps, T * BL);
  if (dtype != ComputeDType::F32)
    for (int64_t j = 0; j < T * BL; ++j) steps[j] = round_to_dtype(steps[j], dtype);
}

// The decays of nb channels at one token: a (nb, N) = exp(step A), from their steps (nb) and rates
// A (nb, N) = -exp(A_log).
inline void block_decays(float* a, const float* steps, const float* A, int64_t nb, int64_t N, const Acts& k) {
  for (int64_t i = 0; i < nb; ++i) {
    const float st = steps[i];
    float* ai = a + i * N;
    const float* Ai = A + i * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) ai[n] = st * Ai[n];
  }
  k.exp(a, a, nb * N);
}

void scan_forward(const Ssm1Shape& sh, float* y, const float* x, const float* dt, const float* bc, const float* A,
                  const float* Dskip, int64_t T, float* state, ComputeDType dtype, const Acts& k) {
  const int64_t D = sh.D, N = sh.N, BL = kSsm1Block, n_blocks = (D + BL - 1) / BL;
#pragma omp parallel
  {
    std::vector<float> S(static_cast<size_t>(BL * N)), a(static_cast<size_t>(BL * N)), steps(static_cast<size_t>(T * BL));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t d0 = b * BL, nb = std::min(BL, D - d0);
      const float* Ab = A + d0 * N;
      float* Sb = state ? state + d0 * N : S.data();
      if (!state) std::fill(S.begin(), S.end(), 0.0f);
      block_steps(steps.data(), nullptr, dt, T, D, d0, nb, dtype, k);
      for (int64_t t = 0; t < T; ++t) {
        block_decays(a.data(), steps.data() + t * BL, Ab, nb, N, k);
        const float* B = bc + t * 2 * N;
        const float* C = B + N;
        for (int64_t i = 0; i < nb; ++i) {
          const float xv = x[t * D + d0 + i], xs = steps[static_cast<size_t>(t * BL + i)] * xv;
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
                   ComputeDType dtype, const Acts& k) {
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
      block_steps(steps.data(), grads.data(), dt, T, D, d0, nb, dtype, k);
      for (int64_t t = 0; t < T; ++t) {
        float* at = decays.data() + t * SB;
        block_decays(at, steps.data() + t * BL, Ab, nb, N, k);
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
