#include "model/moe_block.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "lora/lora_model.h"
#include "model/model.h"
#include "model/activation_kernels.h"
#include "model/gemm.h"
#include "model/ops.h"
#include "model/ops_backward.h"

namespace qlora {

namespace {

// Each token's chosen experts, in torch.topk's order (largest probability first).
struct Routing {
  int64_t T = 0, E = 0, K = 0;
  std::vector<float> probs;   // (T, E) softmax of the router logits, float32
  std::vector<int32_t> idx;   // (T, K) chosen experts
  std::vector<float> top;     // (T, K) their probabilities
  std::vector<float> sum;     // (T) the sum of top (norm_topk)
  std::vector<float> weight;  // (T, K) what scales each expert's output
  // Per expert: the (token, k) pairs it serves, tokens in increasing order.
  std::vector<std::vector<std::pair<int32_t, int32_t>>> rows;
  // Gemma 4: the router's input, round(round(norm(x_r) * scale) / sqrt(C)) (T, C), and the
  // weightless norm's rstd (T).
  std::vector<float> rin, rstd;
  // The sigmoid router (GLM-4.5, DeepSeek-V3): probs holds s = sigmoid(logits), top the chosen s,
  // and with a LoRA on the router (PEFT's ParamWrapper on mlp.gate.weight) h = A x (T, r).
  std::vector<float> lora_h;
};

// The most rows any one expert serves.
size_t most_rows(const Routing& g) {
  size_t n = 0;
  for (const auto& r : g.rows) n = std::max(n, r.size());
  return n;
}

// Each expert's (token, k) pairs from g.idx, tokens in increasing order.
void index_rows(Routing& g) {
  for (int64_t t = 0; t < g.T; ++t)
    for (int64_t k = 0; k < g.K; ++k)
      g.rows[static_cast<size_t>(g.idx[static_cast<size_t>(t * g.K + k)])].emplace_back(static_cast<int32_t>(t),
                                                                                      static_cast<int32_t>(k));
}

// GLM-4.5 / DeepSeek-V3's routing of one token (ModelSpec::moe_sigmoid_router) from s (E): the
// chosen experts in idx (K), as transformers' Glm4MoeTopkRouter picks them: each group scored by
// the sum of its two best s + bias, the topk_groups best groups (ties: the lower group), then the
// K best of their experts (ties: the lower expert).
void sigmoid_route(const ModelSpec& s, const float* sc, const float* bias, int32_t* idx) {
  const int64_t E = s.n_experts, G = s.moe_groups, per = E / G, K = s.experts_per_token;
  std::vector<float> choice(static_cast<size_t>(E)), gscore(static_cast<size_t>(G));
  for (int64_t e = 0; e < E; ++e) choice[static_cast<size_t>(e)] = sc[e] + bias[e];
  for (int64_t g = 0; g < G; ++g) {
    float b1 = -INFINITY, b2 = -INFINITY;
    for (int64_t e = g * per; e < (g + 1) * per; ++e) {
      const float v = choice[static_cast<size_t>(e)];
      if (v > b1) b2 = b1, b1 = v;
      else if (v > b2) b2 = v;
    }
    gscore[static_cast<size_t>(g)] = b1 + b2;
  }
  std::vector<int32_t> gorder(static_cast<size_t>(G));
  std::iota(gorder.begin(), gorder.end(), 0);
  std::partial_sort(gorder.begin(), gorder.begin() + s.moe_topk_groups, gorder.end(), [&](int32_t a, int32_t b) {
    return gscore[static_cast<size_t>(a)] > gscore[static_cast<size_t>(b)] || (gscore[static_cast<size_t>(a)] == gscore[static_cast<size_t>(b)] && a < b);
  });
  std::vector<int32_t> cand;
  for (int64_t i = 0; i < s.moe_topk_groups; ++i)
    for (int64_t e = gorder[static_cast<size_t>(i)] * per; e < (gorder[static_cast<size_t>(i)] + 1) * per; ++e)
      cand.push_back(static_cast<int32_t>(e));
  std::partial_sort(cand.begin(), cand.begin() + K, cand.end(), [&](int32_t a, int32_t b) {
    return choice[static_cast<size_t>(a)] > choice[static_cast<size_t>(b)] ||
           (choice[static_cast<size_t>(a)] == choice[static_cast<size_t>(b)] && a < b);
  });
  std::copy_n(cand.begin(), K, idx);
}

// p (E) = softmax of the router logits lg (E), float32, max subtracted (torch's softmax).
void softmax_row(const float* lg, float* p, int64_t E) {
  const float mx = *std::max_element(lg, lg + E);
  float z = 0.0f;
  for (int64_t e = 0; e < E; ++e) z += (p[e] = std::exp(lg[e] - mx));
  for (int64_t e = 0; e < E; ++e) p[e] /= z;
}

float rounded(float v, ComputeDType dtype) {
  round_activations(&v, 1, dtype);
  return v;
}

// A LoRA'd product's cache for the backward (no dropout: h = A x only), or none. The storage
// is kept and reused while it is large enough (a training step asks for one per expert per layer).
struct Cache {
  std::unique_ptr<LoraCacheStorage> store;
  LoraCache* get(const LoraLayer* lo, int64_t T) {
    if (!lo) return nullptr;
    if (!store || store->h.size() < static_cast<size_t>(T * lo->r))
      store = std::make_unique<LoraCacheStorage>(T, lo->in, lo->r, false);
    return &store->cache;
  }
};

// The LoRA temporaries of the op's products over T rows (the block's declared scratch is
// sized for the seven Linears).
LoraScratchStorage moe_lora_scratch(const BlockRun& r, const LoraModel* ad, int64_t T, bool backward) {
  LoraScratchFloats f;
  if (ad)
    for (const LoraLayer* lo : {ad->find_router(r.layer), ad->find_shared_gate(r.layer), ad->find_expert(r.layer, 0, 0),
                                ad->find_expert(r.layer, 0, 1)})
      if (lo) f.cover(T, lo->in, lo->out, lo->r, false, backward);
  return LoraScratchStorage(f);
}

// Gemma 4's router input (Gemma4TextRouter): a weightless RMSNorm of x_r (float32, rounded
// once), times router.scale (rounded), times hidden^-0.5 (rounded).
void gemma4_router_input(const BlockRun& r, const float* xr, Routing& g) {
  const ModelSpec& s = r.program->spec();
  const int64_t T = r.T, C = s.hidden;
  const std::vector<float>& scale = r.weights->router_scale;
  const float root = static_cast<float>(std::pow(static_cast<double>(C), -0.5));
  g.rin.resize(static_cast<size_t>(T * C));
  g.rstd.resize(static_cast<size_t>(T));
  const std::vector<float> ones(static_cast<size_t>(C), 1.0f);
  rmsnorm_forward(g.rin.data(), g.rstd.data(), xr, ones.data(), T, C, s.norm_eps, r.dtype, 0.0f, /*round_once=*/true);
  for (int64_t t = 0; t < T; ++t) {
    float* y = g.rin.data() + t * C;
    for (int64_t c = 0; c < C; ++c) y[c] *= scale[static_cast<size_t>(c)];
    round_activations(y, C, r.dtype);
    for (int64_t c = 0; c < C; ++c) y[c] *= root;
    round_activations(y, C, r.dtype);
  }
}

Routing route(const BlockRun& r, const float* x, const LoraScratch& lora_scratch, const LoraLayer* router_lora,
              LoraCache* router_cache, const float* router_in = nullptr) {
  const ModelSpec& s = r.program->spec();
  const LayerWeights& L = *r.weights;
  Routing g;
  g.T = r.T;
  g.E = s.n_experts;
  g.K = s.experts_per_token;
  const int64_t T = g.T, E = g.E, K = g.K;
  if (s.moe_gemma4) {
    check(router_in != nullptr, "MoE", "Gemma 4's router reads the block's stream");
    gemma4_router_input(r, router_in, g);
    x = g.rin.data();
  }
  std::vector<float> logits(static_cast<size_t>(T * E));
  g.probs.resize(static_cast<size_t>(T * E));
  g.idx.resize(static_cast<size_t>(T * K));
  g.top.resize(static_cast<size_t>(T * K));
  g.weight.resize(static_cast<size_t>(T * K));
  g.sum.assign(static_cast<size_t>(T), 1.0f);
  g.rows.assign(static_cast<size_t>(E), {});
  if (s.moe_f32_router()) {
    // (GLM-4.5, DeepSeek-V3, ERNIE 4.5: float32 throughout, x (W + scaling B A)^T with a LoRA on
    // the router's weight, as PEFT's ParamWrapper adapts that nn.Parameter)
    const int64_t C = s.hidden;
    const int64_t R = router_lora ? router_lora->r : 0;
    check(static_cast<int64_t>(L.router_f32.size()) == E * C && static_cast<int64_t>(L.router_score_bias.size()) == E,
          "MoE", "layer " + std::to_string(r.layer) + " has no float32 router");
    sgemm_nt(T, E, C, x, C, L.router_f32.data(), C, logits.data(), E, false);  // x W^T
    if (R > 0) {  // + scaling (x A^T) B^T
      g.lora_h.assign(static_cast<size_t>(T * R), 0.0f);
      sgemm_nt(T, R, C, x, C, router_lora->A.data(), C, g.lora_h.data(), R, false);
      std::vector<float> d(static_cast<size_t>(T * E));
      sgemm_nt(T, E, R, g.lora_h.data(), R, router_lora->B.data(), R, d.data(), E, false);
      for (int64_t i = 0; i < T * E; ++i) logits[static_cast<size_t>(i)] += router_lora->scaling * d[static_cast<size_t>(i)];
    }
    if (s.moe_biased_softmax || s.moe_softmax_f32) {
      // ERNIE 4.5: p = softmax; the top k of p + bias; p / max(sum, norm_min).
      // DeepSeek-V2: the top k of p (group_limited_greedy: among the moe_topk_groups groups of the
      // best single p, ties to the lower group), p x moe_routed_scale.
      const int64_t G = s.moe_softmax_f32 ? s.moe_groups : 1, per = E / G;
      std::vector<int32_t> order(static_cast<size_t>(E)), gorder(static_cast<size_t>(G));
      std::vector<float> choice(static_cast<size_t>(E)), gscore(static_cast<size_t>(G));
      for (int64_t t = 0; t < T; ++t) {
        float* p = g.probs.data() + t * E;
        softmax_row(logits.data() + t * E, p, E);
        for (int64_t e = 0; e < E; ++e) choice[static_cast<size_t>(e)] = p[e] + L.router_score_bias[static_cast<size_t>(e)];
        order.clear();
        if (G > 1) {  // (the experts of the best groups only)
          for (int64_t gi = 0; gi < G; ++gi)
            gscore[static_cast<size_t>(gi)] = *std::max_element(choice.begin() + gi * per, choice.begin() + (gi + 1) * per);
          std::iota(gorder.begin(), gorder.end(), 0);
          std::partial_sort(gorder.begin(), gorder.begin() + s.moe_topk_groups, gorder.end(), [&](int32_t a, int32_t b) {
            return gscore[static_cast<size_t>(a)] > gscore[static_cast<size_t>(b)] ||
                   (gscore[static_cast<size_t>(a)] == gscore[static_cast<size_t>(b)] && a < b);
          });
          std::sort(gorder.begin(), gorder.begin() + s.moe_topk_groups);
          for (int64_t i = 0; i < s.moe_topk_groups; ++i)
            for (int64_t e = gorder[static_cast<size_t>(i)] * per; e < (gorder[static_cast<size_t>(i)] + 1) * per; ++e)
              order.push_back(static_cast<int32_t>(e));
        } else {
          order.resize(static_cast<size_t>(E));
          std::iota(order.begin(), order.end(), 0);
        }
        std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int32_t a, int32_t b) {
          return choice[static_cast<size_t>(a)] > choice[static_cast<size_t>(b)] ||
                 (choice[static_cast<size_t>(a)] == choice[static_cast<size_t>(b)] && a < b);
        });
        float sum = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          g.idx[static_cast<size_t>(t * K + k)] = order[static_cast<size_t>(k)];
          sum += g.top[static_cast<size_t>(t * K + k)] = p[order[static_cast<size_t>(k)]];
        }
        if (s.moe_biased_softmax) g.sum[static_cast<size_t>(t)] = std::max(sum, s.moe_norm_min);
        else if (s.norm_topk) g.sum[static_cast<size_t>(t)] = sum;  // (Hunyuan's: the top k renormalized)
        for (int64_t k = 0; k < K; ++k) {
          float w = g.top[static_cast<size_t>(t * K + k)] / g.sum[static_cast<size_t>(t)] * s.moe_routed_scale;
          if (s.moe_round_weights) w = rounded(w, r.dtype);
          g.weight[static_cast<size_t>(t * K + k)] = w;
        }
      }
      index_rows(g);
      return g;
    }
    // (LFM2-MoE: each step rounded to the compute dtype, as its router runs in it; identity in float32)
    const bool in_dtype = s.moe_router_in_dtype;
    auto rd = [&](float v) { return in_dtype ? rounded(v, r.dtype) : v; };
    for (int64_t i = 0; i < T * E; ++i)
      g.probs[static_cast<size_t>(i)] = rd(1.0f / (1.0f + std::exp(-rd(logits[static_cast<size_t>(i)]))));
    for (int64_t t = 0; t < T; ++t) {
      const float* sc = g.probs.data() + t * E;
      int32_t* idx = g.idx.data() + t * K;
      sigmoid_route(s, sc, L.router_score_bias.data(), idx);
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += g.top[static_cast<size_t>(t * K + k)] = sc[idx[k]];
      g.sum[static_cast<size_t>(t)] = s.norm_topk ? rd(rd(sum) + s.moe_sigmoid_norm_eps) : 1.0f;
      for (int64_t k = 0; k < K; ++k)
        g.weight[static_cast<size_t>(t * K + k)] =
            rd((s.norm_topk ? rd(g.top[static_cast<size_t>(t * K + k)] / g.sum[static_cast<size_t>(t)])
                            : g.top[static_cast<size_t>(t * K + k)]) * s.moe_routed_scale);
    }
    index_rows(g);
    return g;
  }
  // (F.linear in the compute dtype, then softmax(float32))
  r.backend->linear_forward(logits.data(), x, T, L.router, router_lora, router_cache, false, nullptr, lora_scratch);
  round_activations(logits.data(), T * E, r.dtype);
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* lg = logits.data() + t * E;
    float* p = g.probs.data() + t * E;
    softmax_row(lg, p, E);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int32_t a, int32_t b) {
      return p[a] > p[b] || (p[a] == p[b] && a < b);
    });
    float sum = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      g.idx[static_cast<size_t>(t * K + k)] = order[static_cast<size_t>(k)];
      sum += g.top[static_cast<size_t>(t * K + k)] = p[order[static_cast<size_t>(k)]];
    }
    if (s.norm_topk) g.sum[static_cast<size_t>(t)] = sum;
    if (s.moe_llama4) {
      // (Llama 4: the largest logits -- softmax keeps their order -- and weights sigmoid(logit),
      // computed in float32 and rounded; top keeps the unrounded sigmoid for the backward)
      for (int64_t k = 0; k < K; ++k) {
        const float sk = 1.0f / (1.0f + std::exp(-lg[order[static_cast<size_t>(k)]]));
        g.top[static_cast<size_t>(t * K + k)] = sk;
        g.weight[static_cast<size_t>(t * K + k)] = rounded(sk, r.dtype);
      }
      continue;
    }
    if (s.moe_gpt_oss) {
      // softmax over the top logits (the same weights as top / sum, rounded as transformers'
      // GptOssTopKRouter computes them: in the logits' dtype); the backward's probs / top /
      // sum above describe the same function
      const float top0 = lg[order[0]];
      float z2 = 0.0f;
      for (int64_t k = 0; k < K; ++k) z2 += std::exp(lg[order[static_cast<size_t>(k)]] - top0);
      for (int64_t k = 0; k < K; ++k)
        g.weight[static_cast<size_t>(t * K + k)] = rounded(std::exp(lg[order[static_cast<size_t>(k)]] - top0) / z2, r.dtype);
      continue;
    }
    for (int64_t k = 0; k < K; ++k) {
      float w = g.top[static_cast<size_t>(t * K + k)];
      if (s.norm_topk) w /= sum;
      if (s.moe_round_weights) w = rounded(w, r.dtype);
      // (Gemma 4: times the expert's scale, in float32)
      if (s.moe_gemma4) w *= L.per_expert_scale[static_cast<size_t>(order[static_cast<size_t>(k)])];
      g.weight[static_cast<size_t>(t * K + k)] = w;
    }
  }
  index_rows(g);
  return g;
}

// gpt-oss's expert activation (ModelSpec::moe_gpt_oss), each step rounded to the compute
// dtype as transformers' GptOssExperts._apply_gate computes it in that dtype.
// (Whole arrays per step: rounding and exp are vectorized over them.)
void clamped_swiglu_forward(float* h, const float* gate, const float* up, int64_t N, float alpha, float limit,
                            ComputeDType dt) {
  std::vector<float> sg(static_cast<size_t>(N)), u1(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) sg[static_cast<size_t>(i)] = std::min(gate[i], limit) * alpha;
  round_activations(sg.data(), N, dt);
  for (float& v : sg) v = -v;
  kernels::active_activation_kernels().exp(sg.data(), sg.data(), N);
  for (float& v : sg) v = 1.0f / (1.0f + v);
  round_activations(sg.data(), N, dt);  // sigmoid(alpha g)
  for (int64_t i = 0; i < N; ++i) h[i] = std::min(gate[i], limit) * sg[static_cast<size_t>(i)];
  round_activations(h, N, dt);  // g * sigmoid(alpha g)
  for (int64_t i = 0; i < N; ++i) u1[static_cast<size_t>(i)] = std::clamp(up[i], -limit, limit) + 1.0f;
  round_activations(u1.data(), N, dt);
  for (int64_t i = 0; i < N; ++i) h[i] *= u1[static_cast<size_t>(i)];
  round_activations(h, N, dt);
}

// Its gradient (torch.clamp passes the gradient where the bound holds, equality included).
void clamped_swiglu_backward(float* dgate, float* dup, const float* dh, const float* gate, const float* up, int64_t N,
                             float alpha, float limit) {
  for (int64_t i = 0; i < N; ++i) {
    const float g = std::min(gate[i], limit), u = std::clamp(up[i], -limit, limit);
    const float sg = 1.0f / (1.0f + std::exp(-g * alpha));
    if (gate[i] <= limit) dgate[i] += dh[i] * (u + 1.0f) * (sg + g * alpha * sg * (1.0f - sg));
    if (up[i] >= -limit && up[i] <= limit) dup[i] += dh[i] * g * sg;
  }
}

// One expert's forward over its n gathered rows, keeping what its backward reads.
struct ExpertPass {
  // (n, C) (n, 2F) (n, F) (n, F) (n, F) (n, C); ungated experts (ModelSpec::moe_ungated): gu is the
  // up rows (n, F), gate and up stay empty
  std::vector<float> x, gu, gate, up, h, y;
  // Capacity for n rows up front: the experts' passes then reuse one allocation each instead of
  // growing through reallocations, which left the allocator's heap fragmented (measured: ~2% of
  // a no-checkpointing MoE run's peak RSS).
  void reserve(size_t n, const ModelSpec& s) {
    const int64_t C = s.hidden, F = s.expert_ffn, GF = s.moe_ungated ? 0 : F;
    for (auto [v, w] : {std::pair{&x, C}, std::pair{&gu, s.expert_gu_rows()}, std::pair{&gate, GF}, std::pair{&up, GF},
                        std::pair{&h, F}, std::pair{&y, C}})
      v->reserve(n * static_cast<size_t>(w));
  }
};

// An expert's input rows gathered from x: (Llama 4) each times its routing weight, rounded.
void gather_rows(const BlockRun& r, const Routing& g, const std::vector<std::pair<int32_t, int32_t>>& rows,
                 const float* x, std::vector<float>& dst) {
  const ModelSpec& s = r.program->spec();
  const int64_t n = static_cast<int64_t>(rows.size()), C = s.hidden;
  dst.resize(static_cast<size_t>(n * C));
  for (int64_t i = 0; i < n; ++i) {
    const auto [t, k] = rows[static_cast<size_t>(i)];
    float* d = dst.data() + i * C;
    std::copy_n(x + t * C, C, d);
    if (s.moe_llama4) {
      const float w = g.weight[static_cast<size_t>(t * g.K + k)];
      for (int64_t c = 0; c < C; ++c) d[c] *= w;
      round_activations(d, C, r.dtype);
    }
  }
}

void expert_gated_act(const BlockRun& r, ExpertPass& a, int64_t n);

void expert_forward(const BlockRun& r, int64_t e, const Routing& g, const float* x, ExpertPass& a,
                    const LoraScratch& lora_scratch, const LoraLayer* gu_lora, LoraCache* gu_cache,
                    const LoraLayer* down_lora, LoraCache* down_cache) {
  const ModelSpec& s = r.program->spec();
  const LayerWeights& L = *r.weights;
  Backend& be = *r.backend;
  const auto& rows = g.rows[static_cast<size_t>(e)];
  const int64_t n = static_cast<int64_t>(rows.size()), C = s.hidden, F = s.expert_ffn;
  gather_rows(r, g, rows, x, a.x);
  a.gu.resize(static_cast<size_t>(n * s.expert_gu_rows()));
  be.linear_forward(a.gu.data(), a.x.data(), n, L.expert_gate_up[static_cast<size_t>(e)], gu_lora, gu_cache, false,
                    nullptr, lora_scratch);
  be.round(a.gu.data(), n * s.expert_gu_rows(), r.dtype);
  a.h.resize(static_cast<size_t>(n * F));
  if (s.moe_ungated) {  // (Nemotron 3's: down(act(up x)), the MLP's activation)
    be.act_forward(s.act, a.h.data(), a.gu.data(), n * F, &L.xielu);
  } else {
    expert_gated_act(r, a, n);
  }
  be.round(a.h.data(), n * F, r.dtype);
  a.y.resize(static_cast<size_t>(n * C));
  be.linear_forward(a.y.data(), a.h.data(), n, L.expert_down[static_cast<size_t>(e)], down_lora, down_cache, false,
                    nullptr, lora_scratch);
  be.round(a.y.data(), n * C, r.dtype);
}

// A gated expert's gate and up halves of a.gu, and h = act(gate) * up (not yet rounded).
void expert_gated_act(const BlockRun& r, ExpertPass& a, int64_t n) {
  const ModelSpec& s = r.program->spec();
  Backend& be = *r.backend;
  const int64_t F = s.expert_ffn;
  a.gate.resize(static_cast<size_t>(n * F));
  a.up.resize(static_cast<size_t>(n * F));
  if (s.moe_gpt_oss) {  // (gate and up rows interleaved: LayerWeights)
    be.slice_forward(a.gate.data(), a.gu.data(), n, 2 * F, 0, 1, F, 2);
    be.slice_forward(a.up.data(), a.gu.data(), n, 2 * F, 1, 1, F, 2);
  } else {
    be.slice_forward(a.gate.data(), a.gu.data(), n, 2 * F, 0, F, 1, 0);
    be.slice_forward(a.up.data(), a.gu.data(), n, 2 * F, F, F, 1, 0);
  }
  if (s.moe_gpt_oss)
    clamped_swiglu_forward(a.h.data(), a.gate.data(), a.up.data(), n * F, s.swiglu_alpha, s.swiglu_limit, r.dtype);
  else
    be.gated_act_forward(s.mlp, a.h.data(), a.gate.data(), a.up.data(), n * F);  // (SwiGLU; Gemma 4's GeGLU)
}

void require_host(const BlockRun& r) {
  if (!r.backend->host_addressable())
    fail(r.backend->name(), "mixture-of-experts layers run on the CPU backend only for now (use --device cpu)");
}

// The shared expert's gate, sigmoid(round(shared_gate x)) rounded, per token.
std::vector<float> shared_gate(const BlockRun& r, const float* x, const LoraScratch& lora_scratch,
                               const LoraLayer* lora, LoraCache* cache) {
  std::vector<float> sg(static_cast<size_t>(r.T));
  r.backend->linear_forward(sg.data(), x, r.T, r.weights->shared_gate, lora, cache, false, nullptr, lora_scratch);
  round_activations(sg.data(), r.T, r.dtype);
  for (float& v : sg) v = rounded(1.0f / (1.0f + std::exp(-v)), r.dtype);
  return sg;
}

}  // namespace

// (Cache's storage is kept in the Caches below: one per LoRA'd product)
struct MoeSaved {
  int64_t layer = -1, T = -1;  // what the kept state is for (-1: nothing)
  Routing routing;
  std::vector<ExpertPass> experts;          // per expert, x left out (gathered again)
  std::vector<Cache> gu_cache, down_cache;  // per expert
  Cache router_cache, sg_cache;
};

void MoeSavedDeleter::operator()(MoeSaved* p) const { delete p; }
MoeSavedPtr make_moe_saved() { return MoeSavedPtr(new MoeSaved); }

int64_t moe_saved_floats(const ModelSpec& s, int64_t T, int64_t max_lora_r) {
  if (!s.moe()) return 0;
  const int64_t TK = T * s.experts_per_token, F = s.expert_ffn;
  // gate_up, gate, up, act (2F + F + F + F; ungated: up and act, 2F) and the output (C) per routed
  // row, the routing, and the LoRA caches (A x) of the router, shared gate and both expert products
  return TK * ((s.moe_ungated ? 2 : 5) * F + s.hidden) + T * (s.n_experts + 1) + 3 * TK + (2 * TK + 2 * T) * max_lora_r +
         (s.moe_gemma4 ? T * (s.hidden + 1) : 0);  // (Gemma 4: the router's input and its norm's rstd)
}

void moe_forward(const BlockRun& r, float* out, const float* x, const float* shared, const float* router_in) {
  require_host(r);
  const ModelSpec& s = r.program->spec();
  const int64_t T = r.T, C = s.hidden;
  const LoraModel* ad = r.adapter;
  LoraScratchStorage scratch = moe_lora_scratch(r, ad, T, false);
  const LoraScratch ls = scratch.view();
  MoeSaved* st = r.training ? r.moe_saved : nullptr;
  if (st) {
    st->layer = -1;  // (valid once complete)
    // The previous layer's products go: kept, each expert's vectors would hold the largest row
    // count any layer gave it, and with unbalanced routing those maxima sum to several times the
    // T * K rows one layer keeps (measured: 25 MiB held for 9 planned on bench-lfm2_moe).
    for (ExpertPass& p : st->experts) p = ExpertPass{};
    for (auto* caches : {&st->gu_cache, &st->down_cache})  // (their LoRA caches likewise)
      for (Cache& c : *caches) c.store.reset();
    st->experts.resize(static_cast<size_t>(s.n_experts));
    st->gu_cache.resize(static_cast<size_t>(s.n_experts));
    st->down_cache.resize(static_cast<size_t>(s.n_experts));
  }
  const LoraLayer* router_lora = ad ? ad->find_router(r.layer) : nullptr;
  Routing local = route(r, x, ls, router_lora, st ? st->router_cache.get(router_lora, T) : nullptr, router_in);
  const Routing& g = st ? (st->routing = std::move(local)) : local;
  std::fill(out, out + T * C, 0.0f);
  ExpertPass scratch_pass;
  if (!st) scratch_pass.reserve(most_rows(g), s);
  std::vector<float> wy(static_cast<size_t>(C));  // one routed row's weighted output
  for (int64_t e = 0; e < g.E; ++e) {
    const auto& rows = g.rows[static_cast<size_t>(e)];
    if (rows.empty()) continue;
    ExpertPass& a = st ? st->experts[static_cast<size_t>(e)] : scratch_pass;
    const LoraLayer* gu_lora = ad ? ad->find_expert(r.layer, e, 0) : nullptr;
    const LoraLayer* down_lora = ad ? ad->find_expert(r.layer, e, 1) : nullptr;
    const int64_t n = static_cast<int64_t>(rows.size());
    expert_forward(r, e, g, x, a, ls, gu_lora, st ? st->gu_cache[static_cast<size_t>(e)].get(gu_lora, n) : nullptr,
                   down_lora, st ? st->down_cache[static_cast<size_t>(e)].get(down_lora, n) : nullptr);
    if (st) a.x = {};  // (gathered again from the op's input, which the block keeps)
    if (s.moe_llama4) {  // (the weights scaled the inputs: the outputs summed as they are, rounded below)
      for (size_t i = 0; i < rows.size(); ++i) {
        float* o = out + rows[i].first * C;
        const float* y = a.y.data() + static_cast<int64_t>(i) * C;
        for (int64_t c = 0; c < C; ++c) o[c] += y[c];
      }
      continue;
    }
    if (s.moe_ungated) {  // (Nemotron 3: w y summed in float32, rounded below)
      for (size_t i = 0; i < rows.size(); ++i) {
        const auto [t, k] = rows[i];
        const float w = g.weight[static_cast<size_t>(t * g.K + k)];
        float* o = out + t * C;
        const float* y = a.y.data() + static_cast<int64_t>(i) * C;
        for (int64_t c = 0; c < C; ++c) o[c] += w * y[c];
      }
      continue;
    }
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto [t, k] = rows[i];
      const float w = g.weight[static_cast<size_t>(t * g.K + k)];
      float* o = out + t * C;
      const float* y = a.y.data() + static_cast<int64_t>(i) * C;
      for (int64_t c = 0; c < C; ++c) wy[static_cast<size_t>(c)] = w * y[c];
      round_activations(wy.data(), C, r.dtype);
      for (int64_t c = 0; c < C; ++c) o[c] += wy[static_cast<size_t>(c)];
      round_activations(o, C, r.dtype);
    }
  }
  if (s.moe_llama4 || s.moe_ungated) round_activations(out, T * C, r.dtype);  // (the experts' sum, in float32, rounded once)
  if (shared && !s.shared_expert_gate) {  // (GLM-4.5, DeepSeek: added as it is)
    for (int64_t t = 0; t < T; ++t) {
      float* o = out + t * C;
      const float* sh = shared + t * C;
      for (int64_t c = 0; c < C; ++c) o[c] += sh[c];
      round_activations(o, C, r.dtype);
    }
  } else if (shared) {
    const LoraLayer* sg_lora = ad ? ad->find_shared_gate(r.layer) : nullptr;
    const std::vector<float> sg = shared_gate(r, x, ls, sg_lora, st ? st->sg_cache.get(sg_lora, T) : nullptr);
    for (int64_t t = 0; t < T; ++t) {
      float* o = out + t * C;
      const float* sh = shared + t * C;
      for (int64_t c = 0; c < C; ++c) o[c] += rounded(sg[static_cast<size_t>(t)] * sh[c], r.dtype);
      round_activations(o, C, r.dtype);
    }
  }
  if (st) {
    st->layer = r.layer;
    st->T = T;
  }
}

void moe_backward(const BlockRun& r, LoraModel& adapter, float* dx, float* dshared, const float* dout,
                  const float* x, const float* shared, float* drouter_in, const float* router_in) {
  require_host(r);
  const ModelSpec& s = r.program->spec();
  const LayerWeights& L = *r.weights;
  Backend& be = *r.backend;
  const int64_t T = r.T, C = s.hidden, F = s.expert_ffn, K = s.experts_per_token, E = s.n_experts;
  LoraScratchStorage scratch = moe_lora_scratch(r, &adapter, T, true);
  const LoraScratch ls = scratch.view();
  // The forward's kept state, when it kept it for this layer and these tokens.
  MoeSaved* st = r.moe_saved && r.moe_saved->layer == r.layer && r.moe_saved->T == T ? r.moe_saved : nullptr;
  LoraLayer* router_lora = adapter.find_router(r.layer);
  Cache router_cache;
  LoraCache* rc = nullptr;
  Routing recomputed;
  if (st) {
    rc = router_lora ? &st->router_cache.store->cache : nullptr;
  } else {
    rc = router_cache.get(router_lora, T);
    recomputed = route(r, x, ls, router_lora, rc, router_in);
  }
  const Routing& g = st ? st->routing : recomputed;
  // The frozen weights' dequantized tiles (the block scratch's is sized for the seven Linears).
  const int64_t GU = s.expert_gu_rows();
  std::vector<float> tile(static_cast<size_t>(std::max({linear_backward_tile_floats(C, GU),
                                                         linear_backward_tile_floats(F, C),
                                                         linear_backward_tile_floats(C, E),
                                                         linear_backward_tile_floats(C, 1)})));
  std::vector<float> dweight(static_cast<size_t>(T * K), 0.0f);  // d loss / d (routing weight)
  ExpertPass a;
  std::vector<float> dy, dh, dgate, dup, dgu, dxe;
  {  // (one allocation each, for the expert with the most rows)
    const size_t n = most_rows(g);
    if (!st) a.reserve(n, s);
    const int64_t GF = s.moe_ungated ? 0 : F;
    for (auto [v, w] : {std::pair{&dy, C}, std::pair{&dh, F}, std::pair{&dgate, GF}, std::pair{&dup, GF},
                        std::pair{&dgu, GU}, std::pair{&dxe, C}})
      v->reserve(n * static_cast<size_t>(w));
  }
  for (int64_t e = 0; e < E; ++e) {
    const auto& rows = g.rows[static_cast<size_t>(e)];
    if (rows.empty()) continue;
    const int64_t n = static_cast<int64_t>(rows.size());
    LoraLayer* gu_lora = adapter.find_expert(r.layer, e, 0);
    LoraLayer* down_lora = adapter.find_expert(r.layer, e, 1);
    Cache gu_cache, down_cache;
    LoraCache* guc = nullptr;
    LoraCache* dc = nullptr;
    if (st) {  // the kept products; the rows gathered again
      ExpertPass& kept = st->experts[static_cast<size_t>(e)];
      std::swap(a, kept);
      gather_rows(r, g, rows, x, a.x);
      guc = gu_lora ? &st->gu_cache[static_cast<size_t>(e)].store->cache : nullptr;
      dc = down_lora ? &st->down_cache[static_cast<size_t>(e)].store->cache : nullptr;
    } else {
      guc = gu_cache.get(gu_lora, n);
      dc = down_cache.get(down_lora, n);
      expert_forward(r, e, g, x, a, ls, gu_lora, guc, down_lora, dc);
    }
    dy.assign(static_cast<size_t>(n * C), 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      const auto [t, k] = rows[static_cast<size_t>(i)];
      const float w = s.moe_llama4 ? 1.0f : g.weight[static_cast<size_t>(t * K + k)];  // (Llama 4: on the input)
      const float* d = dout + t * C;
      const float* y = a.y.data() + i * C;
      float dw = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        dy[static_cast<size_t>(i * C + c)] = w * d[c];
        dw += d[c] * y[c];
      }
      dweight[static_cast<size_t>(t * K + k)] = dw;
    }
    dh.assign(static_cast<size_t>(n * F), 0.0f);
    be.linear_backward(dh.data(), dy.data(), a.h.data(), n, L.expert_down[static_cast<size_t>(e)], down_lora, dc,
                       tile.data(), ls);
    dgu.assign(static_cast<size_t>(n * GU), 0.0f);
    if (s.moe_ungated) {  // (gu = up x, h = act(gu))
      be.act_backward(s.act, dgu.data(), dh.data(), a.gu.data(), n * F, &L.xielu);
    } else {
      dgate.assign(static_cast<size_t>(n * F), 0.0f);
      dup.assign(static_cast<size_t>(n * F), 0.0f);
      if (s.moe_gpt_oss)
        clamped_swiglu_backward(dgate.data(), dup.data(), dh.data(), a.gate.data(), a.up.data(), n * F, s.swiglu_alpha,
                                s.swiglu_limit);
      else
        be.gated_act_backward(s.mlp, dgate.data(), dup.data(), dh.data(), a.gate.data(), a.up.data(), n * F);
      if (s.moe_gpt_oss) {
        be.slice_backward(dgu.data(), dgate.data(), n, 2 * F, 0, 1, F, 2);
        be.slice_backward(dgu.data(), dup.data(), n, 2 * F, 1, 1, F, 2);
      } else {
        be.slice_backward(dgu.data(), dgate.data(), n, 2 * F, 0, F, 1, 0);
        be.slice_backward(dgu.data(), dup.data(), n, 2 * F, F, F, 1, 0);
      }
    }
    dxe.assign(static_cast<size_t>(n * C), 0.0f);
    be.linear_backward(dxe.data(), dgu.data(), a.x.data(), n, L.expert_gate_up[static_cast<size_t>(e)], gu_lora,
                       guc, tile.data(), ls);
    for (int64_t i = 0; i < n; ++i) {
      const auto [t, k] = rows[static_cast<size_t>(i)];
      float* d = dx + t * C;
      const float* src = dxe.data() + i * C;
      if (s.moe_llama4) {  // (the input was x w: dx += w dxs, dw = dxs . x)
        const float w = g.weight[static_cast<size_t>(t * K + k)];
        const float* xt = x + t * C;
        float dw = 0.0f;
        for (int64_t c = 0; c < C; ++c) {
          d[c] += w * src[c];
          dw += src[c] * xt[c];
        }
        dweight[static_cast<size_t>(t * K + k)] = dw;
        continue;
      }
      for (int64_t c = 0; c < C; ++c) d[c] += src[c];
    }
  }
  // Through the routing weights: w_k = top_k / sum (norm_topk) of p = softmax(logits).
  std::vector<float> dlogits(static_cast<size_t>(T * E), 0.0f), dp(static_cast<size_t>(E));
  if (s.moe_sigmoid_router) {
    // w_k = scale s_k / (sum_j s_j + eps) (norm_topk; eps moe_sigmoid_norm_eps) or scale s_k, s = sigmoid(logits): the
    // choice is piecewise constant; into x through the float32 router (no LoRA on it).
    for (int64_t t = 0; t < T; ++t) {
      const float* dw = dweight.data() + t * K;
      const float sum = g.sum[static_cast<size_t>(t)];
      float dot = 0.0f;
      if (s.norm_topk)
        for (int64_t k = 0; k < K; ++k) dot += dw[k] * g.top[static_cast<size_t>(t * K + k)];
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = g.idx[static_cast<size_t>(t * K + k)];
        const float sk = g.top[static_cast<size_t>(t * K + k)];
        const float ds = s.moe_routed_scale * (s.norm_topk ? (dw[k] * sum - dot) / (sum * sum) : dw[k]);
        dlogits[static_cast<size_t>(t * E + e)] += ds * sk * (1.0f - sk);
      }
    }
  }
  if (s.moe_llama4)  // w_k = sigmoid(logit_k) of the chosen logits (the choice is piecewise constant)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const float sk = g.top[static_cast<size_t>(t * K + k)];
        dlogits[static_cast<size_t>(t * E + g.idx[static_cast<size_t>(t * K + k)])] =
            dweight[static_cast<size_t>(t * K + k)] * sk * (1.0f - sk);
      }
  // (ERNIE 4.5: w_k = p_k / sum over p = softmax(logits), the same as norm_topk below; its
  // clamp at moe_norm_min (1e-12) never binds on a softmax's top k)
  for (int64_t t = 0; t < T && !s.moe_sigmoid_router && !s.moe_llama4; ++t) {
    std::fill(dp.begin(), dp.end(), 0.0f);
    float* dw = dweight.data() + t * K;
    if ((s.moe_biased_softmax || s.moe_softmax_f32) && s.moe_routed_scale != 1.0f)  // (DeepSeek-V2: w = p x scale)
      for (int64_t k = 0; k < K; ++k) dw[k] *= s.moe_routed_scale;
    if (s.moe_gemma4)  // (w = top / sum * per_expert_scale: the scale is frozen)
      for (int64_t k = 0; k < K; ++k)
        dw[k] *= L.per_expert_scale[static_cast<size_t>(g.idx[static_cast<size_t>(t * K + k)])];
    float dot = 0.0f;  // sum_k dw_k w_k (of the unrounded weights)
    const float sum = g.sum[static_cast<size_t>(t)];
    if (s.norm_topk)
      for (int64_t k = 0; k < K; ++k) dot += dw[k] * (g.top[static_cast<size_t>(t * K + k)] / sum);
    for (int64_t k = 0; k < K; ++k) dp[static_cast<size_t>(g.idx[static_cast<size_t>(t * K + k)])] =
        s.norm_topk ? (dw[k] - dot) / sum : dw[k];
    const float* p = g.probs.data() + t * E;
    float pd = 0.0f;
    for (int64_t e = 0; e < E; ++e) pd += p[e] * dp[static_cast<size_t>(e)];
    for (int64_t e = 0; e < E; ++e) dlogits[static_cast<size_t>(t * E + e)] = p[e] * (dp[static_cast<size_t>(e)] - pd);
  }
  if (s.moe_f32_router()) {  // into x through the float32 router (and its LoRA)
    const int64_t R = router_lora ? router_lora->r : 0;
    check(R == 0 || static_cast<int64_t>(g.lora_h.size()) == T * R, "MoE", "the router's LoRA input was not kept");
    sgemm_nn(T, C, E, dlogits.data(), E, L.router_f32.data(), C, dx, C, true);  // dx += dl W
    if (R > 0) {
      // dh = scaling dl B (T, R); dB += scaling dl^T h; dA += dh^T x; dx += dh A
      const float sc = router_lora->scaling;
      std::vector<float> dh(static_cast<size_t>(T * R)), dB(static_cast<size_t>(E * R));
      sgemm_nn(T, R, E, dlogits.data(), E, router_lora->B.data(), R, dh.data(), R, false);
      for (float& v : dh) v *= sc;
      sgemm_tn(E, R, T, dlogits.data(), E, g.lora_h.data(), R, dB.data(), R, false);
      for (int64_t i = 0; i < E * R; ++i) router_lora->dB[static_cast<size_t>(i)] += sc * dB[static_cast<size_t>(i)];
      sgemm_tn(R, C, T, dh.data(), R, x, C, router_lora->dA.data(), C, true);
      sgemm_nn(T, C, R, dh.data(), R, router_lora->A.data(), C, dx, C, true);
    }
  } else if (s.moe_gemma4) {  // into the router's input, then back through its scales and norm to x_r
    std::vector<float> dy(static_cast<size_t>(T * C), 0.0f);
    be.linear_backward(dy.data(), dlogits.data(), g.rin.data(), T, L.router, router_lora, rc, tile.data(), ls);
    const float root = static_cast<float>(std::pow(static_cast<double>(C), -0.5));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) dy[static_cast<size_t>(t * C + c)] *= root * L.router_scale[static_cast<size_t>(c)];
    const std::vector<float> ones(static_cast<size_t>(C), 1.0f);
    rmsnorm_backward(drouter_in, nullptr, dy.data(), router_in, ones.data(), g.rstd.data(), T, C, 0.0f);
  } else {
    be.linear_backward(dx, dlogits.data(), x, T, L.router, router_lora, rc, tile.data(), ls);
  }
  if (shared && !s.shared_expert_gate) {  // out += shared
    for (int64_t i = 0; i < T * C; ++i) dshared[i] += dout[i];
  } else if (shared) {  // out += sg * shared, sg = sigmoid(shared_gate x)
    LoraLayer* sg_lora = adapter.find_shared_gate(r.layer);
    Cache sg_cache;
    // (the gate's product is one value per token: computed again, its LoRA cache kept or not)
    LoraCache* sgc = st && sg_lora ? &st->sg_cache.store->cache : sg_cache.get(sg_lora, T);
    const std::vector<float> sg = shared_gate(r, x, ls, sg_lora, sgc);
    std::vector<float> dsg(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const float gt = sg[static_cast<size_t>(t)];
      const float* d = dout + t * C;
      const float* sh = shared + t * C;
      float* ds = dshared + t * C;
      float acc = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        ds[c] += gt * d[c];
        acc += d[c] * sh[c];
      }
      dsg[static_cast<size_t>(t)] = acc * gt * (1.0f - gt);
    }
    be.linear_backward(dx, dsg.data(), x, T, L.shared_gate, sg_lora, sgc, tile.data(), ls);
  }
  if (st) st->layer = -1;  // (used: its experts' products were moved out)
}

}  // namespace qlora
