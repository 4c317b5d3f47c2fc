// model/attention_gemm.h: attention as per-head float32 GEMMs in causal row blocks, the heads
// over the threads.
#include "model/attention_gemm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "base/parallel.h"
#include "model/gemm.h"
#include "model/ops.h"

namespace qlora {

namespace {

// Queries per causal row block (forward, score gradients) and keys per block of the key and
// value gradients: small enough that the causal skip saves most of the masked half, large
// enough that each product still amortizes its packing.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kKeyBlock = 64;

// Runs body(i) for i in [0, n): over the threads in one parallel region (each i on one
// thread, contiguous shares; the GEMMs inside then run on that thread), or one after another
// on the calling thread (each GEMM then threaded itself).
template <class Body>
void for_each_index(int64_t n, bool parallel, Body&& body) {
  if (!parallel) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  parallel_for_range(n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) body(i);
  });
}

// The keys that queries [.., t1) see end here.
int64_t keys_seen(int64_t t1, int64_t q_pos0, int64_t Tk) { return std::min(Tk, q_pos0 + t1); }

}  // namespace

void attention_forward_gemm(float* out, float* att, float* scratch, const float* q, const float* k, const float* v,
                            int64_t T, int64_t Tk, int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS,
                            const int32_t* key_start, float scale, float softcap, const AlibiBias* alibi,
                            const float* sinks) {
  const int64_t group = NH / NKV;
  const int64_t qs = NH * HS, kvs = NKV * HS;
  auto head = [&](int64_t h) {
    const int64_t kh = h / group;
    float* S = att ? att + h * T * Tk : scratch;
    for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
      const int64_t t1 = std::min(T, t0 + kRowBlock), kend = keys_seen(t1, q_pos0, Tk);
      sgemm_nt(t1 - t0, kend, HS, q + t0 * qs + h * HS, qs, k + kh * HS, kvs, S + t0 * Tk, Tk, /*accumulate=*/false);
      // (inside the heads' region this runs on the calling thread)
      parallel_for_range(t1 - t0, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t t = t0 + r0; t < t0 + r1; ++t) {
          float* row = S + t * Tk;
          const int64_t n = q_pos0 + t + 1;
          const int64_t j0 = key_start ? key_start[t] : 0;
          for (int64_t j = j0; j < n; ++j) row[j] *= scale;
          if (alibi)
            for (int64_t j = j0; j < n; ++j) row[j] += (*alibi)(h, j - j0);
          if (softcap > 0.0f)
            for (int64_t j = j0; j < n; ++j) row[j] = std::tanh(row[j] / softcap) * softcap;
          if (sinks) softmax_with_sink(row + j0, n - j0, sinks[h]);
          else softmax_inplace(row + j0, n - j0);
          for (int64_t j = 0; j < j0; ++j) row[j] = 0.0f;
          for (int64_t j = n; j < Tk; ++j) row[j] = 0.0f;  // (past kend: never computed)
        }
      });
      sgemm_nn(t1 - t0, HS, kend, S + t0 * Tk, Tk, v + kh * HS, kvs, out + t0 * qs + h * HS, qs,
               /*accumulate=*/false);
    }
  };
  // One region over the heads needs a score buffer per head: the kept probabilities.
  for_each_index(NH, /*parallel=*/att != nullptr, head);
}

void attention_backward_gemm(float* dq, float* dk, float* dv, float* datt, float* raw, const float* dout,
                             const float* q, const float* k, const float* v, const float* att, int64_t T, int64_t Tk,
                             int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start,
                             float scale, float softcap) {
  const int64_t group = NH / NKV;
  const int64_t qs = NH * HS, kvs = NKV * HS;

  // Pass 1, per head (disjoint writes: the head's score gradients, its columns of dq):
  //   dP = dO Vᵀ;  dS = P ⊙ (dP - rowsum(P ⊙ dP)) · scale;  dQ += dS K.
  // A softcap recomputes the raw scores into `raw`, one head's worth: then one head at a time.
  auto pass1 = [&](int64_t h) {
    const int64_t kh = h / group;
    const float* P = att + h * T * Tk;
    float* dS = datt + h * T * Tk;
    for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
      const int64_t t1 = std::min(T, t0 + kRowBlock), kend = keys_seen(t1, q_pos0, Tk);
      if (softcap > 0.0f)
        sgemm_nt(t1 - t0, kend, HS, q + t0 * qs + h * HS, qs, k + kh * HS, kvs, raw + t0 * Tk, Tk, /*accumulate=*/false);
      sgemm_nt(t1 - t0, kend, HS, dout + t0 * qs + h * HS, qs, v + kh * HS, kvs, dS + t0 * Tk, Tk, /*accumulate=*/false);
      parallel_for_range(t1 - t0, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t t = t0 + r0; t < t0 + r1; ++t) {
          const float* p = P + t * Tk;
          float* d = dS + t * Tk;
          const int64_t n = q_pos0 + t + 1;
          const int64_t j0 = key_start ? key_start[t] : 0;
          double s = 0.0;
          for (int64_t j = j0; j < n; ++j) s += static_cast<double>(p[j]) * d[j];
          const float sf = static_cast<float>(s);
          for (int64_t j = 0; j < j0; ++j) d[j] = 0.0f;
          if (softcap > 0.0f) {  // through cap * tanh(s / cap): times 1 - tanh^2
            const float* rr = raw + t * Tk;
            for (int64_t j = j0; j < n; ++j) {
              const float th = std::tanh(rr[j] * scale / softcap);
              d[j] = p[j] * (d[j] - sf) * (1.0f - th * th) * scale;
            }
          } else {
            for (int64_t j = j0; j < n; ++j) d[j] = p[j] * (d[j] - sf) * scale;
          }
          for (int64_t j = n; j < Tk; ++j) d[j] = 0.0f;
        }
      });
      sgemm_nn(t1 - t0, HS, kend, dS + t0 * Tk, Tk, k + kh * HS, kvs, dq + t0 * qs + h * HS, qs, /*accumulate=*/true);
    }
  };
  for_each_index(NH, /*parallel=*/!(softcap > 0.0f), pass1);

  // Pass 2, per (key/value head, block of keys) (disjoint writes: those rows of dk and dv),
  // summing over the query heads of the group in order, over the queries that see the block
  // (q_pos0 + t >= j0):  dK += dSᵀ Q;  dV += Pᵀ dO.
  const int64_t kblocks = (Tk + kKeyBlock - 1) / kKeyBlock;
  auto pass2 = [&](int64_t item) {
    const int64_t kh = item / kblocks, j0 = item % kblocks * kKeyBlock, j1 = std::min(Tk, j0 + kKeyBlock);
    const int64_t tlo = std::max<int64_t>(0, j0 - q_pos0);
    if (tlo >= T) return;
    for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
      const float* P = att + h * T * Tk;
      const float* dS = datt + h * T * Tk;
      sgemm_tn(j1 - j0, HS, T - tlo, dS + tlo * Tk + j0, Tk, q + tlo * qs + h * HS, qs, dk + j0 * kvs + kh * HS, kvs,
               /*accumulate=*/true);
      sgemm_tn(j1 - j0, HS, T - tlo, P + tlo * Tk + j0, Tk, dout + tlo * qs + h * HS, qs, dv + j0 * kvs + kh * HS, kvs,
               /*accumulate=*/true);
    }
  };
  // The causal work falls with the key block (fewer queries see later keys): the items go to
  // the threads as a snake (0 1 1 0 0 1 ... for two), which evens the shares out. Each item's
  // sums are the same whichever thread runs it.
  const int64_t items = NKV * kblocks;
  const int nth = static_cast<int>(std::min<int64_t>(max_threads(), items));
  if (nth <= 1) {
    for (int64_t i = 0; i < items; ++i) pass2(i);
    return;
  }
#pragma omp parallel num_threads(nth)
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    for (int64_t i = 0; i < items; ++i) {
      const int64_t round = i / n, pos = i % n;
      if ((round % 2 == 0 ? pos : n - 1 - pos) == t) pass2(i);
    }
  }
}

}  // namespace qlora
