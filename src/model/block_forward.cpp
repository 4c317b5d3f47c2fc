// The forward interpreter of a BlockProgram, shared by inference and training: each op is
// one call to the run's backend.
#include <algorithm>

#include "base/error.h"
#include "base/float_formats.h"
#include "lora/lora_model.h"
#include "model/block_run.h"
#include "model/delta_net.h"
#include "model/mamba1.h"
#include "model/mamba2.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/moe_block.h"

namespace qlora {

SsmShape ssm_shape(const ModelSpec& s) {
  SsmShape m;
  m.H = s.la_v_heads;
  m.P = s.la_v_dim;
  m.G = s.la_k_heads;
  m.N = s.la_k_dim;
  m.dt_min = s.la_dt_min;
  m.dt_max = s.la_dt_max;
  return m;
}

Ssm1Shape ssm1_shape(const ModelSpec& s) {
  Ssm1Shape m;
  m.D = s.la_value_dim();
  m.N = s.la_k_dim;
  return m;
}

DeltaRuleShape delta_rule_shape(const ModelSpec& s) {
  DeltaRuleShape d;
  d.Hk = s.la_k_heads;
  d.Hv = s.la_v_heads;
  d.dk = s.la_k_dim;
  d.dv = s.la_v_dim;
  return d;
}

AttentionShape attention_heads(const BlockProgram& p, const BlockOp& o) {
  const ModelSpec& s = p.spec();
  AttentionShape a;
  a.NH = o.heads > 0 ? o.heads : s.n_heads;
  a.NKV = o.kv_heads > 0 ? o.kv_heads : s.n_kv_heads;
  a.HS = o.head_dim > 0 ? o.head_dim : s.head_dim;
  a.scale = s.attn_scale;
  a.softcap = s.attn_softcap;
  a.alibi = p.alibi();
  return a;
}

void block_forward(const BlockRun& r) {
  const BlockProgram& p = *r.program;
  const ModelSpec& s = p.spec();
  const LayerWeights& L = *r.weights;
  Backend& be = *r.backend;
  const int64_t T = r.T;
  auto n_of = [&](int b) { return p.floats_on(b, r.layer, T, T); };
  const std::vector<BlockOp>& ops = p.ops();
  for (size_t oi = 0; oi < ops.size(); ++oi) {
    const BlockOp& o = ops[oi];
    if (!o.runs_on(s, r.layer)) continue;  // (a hybrid model's other kind of layer)
    float* out = r.buf[static_cast<size_t>(o.out)];
    const float* in0 = o.in0 >= 0 ? r.buf[static_cast<size_t>(o.in0)] : nullptr;
    const float* in1 = o.in1 >= 0 ? r.buf[static_cast<size_t>(o.in1)] : nullptr;
    switch (o.kind) {
      case BlockOpKind::Norm: {
        float* stats = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        // (a Unit norm stays unrounded: the ScaleColumns after it rounds once)
        be.norm_forward(s, out, stats, in0, L.norm(o.norm).data(), L.norm_bias(o.norm).data(), T * o.rows_per_token,
                        o.width, o.norm == NormRole::Unit ? ComputeDType::F32 : r.dtype,  // (VHead: rounded)
                        s.qk_norm_round_once && (o.norm == NormRole::QHead || o.norm == NormRole::KHead));
        break;
      }
      case BlockOpKind::ScaleColumns: {
        const std::vector<float>& w = L.norm(o.norm);
        be.scale_columns(out, in0, w.data(), T, static_cast<int64_t>(w.size()));
        break;
      }
      case BlockOpKind::Linear: {
        // This op and the Linear ops right after it that read the same buffer (q/k/v,
        // gate/up) go to the backend as one group.
        size_t end = oi + 1;
        while (end < ops.size() && ops[end].kind == BlockOpKind::Linear && ops[end].in0 == o.in0 &&
               ops[end].mixer == o.mixer && ops[end].runs_on(s, r.layer))  // (Gemma 4's shared-KV layers skip k, v)
          ++end;
        Backend::LinearForwardItem items[kBlockLinearCount];
        size_t n = 0;
        for (size_t j = oi; j < end; ++j) {
          const BlockOp& g = ops[j];
          const LoraLayer* lo = r.adapter ? r.adapter->find(r.layer, static_cast<BlockLinear>(g.linear)) : nullptr;
          items[n++] = {r.buf[static_cast<size_t>(g.out)], &L.linear(g.linear), lo,
                        lo && r.lora_caches ? &r.lora_caches[g.linear] : nullptr};
        }
        be.linear_forward_same_input(std::span(items, n), in0, T, r.training, r.rng, r.scratch.lora);
        for (size_t j = oi; j + 1 < end; ++j)
          if (ops[j].round) be.round(r.buf[static_cast<size_t>(ops[j].out)], n_of(ops[j].out), r.dtype);
        oi = end - 1;  // the last op of the group is rounded below, as every op
        break;
      }
      case BlockOpKind::Rope:
        // (a NoPE layer: q and k as projected)
        if (s.layer_rotates(r.layer))
          be.rope_forward(out + o.offset, r.cos, r.sin, T, o.heads, o.head_dim, o.width, s.rope_interleaved);
        // (Ministral 3: q * scale(position), rounded; Llama 4: on its NoPE layers only)
        if (o.query && r.q_scale && s.layer_q_pos_scaled(r.layer)) {
          const int64_t W = o.heads * o.head_dim;
          for (int64_t t = 0; t < T; ++t)
            if (r.q_scale[t] != 1.0f) {
              float* row = out + t * W;
              for (int64_t i = 0; i < W; ++i) row[i] *= r.q_scale[t];
              be.round(row, W, r.dtype);
            }
        }
        break;
      case BlockOpKind::Attention: {
        const float* k = in1;
        const float* v = r.buf[static_cast<size_t>(o.in2)];
        float* probs = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        AttentionShape a = attention_heads(p, o);
        const int64_t QD = a.NH * a.HS, KVD = a.NKV * a.HS;
        const int64_t kv_layer = s.kv_layer(r.layer);  // (hybrid models cache their attention layers only)
        // (Gemma 4's shared-KV layers: the producer layer, earlier in this pass, cached them)
        const bool append = !s.layer_kv_shared(r.layer);
        if (!L.attn_sinks.empty()) a.sinks = L.attn_sinks.data();
        // Appends n rows of keys and values (positions pos..) to `cache` and attends the n
        // queries over everything cached.
        auto attend_cached = [&](KVCache& cache, int64_t pos, int64_t n, const int32_t* key_start, float* o,
                                 float* pr, const float* q, const float* kr, const float* vr) {
          a.T = n;
          a.Tk = pos + n;
          a.q_pos0 = pos;
          a.key_start = key_start;
          a.kv_capacity = cache.capacity();
          const ComputeDType kvt = cache.dtype();
          if (kvt != ComputeDType::F32) {  // a 16-bit cache (host memory: KVCache checks)
            uint16_t* kc = cache.keys16(kv_layer);
            uint16_t* vc = cache.values16(kv_layer);
            if (append) {
              convert_from_f32(to_dtype(kvt), kr, kc + pos * KVD, static_cast<size_t>(n * KVD));
              convert_from_f32(to_dtype(kvt), vr, vc + pos * KVD, static_cast<size_t>(n * KVD));
            }
            be.attention_forward_kv16(a, o, pr, r.scratch.scores, q, kc, vc, kvt);
            return;
          }
          float* kc = cache.keys(kv_layer);
          float* vc = cache.values(kv_layer);
          if (append) {
            be.copy(kc + pos * KVD, kr, n * KVD);
            be.copy(vc + pos * KVD, vr, n * KVD);
          }
          be.attention_forward(a, o, pr, r.scratch.scores, q, kc, vc);
        };
        if (r.cache) {  // append this step's keys and values, attend over everything cached
          attend_cached(*r.cache, r.pos0, T, r.key_start, out, probs, in0, k, v);
          break;
        }
        if (!r.caches.empty()) {  // one token of each sequence, each over its own cache
          check(static_cast<int64_t>(r.caches.size()) == T && !probs, "batched decoding",
                "needs one cache per row and no stored probabilities");
          std::vector<Backend::DecodeRow> rows(static_cast<size_t>(T));
          for (int64_t t = 0; t < T; ++t) {  // append each row's key and value to its cache
            KVCache& c = *r.caches[static_cast<size_t>(t)];
            const int64_t pos = c.length();
            Backend::DecodeRow& d = rows[static_cast<size_t>(t)];
            d.pos = pos;
            d.capacity = c.capacity();
            d.dtype = c.dtype();
            if (d.dtype != ComputeDType::F32) {
              uint16_t* kc = c.keys16(kv_layer);
              uint16_t* vc = c.values16(kv_layer);
              if (append) {
                convert_from_f32(to_dtype(d.dtype), k + t * KVD, kc + pos * KVD, static_cast<size_t>(KVD));
                convert_from_f32(to_dtype(d.dtype), v + t * KVD, vc + pos * KVD, static_cast<size_t>(KVD));
              }
              d.k = kc;
              d.v = vc;
            } else {
              float* kc = c.keys(kv_layer);
              float* vc = c.values(kv_layer);
              if (append) {
                be.copy(kc + pos * KVD, k + t * KVD, KVD);
                be.copy(vc + pos * KVD, v + t * KVD, KVD);
              }
              d.k = kc;
              d.v = vc;
            }
          }
          be.attention_decode_batch(a, rows, r.key_start, out, r.scratch.scores, in0);
          break;
        }
        // Each sequence of the batch attends to itself only.
        int64_t t0 = 0, p0 = 0;
        const std::span<const int64_t> segs = r.segments.empty() ? std::span<const int64_t>(&T, 1) : r.segments;
        for (int64_t n : segs) {
          a.T = a.Tk = n;
          a.key_start = r.key_start ? r.key_start + t0 : nullptr;
          be.attention_forward(a, out + t0 * QD, probs ? probs + p0 : nullptr, r.scratch.scores, in0 + t0 * QD,
                               k + t0 * KVD, v + t0 * KVD);
          t0 += n;
          p0 += a.NH * n * n;
        }
        break;
      }
      case BlockOpKind::GatedAct:
        be.gated_act_forward(s.mlp, out, in0, in1, n_of(o.out));
        break;
      case BlockOpKind::Residual:
        be.residual_forward(out, in0, in1, n_of(o.out));
        break;
      case BlockOpKind::Act:
        be.act_forward(s.act, out, in0, n_of(o.out), &r.weights->xielu);
        break;
      case BlockOpKind::Clamp:
        be.clamp(out, in0, n_of(o.out), o.factor);
        break;
      case BlockOpKind::Scale:
        be.copy(out, in0, n_of(o.out));
        be.scale(out, n_of(o.out), o.layer_factor ? L.layer_scalar : o.factor);
        break;
      case BlockOpKind::PleMul: {
        check(r.ple != nullptr, "per-layer inputs", "the layer's per-layer inputs were not given");
        check(be.host_addressable(), "per-layer inputs", std::string("run on the CPU backend only, not on ") + be.name());
        const int64_t n = n_of(o.out);
        for (int64_t i = 0; i < n; ++i) out[i] = in0[i] * r.ple[i];
        break;
      }
      case BlockOpKind::Moe:
        moe_forward(r, out, in0, in1, o.in2 >= 0 ? r.buf[static_cast<size_t>(o.in2)] : nullptr);
        break;
      case BlockOpKind::CausalConv:
      case BlockOpKind::DeltaRule:
      case BlockOpKind::SsmScan:
      case BlockOpKind::Ssm1Scan: {
        check(be.host_addressable(),
              s.la_short_conv ? "short convolution" : s.la_mamba2 ? "Mamba2 layer" : s.la_mamba1 ? "Mamba layer" : "gated DeltaNet",
              std::string("runs on the CPU backend only, not on ") + be.name());
        const bool conv = o.kind == BlockOpKind::CausalConv;
        const DeltaRuleShape sh = delta_rule_shape(s);
        const int64_t CD = s.la_conv_dim(), K = s.la_conv_kernel, VD = s.la_value_dim(), H = s.la_v_heads;
        const float* in2 = o.in2 >= 0 ? r.buf[static_cast<size_t>(o.in2)] : nullptr;
        const float* conv_bias = L.la_conv_bias.empty() ? nullptr : L.la_conv_bias.data();
        // n tokens from row t0 of the buffers, continuing `state` (a cache's; null: from zeros).
        auto run = [&](int64_t t0, int64_t n, float* state) {
          if (conv)
            causal_conv_forward(out + t0 * CD, in0 + t0 * CD, n, CD, L.la_conv.data(), conv_bias, K, state, state != nullptr,
                                !s.la_short_conv, r.dtype);
          else if (o.kind == BlockOpKind::Ssm1Scan)
            ssm1_scan_forward(ssm1_shape(s), out + t0 * VD, in0 + t0 * VD, in1 + t0 * VD, in2 + t0 * 2 * s.la_k_dim,
                              L.la_A.data(), L.la_D.data(), n, state ? state + (K - 1) * CD : nullptr, r.dtype);
          else if (o.kind == BlockOpKind::SsmScan)
            ssm_scan_forward(ssm_shape(s), out + t0 * VD, in0 + t0 * CD, in1 + t0 * H, L.la_A_log.data(),
                             L.la_dt_bias.data(), L.la_D.data(), n, state ? state + (K - 1) * CD : nullptr, r.dtype);
          else
            delta_rule_forward(sh, out + t0 * VD, in0 + t0 * CD, in1 + t0 * H, in2 + t0 * H, L.la_A_log.data(),
                               L.la_dt_bias.data(), n, state ? state + (K - 1) * CD : nullptr, r.dtype);
        };
        const int64_t sl = s.state_layer(r.layer);
        if (r.cache) {
          run(0, T, r.cache->state(sl));
        } else if (!r.caches.empty()) {  // batched decoding: each row continues its own sequence
          for (int64_t t = 0; t < T; ++t) run(t, 1, r.caches[static_cast<size_t>(t)]->state(sl));
        } else {  // training: each sequence of the batch (each packed example) from zeros
          int64_t t0 = 0;
          for (int64_t n : !r.recurrent_segments.empty() ? r.recurrent_segments
                           : r.segments.empty()          ? std::span<const int64_t>(&T, 1)
                                                         : r.segments) {
            run(t0, n, nullptr);
            t0 += n;
          }
        }
        break;
      }
      case BlockOpKind::GatedNorm: {
        float* stats = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        gated_norm_forward(out, stats, in0, in1, L.la_norm.data(), T * o.rows_per_token, o.width, s.norm_eps, r.dtype);
        break;
      }
      case BlockOpKind::SsmBcdtNorm: {
        check(be.host_addressable(), "Mamba layer", std::string("runs on the CPU backend only, not on ") + be.name());
        float* stats = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        ssm1_norm_forward(out, stats, in0, (o.rows_per_token == 1 ? L.la_dt_norm : L.la_bc_norm).data(), T,
                          o.rows_per_token, o.width, s.la_bcdt_eps, r.dtype);
        break;
      }
      case BlockOpKind::SsmNorm: {
        float* stats = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        ssm_norm_forward(out, stats, in0, in1, L.la_norm.data(), T, s.la_value_dim(), s.la_k_heads, s.norm_eps, r.dtype);
        break;
      }
      case BlockOpKind::OutputGate:
        check(be.host_addressable(), "gated attention", std::string("runs on the CPU backend only, not on ") + be.name());
        output_gate_forward(out, in0, in1, n_of(o.out), r.dtype);
        break;
      case BlockOpKind::Mul: {
        check(be.host_addressable(), "elementwise product", std::string("runs on the CPU backend only, not on ") + be.name());
        const int64_t n = n_of(o.out);
        for (int64_t i = 0; i < n; ++i) out[i] = in0[i] * in1[i];
        break;
      }
      case BlockOpKind::Gather: {
        check(be.host_addressable(), "column gather", std::string("runs on the CPU backend only, not on ") + be.name());
        const std::vector<int32_t>& cols = p.gather_columns(o.gather);
        const int64_t W = static_cast<int64_t>(cols.size()), Win = p.buffers()[static_cast<size_t>(o.in0)].width;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < W; ++j) out[t * W + j] = in0[t * Win + cols[static_cast<size_t>(j)]];
        break;
      }
      case BlockOpKind::Concat: {
        check(be.host_addressable(), "latent attention", std::string("runs on the CPU backend only, not on ") + be.name());
        const int64_t G = o.groups, A = o.width, B = o.width1, W = G * (A + B);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t g = 0; g < G; ++g) {
            float* dst = out + t * W + g * (A + B);
            std::copy_n(in0 + (t * G + g) * A, A, dst);
            if (!in1) std::fill_n(dst + A, B, 0.0f);
            else std::copy_n(in1 + (o.broadcast ? t * B : (t * G + g) * B), B, dst + A);
          }
        break;
      }
      case BlockOpKind::Slice:
        be.slice_forward(out, in0, T, p.buffers()[static_cast<size_t>(o.in0)].width, o.offset, o.width, o.groups,
                         o.group_stride);
        break;
    }
    const BlockOp& last = ops[oi];
    if (last.round) be.round(r.buf[static_cast<size_t>(last.out)], n_of(last.out), r.dtype);
  }
}

}  // namespace qlora
