#include "model/ops.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/float_formats.h"
#include "base/parallel.h"
#include "model/activation_kernels.h"
#include "model/attention_gemm.h"
#include "model/gemm.h"
#include "model/linear_kernels.h"
#include "model/quant_linear.h"

namespace qlora {

void embedding_forward(float* out, const int* tokens, int64_t T, const DenseWeight& wte) {
  const int64_t V = wte.rows(), C = wte.cols();
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= V)
      fail("embedding", "token id " + std::to_string(tokens[t]) + " is outside the vocabulary of " +
                            std::to_string(V));
    wte.rows_to_f32(tokens[t], tokens[t] + 1, out + t * C);
  }
}

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t T, int64_t C,
                     float eps, ComputeDType dtype, float weight_offset, bool round_once) {
  for (int64_t t = 0; t < T; ++t) {
    const float* x = inp + t * C;
    float* o = out + t * C;
    float ss = 0.0f;
    for (int64_t i = 0; i < C; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
    if (rstd) rstd[t] = r;
    if (weight_offset != 0.0f || round_once) {  // Gemma, OLMo 2: (x r) (offset + w) in float32, rounded once
      for (int64_t i = 0; i < C; ++i) {
        const float v = (r * x[i]) * (weight_offset + weight[i]);
        o[i] = dtype == ComputeDType::F32 ? v : kernels::round_to_dtype(v, dtype);
      }
    } else if (dtype == ComputeDType::F32) {
      for (int64_t i = 0; i < C; ++i) o[i] = weight[i] * (r * x[i]);
    } else {
      for (int64_t i = 0; i < C; ++i)
        o[i] = kernels::round_to_dtype(weight[i] * kernels::round_to_dtype(r * x[i], dtype), dtype);
    }
  }
}

std::vector<float> rope_inv_freq(int64_t HS, float theta, const RopeScaling& sc, int64_t seq_len) {
  const int64_t half = HS / 2;
  std::vector<float> inv(static_cast<size_t>(half)), pos_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    pos_freq[i] = std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(HS));
    inv[i] = 1.0f / pos_freq[i];
  }
  switch (sc.type) {
    case RopeScaling::Type::None: break;
    case RopeScaling::Type::Linear:
      for (float& f : inv) f /= sc.factor;
      break;
    case RopeScaling::Type::Proportional: {
      // transformers' _compute_proportional_rope_parameters: int(fraction * HS // 2) pairs rotate.
      const int64_t rotated =
          static_cast<int64_t>(std::floor(static_cast<double>(sc.rotated_fraction) * static_cast<double>(HS) / 2.0));
      for (int64_t i = 0; i < half; ++i) inv[i] = i < rotated ? inv[i] / sc.factor : 0.0f;
      break;
    }
    case RopeScaling::Type::Factors:
      check(static_cast<int64_t>(sc.freq_factors.size()) == half, "rotary frequency factors",
            std::to_string(sc.freq_factors.size()) + " values for a head of " + std::to_string(HS));
      for (int64_t i = 0; i < half; ++i) inv[i] /= sc.freq_factors[static_cast<size_t>(i)];
      break;
    case RopeScaling::Type::Dynamic: {
      // transformers' _compute_dynamic_ntk_parameters, in float32 as its tensors are.
      if (seq_len <= sc.original_max_positions) break;
      const float grown = sc.factor * static_cast<float>(seq_len) / static_cast<float>(sc.original_max_positions) -
                          (sc.factor - 1.0f);
      const float base = theta * std::pow(grown, static_cast<float>(static_cast<double>(HS) / static_cast<double>(HS - 2)));
      for (int64_t i = 0; i < half; ++i) inv[i] = 1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(HS));
      break;
    }
    case RopeScaling::Type::LongRope: {
      // 1 / (ext * theta^(2i/d)), ext the long factors once the sequence passes the original context.
      const std::vector<float>& ext = seq_len > sc.original_max_positions ? sc.long_factor : sc.short_factor;
      check(static_cast<int64_t>(ext.size()) == half, "longrope factors",
            std::to_string(ext.size()) + " values for " + std::to_string(HS) + " rotary dims");
      for (int64_t i = 0; i < half; ++i) inv[i] = 1.0f / (ext[static_cast<size_t>(i)] * pos_freq[i]);
      break;
    }
    case RopeScaling::Type::Llama3: {
      // Long wavelengths (beyond the original context / low_freq_factor) slow down by
      // `factor`, short ones (below / high_freq_factor) stay, the band between blends.
      const float old_ctx = static_cast<float>(sc.original_max_positions);
      const float low_wavelen = static_cast<float>(static_cast<double>(sc.original_max_positions) / sc.low_freq_factor);
      const float high_wavelen = static_cast<float>(static_cast<double>(sc.original_max_positions) / sc.high_freq_factor);
      const float span = static_cast<float>(static_cast<double>(sc.high_freq_factor) - sc.low_freq_factor);
      // (`scalar / tensor` is reciprocal-then-multiply in torch: the same here.)
      for (float& f : inv) {
        const float wavelen = (1.0f / f) * static_cast<float>(2.0 * M_PI);
        const float scaled = wavelen > low_wavelen ? f / sc.factor : f;
        // (equal factors leave no band: transformers' 0 / 0 there would be NaN at the one wavelength
        // equal to both bounds)
        if (span > 0.0f && !(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
          const float smooth = ((1.0f / wavelen) * old_ctx - sc.low_freq_factor) / span;
          f = (1.0f - smooth) * scaled / sc.factor + smooth * scaled;
        } else {
          f = scaled;
        }
      }
      break;
    }
    case RopeScaling::Type::Yarn: {
      // Interpolated (1 / (factor pos_freq)) below the correction range, extrapolated
      // (1 / pos_freq) above it, a linear ramp over it.
      const double d = static_cast<double>(HS), base = theta, orig = static_cast<double>(sc.original_max_positions);
      auto correction_dim = [&](double rotations) {
        return (d * std::log(orig / (rotations * 2.0 * M_PI))) / (2.0 * std::log(base));
      };
      double low = correction_dim(sc.beta_fast), high = correction_dim(sc.beta_slow);
      if (sc.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, d - 1.0);
      if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
      const float lo = static_cast<float>(low), width = static_cast<float>(high - low);
      for (int64_t i = 0; i < half; ++i) {
        const float ramp = std::clamp((static_cast<float>(i) - lo) / width, 0.0f, 1.0f);
        const float extrap = 1.0f - ramp;
        const float interp = 1.0f / (sc.factor * pos_freq[i]);
        inv[i] = interp * (1.0f - extrap) + inv[i] * extrap;
      }
      break;
    }
  }
  return inv;
}

void rope_tables(float* cos_out, float* sin_out, const int32_t* pos, int64_t T, int64_t HS, float theta,
                 const RopeScaling& scaling, int64_t seq_len) {
  const int64_t half = HS / 2;
  if (seq_len == 0)
    for (int64_t t = 0; t < T; ++t) seq_len = std::max<int64_t>(seq_len, pos[t] + 1);
  const std::vector<float> inv_freq = rope_inv_freq(HS, theta, scaling, seq_len);
  const float af = scaling.attention_factor;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float a = static_cast<float>(pos[t]) * inv_freq[i];
      cos_out[t * half + i] = af == 1.0f ? std::cos(a) : std::cos(a) * af;
      sin_out[t * half + i] = af == 1.0f ? std::sin(a) : std::sin(a) * af;
    }
}

void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                  bool interleaved) {
  const int64_t half = (rot > 0 ? rot : HS) / 2;
  // The pair of frequency i: (i, i + half), or (2i, 2i + 1) interleaved.
  const int64_t step = interleaved ? 2 : 1, partner = interleaved ? 1 : half;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int64_t h = 0; h < NH; ++h) {
      float* v = x + (t * NH + h) * HS;
      for (int64_t i = 0; i < half; ++i) {
        float* a = v + i * step;
        const float x0 = a[0], x1 = a[partner];
        a[0] = x0 * c[i] - x1 * s[i];
        a[partner] = x1 * c[i] + x0 * s[i];
      }
    }
  }
}

void softmax_with_sink(float* x, int64_t N, float sink) {
  // (transformers' gpt-oss: softmax over [scores, sink] after subtracting their max; the
  // sink's share is dropped)
  float mx = sink;
  for (int64_t i = 0; i < N; ++i) mx = std::max(mx, x[i]);
  for (int64_t i = 0; i < N; ++i) x[i] -= mx;
  kernels::active_activation_kernels().exp(x, x, N);
  float sum = 0.0f;
  for (int64_t i = 0; i < N; ++i) sum += x[i];
  sum += std::exp(sink - mx);
  for (int64_t i = 0; i < N; ++i) x[i] /= sum;
}

void softmax_inplace(float* x, int64_t N) {
  if (N <= 0) return;
  float mx = x[0];
  for (int64_t i = 1; i < N; ++i) mx = std::max(mx, x[i]);
  for (int64_t i = 0; i < N; ++i) x[i] -= mx;
  kernels::active_activation_kernels().exp(x, x, N);  // expf, vectorized (activation_kernels.h)
  float sum = 0.0f;
  for (int64_t i = 0; i < N; ++i) sum += x[i];  // in order, as always
  for (int64_t i = 0; i < N; ++i) x[i] /= sum;
}


std::vector<float> alibi_slopes(int64_t NH, float max_bias) {
  const int64_t closest = int64_t{1} << static_cast<int>(std::floor(std::log2(static_cast<double>(NH))));
  // (2^-(max_bias / p); for BLOOM's 8 the expression transformers writes, 2^-(2^-(log2 p - 3)))
  auto base_of = [max_bias](int64_t p) {
    if (max_bias == 8.0f)
      return static_cast<float>(std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(p)) - 3.0))));
    return static_cast<float>(std::pow(2.0, -static_cast<double>(max_bias) / static_cast<double>(p)));
  };
  std::vector<float> s;
  const float base = base_of(closest);
  for (int64_t i = 1; i <= closest; ++i) s.push_back(std::pow(base, static_cast<float>(i)));
  if (closest != NH) {
    const float extra = base_of(2 * closest);
    const int64_t rem = std::min(closest, NH - closest);
    for (int64_t i = 1; i < 1 + 2 * rem; i += 2) s.push_back(std::pow(extra, static_cast<float>(i)));
  }
  return s;
}

float AlibiBias::round_to_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

std::vector<float> alibi_slopes_mpt(int64_t NH, float max_bias) {
  int64_t n2 = 1;
  while (n2 < NH) n2 *= 2;
  std::vector<float> s;
  for (int64_t i = 1; i <= n2; ++i)  // (float32 as build_mpt_alibi_tensor computes them)
    s.push_back(1.0f / std::pow(2.0f, static_cast<float>(i) * (max_bias / static_cast<float>(n2))));
  if (n2 == NH) return s;
  std::vector<float> r;
  for (int64_t i = 1; i < n2; i += 2) r.push_back(s[static_cast<size_t>(i)]);
  for (int64_t i = 0; i < n2; i += 2) r.push_back(s[static_cast<size_t>(i)]);
  r.resize(static_cast<size_t>(NH));
  return r;
}

AlibiBias alibi_bias_for(const ModelSpec& s) {
  AlibiBias a;
  a.slopes = s.alibi_mpt ? alibi_slopes_mpt(s.n_heads, s.alibi_bias_max) : alibi_slopes(s.n_heads, s.alibi_bias_max);
  if (s.alibi_falcon) {
    a.bf16_product = true;
    // (transformers divides by math.sqrt(hidden_size // num_heads) in float32)
    a.divisor = static_cast<float>(std::sqrt(static_cast<double>(s.head_dim)));
  }
  return a;
}

namespace {
bool attention_uses_gemm(int64_t T) { return T >= kAttentionGemmMinTokens && sgemm_has_library(); }
}  // namespace

int64_t attention_scratch_floats(int64_t T, int64_t Tk, int64_t NH) {
  return attention_uses_gemm(T) ? T * Tk : NH * T * Tk;
}

namespace {
// One decoded query's run of heads h0 .. h0 + nh - 1 (all sharing key/value head kh) over keys
// j0 .. n - 1: scores into s0 (head h0 + i's row at s0 + i * lds, indexed by key position),
// ALiBi and softcap, softmax, then the weighted sums of the values into o (the token's output
// row). scores_fn / sums_fn as attention_rows'.
template <class ScoresFn, class SumsFn>
inline void attention_item(const float* qt, float* ot, int64_t h0, int64_t nh, int64_t kh, int64_t NKV, int64_t HS,
                           int64_t j0, int64_t n, float* s0, int64_t lds, float softcap, const AlibiBias* alibi,
                           const float* sinks, ScoresFn& scores_fn, SumsFn& sums_fn) {
  scores_fn(qt + h0 * HS, nh, (j0 * NKV + kh) * HS, n - j0, s0 + j0, lds);
  for (int64_t i = 0; i < nh; ++i) {
    const int64_t h = h0 + i;
    float* scores = s0 + i * lds;
    if (alibi)
      for (int64_t j = j0; j < n; ++j) scores[j] += (*alibi)(h, j - j0);
    if (softcap > 0.0f)
      for (int64_t j = j0; j < n; ++j) scores[j] = std::tanh(scores[j] / softcap) * softcap;
    if (sinks) softmax_with_sink(scores + j0, n - j0, sinks[h]);
    else softmax_inplace(scores + j0, n - j0);
  }
  sums_fn(s0 + j0, lds, nh, (j0 * NKV + kh) * HS, n - j0, ot + h0 * HS);
}

// attention_forward for a few query tokens (decoding), given how to read the cached rows:
// scores_fn(q, heads, offset, count, scores, lds) scores `heads` consecutive query heads against
// the `count` key rows starting at value `offset` of the keys (rows NKV * HS apart), and
// sums_fn(p, ldp, heads, offset, count, o) does the values' weighted sums (linear_kernels.h
// attn_scores / attn_weighted_sum and their 16-bit forms).
template <class ScoresFn, class SumsFn>
void attention_rows(float* out, float* att, float* scratch, const float* q, int64_t T, int64_t Tk, int64_t q_pos0,
                    int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start, float softcap,
                    const AlibiBias* alibi, const float* sinks, ScoresFn&& scores_fn, SumsFn&& sums_fn) {
  const int64_t group = NH / NKV;
  const int64_t qs = NH * HS;
  // One work item per (token, key/value head, run of that head's query heads): the kernels read
  // each cached key and value row once for the whole run. A group is split into runs only when
  // there would otherwise be fewer than two items per thread (one decoded token of a model with
  // few key/value heads).
  const int64_t nt = max_threads();
  const int64_t splits = std::min(group, std::max<int64_t>(1, (2 * nt + T * NKV - 1) / (T * NKV)));
  const int64_t run = (group + splits - 1) / splits, runs = (group + run - 1) / run;
  const int64_t items = T * NKV * runs;
  const int64_t min_items = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, Tk * HS * run));
  // Each (token, head) pair's scores go in its own row of the (NH, T, Tk) probabilities, or
  // of the scratch laid out the same way.
  float* rows = att ? att : scratch;
  parallel_for_range(items, min_items, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t t = it / (NKV * runs), kh = (it / runs) % NKV, r = it % runs;
      const int64_t h0 = kh * group + r * run, nh = std::min(run, group - r * run);
      const int64_t n = q_pos0 + t + 1;  // keys j0..q_pos0+t
      const int64_t j0 = key_start ? key_start[t] : 0;
      float* s0 = rows + (h0 * T + t) * Tk;  // head h0 + i's row: s0 + i * T * Tk
      attention_item(q + t * qs, out + t * qs, h0, nh, kh, NKV, HS, j0, n, s0, T * Tk, softcap, alibi, sinks,
                     scores_fn, sums_fn);
      if (att) {  // masked entries are 0 in the kept probabilities
        for (int64_t i = 0; i < nh; ++i) {
          float* scores = s0 + i * T * Tk;
          for (int64_t j = 0; j < j0; ++j) scores[j] = 0.0f;
          for (int64_t j = n; j < Tk; ++j) scores[j] = 0.0f;
        }
      }
    }
  });
}
}  // namespace

void attention_forward(float* out, float* att, float* scratch, const float* q, const float* k, const float* v, int64_t T,
                       int64_t Tk, int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS,
                       const int32_t* key_start, float scale, float softcap, const AlibiBias* alibi,
                       const float* sinks) {
  if (!(scale > 0.0f)) scale = 1.0f / std::sqrt(static_cast<float>(HS));
  check(att != nullptr || scratch != nullptr, "attention_forward", "needs the probabilities or a scratch buffer");
  if (attention_uses_gemm(T)) {
    attention_forward_gemm(out, att, scratch, q, k, v, T, Tk, q_pos0, NH, NKV, HS, key_start, scale, softcap, alibi, sinks);
    return;
  }
  const auto& kern = kernels::active_linear_kernels();
  const int64_t kvs = NKV * HS;
  attention_rows(
      out, att, scratch, q, T, Tk, q_pos0, NH, NKV, HS, key_start, softcap, alibi, sinks,
      [&](const float* qh, int64_t heads, int64_t off, int64_t count, float* s, int64_t lds) {
        kern.attn_scores(qh, heads, k + off, kvs, count, HS, scale, s, lds);
      },
      [&](const float* p, int64_t ldp, int64_t heads, int64_t off, int64_t count, float* o) {
        kern.attn_weighted_sum(p, ldp, heads, v + off, kvs, count, HS, o);
      });
}

void attention_forward_kv16(float* out, float* att, float* scratch, const float* q, const uint16_t* k,
                            const uint16_t* v, ComputeDType kv_dtype, int64_t T, int64_t Tk, int64_t kv_capacity,
                            int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start, float scale,
                            float softcap, const AlibiBias* alibi, const float* sinks) {
  if (!(scale > 0.0f)) scale = 1.0f / std::sqrt(static_cast<float>(HS));
  check(att != nullptr || scratch != nullptr, "attention_forward", "needs the probabilities or a scratch buffer");
  const auto& kern = kernels::active_linear_kernels();
  const int64_t kvs = NKV * HS;
  if (attention_uses_gemm(T)) {
    // A block of prompt tokens: the per-head GEMMs on the rows widened to float32, in this
    // thread's buffers sized for the cache's capacity (it grows by doubling: no reallocation
    // for every token).
    thread_local std::unique_ptr<float[]> kf, vf;
    thread_local size_t have = 0;
    const size_t n = static_cast<size_t>(Tk * kvs);
    if (have < n) {
      kf.reset();  // (the old pair first: the peak holds one pair)
      vf.reset();
      have = static_cast<size_t>(std::max(Tk, kv_capacity) * kvs);
      kf.reset(new float[have]);
      vf.reset(new float[have]);
    }
    float* const kw = kf.get();  // (the calling thread's buffers: a worker's thread_local is its own)
    float* const vw = vf.get();
    parallel_for_range(static_cast<int64_t>(n), 1 << 16, [&](int64_t b, int64_t e) {
      kern.widen16(kv_dtype, k + b, kw + b, e - b);
      kern.widen16(kv_dtype, v + b, vw + b, e - b);
    });
    attention_forward_gemm(out, att, scratch, q, kw, vw, T, Tk, q_pos0, NH, NKV, HS, key_start, scale, softcap, alibi, sinks);
    return;
  }
  // Decoding: the row kernels read the 16-bit rows directly (half the bytes of a float32 cache).
  attention_rows(
      out, att, scratch, q, T, Tk, q_pos0, NH, NKV, HS, key_start, softcap, alibi, sinks,
      [&](const float* qh, int64_t heads, int64_t off, int64_t count, float* s, int64_t lds) {
        kern.attn_scores16(kv_dtype, qh, heads, k + off, kvs, count, HS, scale, s, lds);
      },
      [&](const float* p, int64_t ldp, int64_t heads, int64_t off, int64_t count, float* o) {
        kern.attn_weighted_sum16(kv_dtype, p, ldp, heads, v + off, kvs, count, HS, o);
      });
}

void attention_decode_rows(float* out, const float* q, int64_t N, const void* const* k, const void* const* v,
                           const ComputeDType* dtype, const int64_t* pos, const int32_t* key_start, int64_t NH,
                           int64_t NKV, int64_t HS, float scale, float softcap, const AlibiBias* alibi,
                           const float* sinks) {
  if (!(scale > 0.0f)) scale = 1.0f / std::sqrt(static_cast<float>(HS));
  const auto& kern = kernels::active_linear_kernels();
  const int64_t kvs = NKV * HS, qs = NH * HS, group = NH / NKV;
  // Items as attention_rows' for one token per row: (row, key/value head, run of its query
  // heads), a group split into runs only when there would be fewer than two items per thread.
  const int64_t nt = max_threads();
  const int64_t splits = std::min(group, std::max<int64_t>(1, (2 * nt + N * NKV - 1) / (N * NKV)));
  const int64_t run = (group + splits - 1) / splits, runs = (group + run - 1) / run;
  int64_t longest = 1;
  for (int64_t t = 0; t < N; ++t) longest = std::max(longest, pos[t] + 1);
  const int64_t min_items = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, longest * HS * run));
  parallel_for_range(N * NKV * runs, min_items, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> buf;  // this worker's scores (each item's own, then discarded)
    for (int64_t it = b; it < e; ++it) {
      const int64_t t = it / (NKV * runs), kh = (it / runs) % NKV, r = it % runs;
      const int64_t h0 = kh * group + r * run, nh = std::min(run, group - r * run);
      const int64_t n = pos[t] + 1, j0 = key_start ? key_start[t] : 0;
      if (static_cast<int64_t>(buf.size()) < nh * n) buf.resize(static_cast<size_t>(nh * n));
      float* s0 = buf.data();
      const ComputeDType dt = dtype[t];
      auto scores_fn = [&](const float* qh, int64_t heads, int64_t off, int64_t count, float* sc, int64_t lds) {
        if (dt == ComputeDType::F32)
          kern.attn_scores(qh, heads, static_cast<const float*>(k[t]) + off, kvs, count, HS, scale, sc, lds);
        else
          kern.attn_scores16(dt, qh, heads, static_cast<const uint16_t*>(k[t]) + off, kvs, count, HS, scale, sc, lds);
      };
      auto sums_fn = [&](const float* p, int64_t ldp, int64_t heads, int64_t off, int64_t count, float* o) {
        if (dt == ComputeDType::F32)
          kern.attn_weighted_sum(p, ldp, heads, static_cast<const float*>(v[t]) + off, kvs, count, HS, o);
        else
          kern.attn_weighted_sum16(dt, p, ldp, heads, static_cast<const uint16_t*>(v[t]) + off, kvs, count, HS, o);
      };
      attention_item(q + t * qs, out + t * qs, h0, nh, kh, NKV, HS, j0, n, s0, n, softcap, alibi, sinks, scores_fn,
                     sums_fn);
    }
  });
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t N) {
  const auto& k = kernels::active_activation_kernels();
  parallel_for_range(N, 16384, [&](int64_t b, int64_t e) { k.swiglu_forward(out + b, gate + b, up + b, e - b); });
}

void embed_scale_forward(float* x, int64_t n, int64_t hidden, ComputeDType dtype) {
  float scale = static_cast<float>(std::sqrt(static_cast<double>(hidden)));
  if (dtype != ComputeDType::F32) scale = kernels::round_to_dtype(scale, dtype);
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] * scale;
    x[i] = dtype == ComputeDType::F32 ? v : kernels::round_to_dtype(v, dtype);
  }
}

void softcap_forward(float* x, int64_t n, float cap, ComputeDType dtype) {
  auto r = [dtype](float v) { return dtype == ComputeDType::F32 ? v : kernels::round_to_dtype(v, dtype); };
  // (tanh over blocks of the array: the vectorized kernel, activation_kernels.h)
  const auto& k = kernels::active_activation_kernels();
  parallel_for_range(n, 16384, [&](int64_t b, int64_t e) {
    float t[1024];
    for (int64_t i0 = b; i0 < e; i0 += 1024) {
      const int64_t m = std::min<int64_t>(1024, e - i0);
      for (int64_t i = 0; i < m; ++i) t[i] = r(x[i0 + i] / cap);
      k.tanh(t, t, m);
      for (int64_t i = 0; i < m; ++i) x[i0 + i] = r(r(t[i]) * cap);
    }
  });
}

void layernorm_forward(float* out, float* stats, const float* inp, const float* weight, const float* bias, int64_t T,
                       int64_t C, float eps, ComputeDType dtype, float weight_offset) {
  for (int64_t t = 0; t < T; ++t) {
    const float* x = inp + t * C;
    float* o = out + t * C;
    double sum = 0.0;
    for (int64_t i = 0; i < C; ++i) sum += x[i];
    const float mean = static_cast<float>(sum / static_cast<double>(C));
    double ss = 0.0;
    for (int64_t i = 0; i < C; ++i) ss += static_cast<double>(x[i] - mean) * (x[i] - mean);
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(C)) + eps);
    if (stats) {
      stats[2 * t] = mean;
      stats[2 * t + 1] = r;
    }
    for (int64_t i = 0; i < C; ++i) {
      // (Nemotron's LayerNorm1P: the weight + 1, added in the weight's dtype)
      const float w = weight_offset == 0.0f ? weight[i] : kernels::round_to_dtype(weight_offset + weight[i], dtype);
      const float v = (x[i] - mean) * r * w + bias[i];
      o[i] = dtype == ComputeDType::F32 ? v : kernels::round_to_dtype(v, dtype);
    }
  }
}

namespace {
float torch_softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }
}  // namespace

float xielu_alpha_p(const XieluParams& xp) { return torch_softplus(xp.alpha_p); }
float xielu_alpha_n(const XieluParams& xp) { return xp.beta + torch_softplus(xp.alpha_n); }

void activation_forward(float* out, const float* x, int64_t N, Activation act, const XieluParams* xp) {
  if (act == Activation::Xielu) {  // (its coefficients once per call, not per thread or for other activations)
    if (!xp) fail("activation_forward", "xIELU needs its layer's parameters");
    const float c[4] = {xielu_alpha_p(*xp), xielu_alpha_n(*xp), xp->beta, xp->eps};
    const auto& k = kernels::active_activation_kernels();  // (activation_kernels.h)
    parallel_for_range(N, 16384, [&](int64_t b, int64_t e) { k.xielu_forward(x + b, out + b, e - b, c); });
    return;
  }
  // (element by element: the threads' ranges give the same values as one pass)
  parallel_for_range(N, 16384, [&](int64_t b, int64_t e) {
    switch (act) {
      case Activation::Xielu: break;  // (above)
      case Activation::Gelu: {  // torch: x * 0.5 * (1 + erf(x / sqrt 2)); erf vectorized (activation_kernels.h)
        const auto& k = kernels::active_activation_kernels();
        float t[1024];
        for (int64_t i0 = b; i0 < e; i0 += 1024) {
          const int64_t m = std::min<int64_t>(1024, e - i0);
          for (int64_t i = 0; i < m; ++i) t[i] = x[i0 + i] * 0.7071067811865476f;
          k.erf(t, t, m);
          for (int64_t i = 0; i < m; ++i) out[i0 + i] = x[i0 + i] * 0.5f * (1.0f + t[i]);
        }
        break;
      }
      case Activation::GeluTanh: {
        float t[1024];
        for (int64_t i0 = b; i0 < e; i0 += 1024) {
          const int64_t m = std::min<int64_t>(1024, e - i0);
          kernels::gelu_tanh_inner(x + i0, t, m);  // (vectorized: activation_kernels.h)
          for (int64_t i = 0; i < m; ++i) out[i0 + i] = 0.5f * x[i0 + i] * (1.0f + t[i]);
        }
        break;
      }
      case Activation::Relu:
        for (int64_t i = b; i < e; ++i) out[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
      case Activation::Relu2:  // torch.square(relu(x)) (the square computed, then selected: a conditional
                               // product stays a mispredicted branch under -ftrapping-math)
        for (int64_t i = b; i < e; ++i) {
          const float v = x[i], sq = v * v;
          out[i] = v > 0.0f ? sq : 0.0f;
        }
        break;
    }
  });
}

void geglu_forward(float* out, const float* gate, const float* up, int64_t N) {
  parallel_for_range(N, 16384, [&](int64_t b, int64_t e) {
    float t[1024];
    for (int64_t i0 = b; i0 < e; i0 += 1024) {
      const int64_t m = std::min<int64_t>(1024, e - i0);
      kernels::gelu_tanh_inner(gate + i0, t, m);  // (vectorized: activation_kernels.h)
      for (int64_t i = 0; i < m; ++i) out[i0 + i] = 0.5f * gate[i0 + i] * (1.0f + t[i]) * up[i0 + i];
    }
  });
}

void residual_forward(float* out, const float* a, const float* b, int64_t N) {
  for (int64_t i = 0; i < N; ++i) out[i] = a[i] + b[i];
}

}  // namespace qlora
