#include "model/ops_backward.h"


#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "model/attention_gemm.h"
#include "model/activation_kernels.h"
#include "model/gemm.h"
#include "model/ops.h"
#include "model/linear_kernels.h"

namespace qlora {

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t T, int64_t C, float weight_offset) {
  // o_i = w_i x_i r, r = (sum_j x_j^2 / C + eps)^(-1/2), dr/dx_i = -r^3 x_i / C, so
  // dx_i = r w_i do_i - (r^3 / C) x_i sum_j w_j do_j x_j.
  parallel_for_range(T, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* x = inp + t * C;
      const float* d = dout + t * C;
      float* dx = dinp + t * C;
      const float r = rstd[t];
      double dot = 0.0;
      for (int64_t i = 0; i < C; ++i) dot += static_cast<double>((weight_offset + weight[i]) * d[i]) * x[i];
      const float k = static_cast<float>(dot * r * r * r / static_cast<double>(C));
      for (int64_t i = 0; i < C; ++i) dx[i] += r * (weight_offset + weight[i]) * d[i] - k * x[i];
    }
  });
  if (dweight) {
    for (int64_t t = 0; t < T; ++t) {
      const float* x = inp + t * C;
      const float* d = dout + t * C;
      const float r = rstd[t];
      for (int64_t i = 0; i < C; ++i) dweight[i] += d[i] * (x[i] * r);
    }
  }
}

void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                   bool interleaved) {
  // Forward: (y0, y1) = (x0 c - x1 s, x1 c + x0 s); its transpose is the rotation by -angle:
  // (dx0, dx1) = (dy0 c + dy1 s, dy1 c - dy0 s).
  const int64_t half = (rot > 0 ? rot : HS) / 2;
  const int64_t step = interleaved ? 2 : 1, partner = interleaved ? 1 : half;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int64_t h = 0; h < NH; ++h) {
      float* g = dx + (t * NH + h) * HS;
      for (int64_t i = 0; i < half; ++i) {
        float* a = g + i * step;
        const float g0 = a[0], g1 = a[partner];
        a[0] = g0 * c[i] + g1 * s[i];
        a[partner] = g1 * c[i] - g0 * s[i];
      }
    }
  }
}


namespace {
bool attention_backward_uses_gemm(int64_t T) { return T >= kAttentionGemmMinTokens && sgemm_has_library(); }
}  // namespace

int64_t attention_backward_scratch_floats(int64_t T, int64_t Tk, float softcap) {
  return softcap > 0.0f && attention_backward_uses_gemm(T) ? T * Tk : 0;
}

void attention_backward(float* dq, float* dk, float* dv, float* datt_scratch, float* raw_scratch, const float* dout,
                        const float* q, const float* k, const float* v, const float* att, int64_t T, int64_t Tk,
                        int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start, float scale,
                        float softcap) {
  check(NKV > 0 && NH % NKV == 0, "attention_backward", "NH must be a multiple of NKV");
  if (!(scale > 0.0f)) scale = 1.0f / std::sqrt(static_cast<float>(HS));
  check(q_pos0 >= 0 && q_pos0 + T <= Tk, "attention_backward", "queries extend past the keys (q_pos0 + T > Tk)");
  check(att != nullptr, "attention_backward", "needs the probabilities cached by attention_forward");
  check(attention_backward_scratch_floats(T, Tk, softcap) == 0 || raw_scratch != nullptr, "attention_backward",
        "a softcap needs the raw-score scratch");
  if (attention_backward_uses_gemm(T)) {
    attention_backward_gemm(dq, dk, dv, datt_scratch, raw_scratch, dout, q, k, v, att, T, Tk, q_pos0, NH, NKV, HS, key_start, scale,
                            softcap);
    return;
  }
  const int64_t group = NH / NKV;
  const int64_t qs = NH * HS, kvs = NKV * HS;
  const auto& kern = kernels::active_linear_kernels();

  // Pass 1, one (token, head) per item, disjoint writes (a row of datt, a row of dq):
  //   dP_j = dout · v_j; dS_j = P_j (dP_j - sum_l P_l dP_l) (softmax backward);
  //   datt_j = dS_j * scale = d loss / d (q · k_j); dq += sum_j datt_j k_j.
  const int64_t items = T * NH;
  const int64_t min_items = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, Tk * HS));
  parallel_for_range(items, min_items, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t t = it / NH, h = it % NH, kh = h / group;
      const int64_t n = q_pos0 + t + 1;
      const int64_t j0 = key_start ? key_start[t] : 0;
      const float* p = att + (h * T + t) * Tk;
      float* da = datt_scratch + (h * T + t) * Tk;
      const float* go = dout + t * qs + h * HS;
      for (int64_t j = 0; j < j0; ++j) da[j] = 0.0f;
      double s = 0.0;
      for (int64_t j = j0; j < n; ++j) {
        da[j] = kern.dot(go, v + j * kvs + kh * HS, HS);
        s += static_cast<double>(p[j]) * da[j];
      }
      const float sf = static_cast<float>(s);
      float* gq = dq + t * qs + h * HS;
      const float* qv = q + t * qs + h * HS;
      for (int64_t j = j0; j < n; ++j) {
        float f = scale;
        if (softcap > 0.0f) {  // through cap * tanh(s / cap)
          const float th = std::tanh(kern.dot(qv, k + j * kvs + kh * HS, HS) * scale / softcap);
          f *= 1.0f - th * th;
        }
        da[j] = p[j] * (da[j] - sf) * f;
        kern.axpy(da[j], k + j * kvs + kh * HS, gq, HS);
      }
      for (int64_t j = n; j < Tk; ++j) da[j] = 0.0f;
    }
  });

  // Pass 2, one (key row, kv head) per item, disjoint writes (a row of dk and of dv), summing
  // over the query heads of the group and the queries that attend key j (q_pos0 + t >= j):
  //   dk_j += sum datt[h, t, j] q[t, h]; dv_j += sum att[h, t, j] dout[t, h].
  // (With key_start, queries outside key j's example have att = datt = 0 there: skipped.)
  const int64_t kitems = Tk * NKV;
  const int64_t kmin = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, T * group * HS));
  parallel_for_range(kitems, kmin, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t j = it / NKV, kh = it % NKV;
      float* gk = dk + j * kvs + kh * HS;
      float* gv = dv + j * kvs + kh * HS;
      const int64_t t0 = std::max<int64_t>(0, j - q_pos0);
      for (int64_t h = kh * group; h < (kh + 1) * group; ++h)
        for (int64_t t = t0; t < T; ++t) {
          if (key_start && key_start[t] > j) continue;
          const float a = att[(h * T + t) * Tk + j];
          const float da = datt_scratch[(h * T + t) * Tk + j];
          kern.axpy(da, q + t * qs + h * HS, gk, HS);
          kern.axpy(a, dout + t * qs + h * HS, gv, HS);
        }
    }
  });
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N) {
  const auto& k = kernels::active_activation_kernels();
  parallel_for_range(N, 16384, [&](int64_t b, int64_t e) {
    k.swiglu_backward(dgate + b, dup + b, dout + b, gate + b, up + b, e - b);
  });
}

void layernorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* stats,
                        int64_t T, int64_t C, float weight_offset) {
  parallel_for_range(T, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* x = inp + t * C;
      const float* d = dout + t * C;
      float* dx = dinp + t * C;
      const float mean = stats[2 * t], r = stats[2 * t + 1];
      double s1 = 0.0, s2 = 0.0;  // sums of w dout and of w dout xhat
      for (int64_t i = 0; i < C; ++i) {
        const double wd = static_cast<double>(weight_offset + weight[i]) * d[i];
        s1 += wd;
        s2 += wd * ((x[i] - mean) * r);
      }
      const float m1 = static_cast<float>(s1 / static_cast<double>(C)), m2 = static_cast<float>(s2 / static_cast<double>(C));
      for (int64_t i = 0; i < C; ++i) dx[i] += r * ((weight_offset + weight[i]) * d[i] - m1 - (x[i] - mean) * r * m2);
    }
  });
}

void activation_backward(float* dx, const float* dout, const float* x, int64_t N, Activation act, const XieluParams* xp) {
  if (act == Activation::Xielu) {
    if (!xp) fail("activation_backward", "xIELU needs its layer's parameters");
    const float ap = xielu_alpha_p(*xp), an = xielu_alpha_n(*xp), beta = xp->beta, eps = xp->eps;
    // x > 0: 2 ap x + beta; x < eps: (exp(x) - 1) an + beta; eps <= x <= 0: -an + beta (min's branch
    // is the constant there)
    const float c[4] = {ap, an, beta, eps};
    const auto& k = kernels::active_activation_kernels();  // (vectorized: activation_kernels.h)
    parallel_for_range(N, 16384, [&](int64_t b, int64_t e) { k.xielu_backward(dx + b, dout + b, x + b, e - b, c); });
    return;
  }
  constexpr float kBeta = 0.7978845608028654f, kKappa = 0.044715f;
  if (act == Activation::GeluTanh) {  // (its tanh vectorized, a block at a time: activation_kernels.h)
    parallel_for_range(N, 16384, [&](int64_t b, int64_t e) {
      float t[1024];
      for (int64_t i0 = b; i0 < e; i0 += 1024) {
        const int64_t m = std::min<int64_t>(1024, e - i0);
        kernels::gelu_tanh_inner(x + i0, t, m);
        for (int64_t j = 0; j < m; ++j) {
          const float g = x[i0 + j], th = t[j];
          dx[i0 + j] += dout[i0 + j] * (0.5f * (1.0f + th) + 0.5f * g * (1.0f - th * th) * kBeta * (1.0f + 3.0f * kKappa * g * g));
        }
      }
    });
    return;
  }
  if (act == Activation::Relu || act == Activation::Relu2) {  // (branch-free selects: vectorizable)
    const bool sq = act == Activation::Relu2;
    parallel_for_range(N, 16384, [&, sq](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float g = x[i], twice = 2.0f * g, slope = sq ? twice : 1.0f;
        dx[i] += dout[i] * (g > 0.0f ? slope : 0.0f);
      }
    });
    return;
  }
  if (act == Activation::Gelu) {  // (erf and exp vectorized, a block at a time: activation_kernels.h)
    const auto& k = kernels::active_activation_kernels();
    parallel_for_range(N, 16384, [&](int64_t b, int64_t e) {
      float t[1024], g2[1024];
      for (int64_t i0 = b; i0 < e; i0 += 1024) {
        const int64_t m = std::min<int64_t>(1024, e - i0);
        for (int64_t j = 0; j < m; ++j) {
          const float g = x[i0 + j];
          t[j] = g * 0.7071067811865476f;
          g2[j] = -0.5f * g * g;
        }
        k.erf(t, t, m);
        k.exp(g2, g2, m);
        // 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
        for (int64_t j = 0; j < m; ++j)
          dx[i0 + j] += dout[i0 + j] * (0.5f * (1.0f + t[j]) + x[i0 + j] * g2[j] * 0.3989422804014327f);
      }
    });
    return;
  }
  parallel_for_range(N, 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = x[i];
      float dg = 0.0f;
      switch (act) {
        case Activation::Gelu: break;  // (above)
        case Activation::GeluTanh: {
          const float th = std::tanh(kBeta * (g + kKappa * g * g * g));
          dg = 0.5f * (1.0f + th) + 0.5f * g * (1.0f - th * th) * kBeta * (1.0f + 3.0f * kKappa * g * g);
          break;
        }
        case Activation::Relu: dg = g > 0.0f ? 1.0f : 0.0f; break;
        case Activation::Relu2: dg = g > 0.0f ? 2.0f * g : 0.0f; break;
        case Activation::Xielu: break;  // (above)
      }
      dx[i] += dout[i] * dg;
    }
  });
}

void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  parallel_for_range(N, 16384, [&](int64_t b, int64_t e) {
    float t[1024];
    for (int64_t i0 = b; i0 < e; i0 += 1024) {
      const int64_t m = std::min<int64_t>(1024, e - i0);
      kernels::gelu_tanh_inner(gate + i0, t, m);  // (vectorized: activation_kernels.h)
      for (int64_t j = 0; j < m; ++j) {
        const int64_t i = i0 + j;
        const float g = gate[i], th = t[j];
        const float gelu = 0.5f * g * (1.0f + th);
        const float dgelu = 0.5f * (1.0f + th) + 0.5f * g * (1.0f - th * th) * kBeta * (1.0f + 3.0f * kKappa * g * g);
        dgate[i] += dout[i] * up[i] * dgelu;
        dup[i] += dout[i] * gelu;
      }
    }
  });
}

void residual_backward(float* da, float* db, const float* dout, int64_t N) {
  if (da)
    for (int64_t i = 0; i < N; ++i) da[i] += dout[i];
  if (db)
    for (int64_t i = 0; i < N; ++i) db[i] += dout[i];
}

namespace {

// Both matmul backwards run on the GEMM library of model/gemm.h when the build has one
// (one call each, ~2-4x faster on these layouts). Otherwise, on the SIMD "dot-product rows"
// GEMM of linear_kernels.h,
// y[m, n] = sum_k x[m, k] * w[n, k], with the operand that is not laid out along k
// transposed one panel of kPanel output columns at a time (thread-local scratch of
// kPanel * K floats, never a whole transposed matrix), then added into the gradient.
constexpr int64_t kPanel = 64;

// C[m, n0 + n] += y[m, n] for a panel.
void add_panel(float* C, int64_t ldc, int64_t M, int64_t n0, int64_t nb, const float* y) {
  for (int64_t m = 0; m < M; ++m) {
    float* c = C + m * ldc + n0;
    const float* src = y + m * nb;
    for (int64_t n = 0; n < nb; ++n) c[n] += src[n];
  }
}

// Panels of N columns across threads: each costs about M * kPanel * K multiply-adds; split
// only when a thread gets ~1M of them.
int64_t min_panels(int64_t M, int64_t K) {
  return std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, M * kPanel * K));
}

// Below this many tokens, transposing W costs as much as the product: plain axpy rows.
constexpr int64_t kMinTokensForGemm = 8;

}  // namespace

void matmul_backward_input(float* dinp, const float* dout, const float* W, int64_t T, int64_t in, int64_t out,
                           int64_t dout_stride, int64_t w_stride) {
  // dinp[t, i] += sum_o dout[t, o] W[o, i].
  const int64_t ld = dout_stride ? dout_stride : out;
  const int64_t wld = w_stride ? w_stride : in;
  if (T <= 0 || in <= 0 || out <= 0) return;
  const auto& kern = kernels::active_linear_kernels();
  if (T < kMinTokensForGemm) {
    // Few tokens: each row of W is read once per token, straight into dinp.
    parallel_for_range(in, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t t = 0; t < T; ++t)
        for (int64_t o = 0; o < out; ++o) kern.axpy(dout[t * ld + o], W + o * wld + i0, dinp + t * in + i0, i1 - i0);
    });
    return;
  }
  if (sgemm_has_library()) {
    sgemm_nn(T, in, out, dout, ld, W, wld, dinp, in, /*accumulate=*/true);
    return;
  }
  const int64_t panels = (in + kPanel - 1) / kPanel;
  parallel_for_range(panels, min_panels(T, out), [&](int64_t p0, int64_t p1) {
    std::vector<float> wt(static_cast<size_t>(kPanel * out)), y(static_cast<size_t>(T * kPanel));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t i0 = p * kPanel, nb = std::min(kPanel, in - i0);
      for (int64_t o = 0; o < out; ++o)  // wt (nb, out) = W[:, i0:i0+nb]ᵀ
        for (int64_t i = 0; i < nb; ++i) wt[i * out + o] = W[o * wld + i0 + i];
      kern.gemm_rows(dout, ld, T, wt.data(), out, nb, out, y.data(), nb);
      add_panel(dinp, in, T, i0, nb, y.data());
    }
  });
}

void matmul_backward_weight(float* dW, const float* dout, const float* inp, int64_t T, int64_t in, int64_t out) {
  // dW[o, i] += sum_t dout[t, o] inp[t, i]: rows of doutᵀ (out, T) dotted with rows of inpᵀ.
  if (T <= 0 || in <= 0 || out <= 0) return;
  if (sgemm_has_library()) {
    sgemm_tn(out, in, T, dout, out, inp, in, dW, in, /*accumulate=*/true);
    return;
  }
  const auto& kern = kernels::active_linear_kernels();
  std::vector<float> dt(static_cast<size_t>(out * T));  // doutᵀ (out, T)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) dt[o * T + t] = dout[t * out + o];
  const int64_t panels = (in + kPanel - 1) / kPanel;
  parallel_for_range(panels, min_panels(out, T), [&](int64_t p0, int64_t p1) {
    std::vector<float> xt(static_cast<size_t>(kPanel * T)), y(static_cast<size_t>(out * kPanel));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t i0 = p * kPanel, nb = std::min(kPanel, in - i0);
      for (int64_t t = 0; t < T; ++t)  // xt (nb, T) = inp[:, i0:i0+nb]ᵀ
        for (int64_t i = 0; i < nb; ++i) xt[i * T + t] = inp[t * in + i0 + i];
      kern.gemm_rows(dt.data(), T, out, xt.data(), T, nb, T, y.data(), nb);
      add_panel(dW, in, out, i0, nb, y.data());
    }
  });
}

void matmul_backward_input_ref(float* dinp, const float* dout, const float* W, int64_t T, int64_t in, int64_t out,
                               int64_t dout_stride) {
  const int64_t ld = dout_stride ? dout_stride : out;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < in; ++i) {
      float s = 0.0f;
      for (int64_t o = 0; o < out; ++o) s += dout[t * ld + o] * W[o * in + i];
      dinp[t * in + i] += s;
    }
}

void matmul_backward_weight_ref(float* dW, const float* dout, const float* inp, int64_t T, int64_t in,
                                int64_t out) {
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      float s = 0.0f;
      for (int64_t t = 0; t < T; ++t) s += dout[t * out + o] * inp[t * in + i];
      dW[o * in + i] += s;
    }
}

float cross_entropy_forward_backward(float* losses, float* dlogits, const float* logits, const int* targets,
                                     int64_t T, int64_t V, int ignore_index) {
  int64_t valid = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (targets[t] == ignore_index) continue;
    if (targets[t] < 0 || targets[t] >= V)
      fail("cross_entropy", "target " + std::to_string(targets[t]) + " at position " + std::to_string(t) +
                                " is outside the vocabulary of " + std::to_string(V));
    ++valid;
  }
  const float inv_n = valid ? 1.0f / static_cast<float>(valid) : 0.0f;
  std::vector<double> row_loss(static_cast<size_t>(std::max<int64_t>(T, 0)), 0.0);
  const auto& kexp = kernels::active_activation_kernels();
  parallel_for_range(T, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, V)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* x = logits + t * V;
      float* g = dlogits + t * V;
      const int tgt = targets[t];
      if (tgt == ignore_index) {
        for (int64_t j = 0; j < V; ++j) g[j] = 0.0f;
        continue;
      }
      float mx = x[0];
      for (int64_t j = 1; j < V; ++j) mx = std::max(mx, x[j]);
      // Read what the loss needs from the row before writing it (dlogits may alias logits).
      const float xt = x[tgt];
      // g = exp(x - mx) (expf, vectorized: activation_kernels.h), then summed in order.
      for (int64_t j = 0; j < V; ++j) g[j] = x[j] - mx;
      kexp.exp(g, g, V);
      double sum = 0.0;
      for (int64_t j = 0; j < V; ++j) sum += g[j];
      row_loss[t] = std::log(sum) + static_cast<double>(mx) - static_cast<double>(xt);
      const float f = static_cast<float>(1.0 / sum) * inv_n;
      for (int64_t j = 0; j < V; ++j) g[j] *= f;
      g[tgt] -= inv_n;
    }
  });
  double total = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    if (losses) losses[t] = static_cast<float>(row_loss[t]);
    total += row_loss[t];
  }
  return valid ? static_cast<float>(total / static_cast<double>(valid)) : 0.0f;
}

}  // namespace qlora
