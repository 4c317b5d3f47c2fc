// The forward interpreter of a BlockProgram, shared by inference and training.
#include <algorithm>

#include "base/error.h"
#include "lora/lora_model.h"
#include "model/block_run.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/ops.h"

namespace qlora {

void norm_forward(const ModelSpec& s, float* out, float* stats, const float* in, const float* weight,
                  const float* bias, int64_t rows, int64_t C, ComputeDType dtype) {
  if (s.norm == NormKind::LayerNorm)
    layernorm_forward(out, stats, in, weight, bias, rows, C, s.norm_eps, dtype);
  else
    rmsnorm_forward(out, stats, in, weight, rows, C, s.norm_eps, dtype, s.norm_offset());
}

void block_forward(const BlockRun& r) {
  const BlockProgram& p = *r.program;
  const ModelSpec& s = p.spec();
  const LayerWeights& L = *r.weights;
  const int64_t T = r.T;
  auto n_of = [&](int b) { return p.floats(b, T, T); };
  for (const BlockOp& o : p.ops()) {
    float* out = r.buf[static_cast<size_t>(o.out)];
    const float* in0 = o.in0 >= 0 ? r.buf[static_cast<size_t>(o.in0)] : nullptr;
    const float* in1 = o.in1 >= 0 ? r.buf[static_cast<size_t>(o.in1)] : nullptr;
    switch (o.kind) {
      case BlockOpKind::Norm: {
        float* stats = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        norm_forward(s, out, stats, in0, L.norm(o.norm).data(), L.norm_bias(o.norm).data(), T * o.rows_per_token, o.width,
                     r.dtype);
        break;
      }
      case BlockOpKind::Linear: {
        const QuantLinear& W = L.linear(o.linear);
        W.forward(out, in0, T);
        if (r.adapter)
          if (const LoraLayer* lo = r.adapter->find(r.layer, static_cast<BlockLinear>(o.linear)))
            lora_forward(out, r.lora_caches ? &r.lora_caches[o.linear] : nullptr, *lo, in0, T, r.training, r.rng);
        break;
      }
      case BlockOpKind::Rope:
        rope_forward(out, r.cos, r.sin, T, o.heads, s.head_dim, o.width);
        break;
      case BlockOpKind::Attention: {
        const float* k = in1;
        const float* v = r.buf[static_cast<size_t>(o.in2)];
        float* probs = o.aux >= 0 ? r.buf[static_cast<size_t>(o.aux)] : nullptr;
        const int64_t QD = s.q_dim(), KVD = s.kv_dim();
        if (r.cache) {  // append this step's keys and values, attend over everything cached
          float* kc = r.cache->keys(r.layer);
          float* vc = r.cache->values(r.layer);
          std::copy_n(k, T * KVD, kc + r.pos0 * KVD);
          std::copy_n(v, T * KVD, vc + r.pos0 * KVD);
          attention_forward(out, probs, in0, kc, vc, T, r.pos0 + T, r.pos0, s.n_heads, s.n_kv_heads, s.head_dim,
                            r.key_start, s.attn_scale, s.attn_softcap, p.alibi());
          break;
        }
        // Each sequence of the batch attends to itself only.
        int64_t t0 = 0, p0 = 0;
        const std::span<const int64_t> segs = r.segments.empty() ? std::span<const int64_t>(&T, 1) : r.segments;
        for (int64_t n : segs) {
          attention_forward(out + t0 * QD, probs ? probs + p0 : nullptr, in0 + t0 * QD, k + t0 * KVD, v + t0 * KVD, n,
                            n, 0, s.n_heads, s.n_kv_heads, s.head_dim, r.key_start ? r.key_start + t0 : nullptr,
                            s.attn_scale, s.attn_softcap, p.alibi());
          t0 += n;
          p0 += s.n_heads * n * n;
        }
        break;
      }
      case BlockOpKind::GatedAct:
        if (s.mlp == MlpKind::GeGLU)
          geglu_forward(out, in0, in1, n_of(o.out));
        else
          swiglu_forward(out, in0, in1, n_of(o.out));
        break;
      case BlockOpKind::Residual:
        residual_forward(out, in0, in1, n_of(o.out));
        break;
      case BlockOpKind::Act:
        activation_forward(out, in0, n_of(o.out), s.act);
        break;
      case BlockOpKind::Slice: {
        const int64_t in_w = p.buffers()[static_cast<size_t>(o.in0)].width, out_w = o.groups * o.width;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t g = 0; g < o.groups; ++g)
            std::copy_n(in0 + t * in_w + g * o.group_stride + o.offset, o.width, out + t * out_w + g * o.width);
        break;
      }
    }
    if (o.round) round_activations(out, n_of(o.out), r.dtype);
  }
}

}  // namespace qlora
