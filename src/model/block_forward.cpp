// The forward interpreter of a BlockProgram, shared by inference and training: each op is
// one call to the run's backend.
#include <algorithm>

#include "base/error.h"
#include "base/float_formats.h"
#include "lora/lora_model.h"
#include "model/block_run.h"
#include "model/kv_cache.h"
#include "model/model.h"

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
        be.norm_forward(s, out, stats, in0, L.norm(o.norm).data(), L.norm_bias(o.norm).data(), T * o.rows_per_token,
                        o.width, r.dtype);
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
        be.rope_forward(out, r.cos, r.sin, T, o.heads, s.head_dim, o.width);
        break;
      case BlockOpKind::Attention: {
        const float* k = in1;
        const float* v = r.buf[static_cast<size_t>(o.in2)];
        float* probs = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        const int64_t QD = s.q_dim(), KVD = s.kv_dim();
        AttentionShape a = attention_heads(p);
        if (r.cache) {  // append this step's keys and values, attend over everything cached
          a.T = T;
          a.Tk = r.pos0 + T;
          a.q_pos0 = r.pos0;
          a.key_start = r.key_start;
          a.kv_capacity = r.cache->capacity();
          const ComputeDType kvt = r.cache->dtype();
          if (kvt != ComputeDType::F32) {  // a 16-bit cache (host memory: KVCache checks)
            uint16_t* kc = r.cache->keys16(r.layer);
            uint16_t* vc = r.cache->values16(r.layer);
            convert_from_f32(to_dtype(kvt), k, kc + r.pos0 * KVD, static_cast<size_t>(T * KVD));
            convert_from_f32(to_dtype(kvt), v, vc + r.pos0 * KVD, static_cast<size_t>(T * KVD));
            be.attention_forward_kv16(a, out, probs, r.scratch.scores, in0, kc, vc, kvt);
            break;
          }
          float* kc = r.cache->keys(r.layer);
          float* vc = r.cache->values(r.layer);
          be.copy(kc + r.pos0 * KVD, k, T * KVD);
          be.copy(vc + r.pos0 * KVD, v, T * KVD);
          be.attention_forward(a, out, probs, r.scratch.scores, in0, kc, vc);
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
