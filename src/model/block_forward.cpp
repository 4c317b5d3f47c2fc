// The forward interpreter of a BlockProgram, shared by inference and training: each op is
// one call to the run's backend.
#include <algorithm>

#include "base/error.h"
#include "base/float_formats.h"
#include "lora/lora_model.h"
#include "model/block_run.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/moe_block.h"

namespace qlora {

AttentionShape attention_heads(const BlockProgram& p) {
  const ModelSpec& s = p.spec();
  AttentionShape a;
  a.NH = s.n_heads;
  a.NKV = s.n_kv_heads;
  a.HS = s.head_dim;
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
  auto n_of = [&](int b) { return p.floats(b, T, T); };
  const std::vector<BlockOp>& ops = p.ops();
  for (size_t oi = 0; oi < ops.size(); ++oi) {
    const BlockOp& o = ops[oi];
    float* out = r.buf[static_cast<size_t>(o.out)];
    const float* in0 = o.in0 >= 0 ? r.buf[static_cast<size_t>(o.in0)] : nullptr;
    const float* in1 = o.in1 >= 0 ? r.buf[static_cast<size_t>(o.in1)] : nullptr;
    switch (o.kind) {
      case BlockOpKind::Norm: {
        float* stats = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        // (a Unit norm stays unrounded: the ScaleColumns after it rounds once)
        be.norm_forward(s, out, stats, in0, L.norm(o.norm).data(), L.norm_bias(o.norm).data(), T * o.rows_per_token,
                        o.width, o.norm == NormRole::Unit ? ComputeDType::F32 : r.dtype);
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
        while (end < ops.size() && ops[end].kind == BlockOpKind::Linear && ops[end].in0 == o.in0) ++end;
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
        if (!s.layer_rotates(r.layer)) break;  // (a NoPE layer: q and k as projected)
        be.rope_forward(out, r.cos, r.sin, T, o.heads, s.head_dim, o.width, s.rope_interleaved);
        if (o.query && r.q_scale) {  // (Ministral 3: q * scale(position), rounded)
          const int64_t W = o.heads * s.head_dim;
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
        const int64_t QD = s.q_dim(), KVD = s.kv_dim();
        AttentionShape a = attention_heads(p);
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
            uint16_t* kc = cache.keys16(r.layer);
            uint16_t* vc = cache.values16(r.layer);
            convert_from_f32(to_dtype(kvt), kr, kc + pos * KVD, static_cast<size_t>(n * KVD));
            convert_from_f32(to_dtype(kvt), vr, vc + pos * KVD, static_cast<size_t>(n * KVD));
            be.attention_forward_kv16(a, o, pr, r.scratch.scores, q, kc, vc, kvt);
            return;
          }
          float* kc = cache.keys(r.layer);
          float* vc = cache.values(r.layer);
          be.copy(kc + pos * KVD, kr, n * KVD);
          be.copy(vc + pos * KVD, vr, n * KVD);
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
              uint16_t* kc = c.keys16(r.layer);
              uint16_t* vc = c.values16(r.layer);
              convert_from_f32(to_dtype(d.dtype), k + t * KVD, kc + pos * KVD, static_cast<size_t>(KVD));
              convert_from_f32(to_dtype(d.dtype), v + t * KVD, vc + pos * KVD, static_cast<size_t>(KVD));
              d.k = kc;
              d.v = vc;
            } else {
              float* kc = c.keys(r.layer);
              float* vc = c.values(r.layer);
              be.copy(kc + pos * KVD, k + t * KVD, KVD);
              be.copy(vc + pos * KVD, v + t * KVD, KVD);
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
          p0 += s.n_heads * n * n;
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
        be.act_forward(s.act, out, in0, n_of(o.out));
        break;
      case BlockOpKind::Clamp:
        be.clamp(out, in0, n_of(o.out), o.factor);
        break;
      case BlockOpKind::Scale:
        be.copy(out, in0, n_of(o.out));
        be.scale(out, n_of(o.out), o.factor);
        break;
      case BlockOpKind::Moe:
        moe_forward(r, out, in0, in1);
        break;
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
