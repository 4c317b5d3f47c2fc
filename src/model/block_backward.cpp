// The backward interpreter of a BlockProgram: the forward's ops in reverse, each through its
// hand-written backward on the run's backend. Rounding to the compute dtype is the identity
// here (straight-through, as autograd treats .to(dtype)).
#include <algorithm>

#include "base/error.h"
#include "lora/lora_model.h"
#include "model/block_run.h"
#include "model/delta_net.h"
#include "model/mamba1.h"
#include "model/mamba2.h"
#include "model/ops_backward.h"
#include "model/model.h"
#include "model/moe_block.h"

namespace qlora {

void block_backward(const BlockRun& r, LoraModel& adapter, const std::vector<float*>& grad) {
  const BlockProgram& p = *r.program;
  const ModelSpec& s = p.spec();
  const LayerWeights& L = *r.weights;
  Backend& be = *r.backend;
  const int64_t T = r.T;
  for (int b = 0; b < static_cast<int>(p.buffers().size()); ++b)
    if (b != p.output() && grad[static_cast<size_t>(b)])
      be.zero(grad[static_cast<size_t>(b)], p.batch_floats(b, T, 0));  // (no gradient of probabilities)
  auto buf = [&](int b) -> const float* { return r.buf[static_cast<size_t>(b)]; };
  auto g = [&](int b) -> float* { return grad[static_cast<size_t>(b)]; };
  const auto& ops = p.ops();
  for (auto it = ops.rbegin(); it != ops.rend(); ++it) {
    const BlockOp& o = *it;
    if (!o.runs_on(s, r.layer)) continue;
    const float* dy = g(o.out);
    switch (o.kind) {
      case BlockOpKind::Norm:
        be.norm_backward(s, g(o.in0), dy, buf(o.in0), L.norm(o.norm).data(), buf(o.aux), T * o.rows_per_token,
                         o.width);
        break;
      case BlockOpKind::Linear: {
        LoraLayer* lo = adapter.find(r.layer, static_cast<BlockLinear>(o.linear));
        be.linear_backward(g(o.in0), dy, buf(o.in0), T, L.linear(o.linear), lo,
                           lo ? &r.lora_caches[o.linear] : nullptr, r.scratch.weight_tile, r.scratch.lora);
        break;
      }
      case BlockOpKind::Rope:  // in place: the gradient of the rotated values becomes the unrotated one's
        if (o.query && r.q_scale && s.layer_q_pos_scaled(r.layer)) {  // through q * scale(position)
          const int64_t W = o.heads * o.head_dim;
          for (int64_t t = 0; t < T; ++t)
            if (r.q_scale[t] != 1.0f)
              for (int64_t i = 0; i < W; ++i) g(o.out)[t * W + i] *= r.q_scale[t];
        }
        if (s.layer_rotates(r.layer))
          be.rope_backward(g(o.out) + o.offset, r.cos, r.sin, T, o.heads, o.head_dim, o.width, s.rope_interleaved);
        break;
      case BlockOpKind::Attention: {
        AttentionShape a = attention_heads(p, o);
        const int64_t QD = a.NH * a.HS, KVD = a.NKV * a.HS;
        int64_t t0 = 0, p0 = 0;
        const std::span<const int64_t> segs = r.segments.empty() ? std::span<const int64_t>(&T, 1) : r.segments;
        for (int64_t n : segs) {
          a.T = a.Tk = n;
          a.key_start = r.key_start ? r.key_start + t0 : nullptr;
          be.attention_backward(a, g(o.in0) + t0 * QD, g(o.in1) + t0 * KVD, g(o.in2) + t0 * KVD, r.scratch.dprobs,
                                r.scratch.raw_scores, dy + t0 * QD, buf(o.in0) + t0 * QD, buf(o.in1) + t0 * KVD,
                                buf(o.in2) + t0 * KVD, buf(o.aux) + p0);
          t0 += n;
          p0 += a.NH * n * n;
        }
        // (Gemma 4: what the shared-KV layers' attention sent back to this producer's keys and values)
        if (r.shared_dk) be.axpy(g(o.in1), 1.0f, r.shared_dk, T * KVD);
        if (r.shared_dv) be.axpy(g(o.in2), 1.0f, r.shared_dv, T * KVD);
        break;
      }
      case BlockOpKind::GatedAct:
        be.gated_act_backward(s.mlp, g(o.in0), g(o.in1), dy, buf(o.in0), buf(o.in1), p.floats_on(o.out, r.layer, T, T));
        break;
      case BlockOpKind::Residual:
        be.residual_backward(g(o.in0), g(o.in1), dy, p.floats_on(o.out, r.layer, T, T));
        break;
      case BlockOpKind::Act:
        be.act_backward(s.act, g(o.in0), dy, buf(o.in0), p.floats_on(o.out, r.layer, T, T), &r.weights->xielu);
        break;
      case BlockOpKind::Clamp:
        be.clamp_backward(g(o.in0), dy, buf(o.in0), p.floats_on(o.out, r.layer, T, T), o.factor);
        break;
      case BlockOpKind::Scale:
        be.axpy(g(o.in0), o.layer_factor ? L.layer_scalar : o.factor, dy, p.floats_on(o.out, r.layer, T, T));
        break;
      case BlockOpKind::ScaleColumns: {
        const std::vector<float>& w = L.norm(o.norm);
        be.scale_columns_backward(g(o.in0), dy, w.data(), T, static_cast<int64_t>(w.size()));
        break;
      }
      case BlockOpKind::PleMul: {  // out = in0 * ple
        const int64_t n = p.floats_on(o.out, r.layer, T, T);
        float* din = g(o.in0);
        for (int64_t i = 0; i < n; ++i) din[i] += dy[i] * r.ple[i];
        if (r.dple)
          for (int64_t i = 0; i < n; ++i) r.dple[i] += dy[i] * buf(o.in0)[i];
        break;
      }
      case BlockOpKind::Moe:
        moe_backward(r, adapter, g(o.in0), o.in1 >= 0 ? g(o.in1) : nullptr, dy, buf(o.in0), o.in1 >= 0 ? buf(o.in1) : nullptr,
                     o.in2 >= 0 ? g(o.in2) : nullptr, o.in2 >= 0 ? buf(o.in2) : nullptr);
        break;
      case BlockOpKind::CausalConv:
      case BlockOpKind::DeltaRule:
      case BlockOpKind::SsmScan:
      case BlockOpKind::Ssm1Scan: {
        const int64_t CD = s.la_conv_dim(), K = s.la_conv_kernel, VD = s.la_value_dim(), H = s.la_v_heads;
        const DeltaRuleShape sh = delta_rule_shape(s);
        const float* conv_bias = L.la_conv_bias.empty() ? nullptr : L.la_conv_bias.data();
        int64_t t0 = 0;
        for (int64_t n : !r.recurrent_segments.empty() ? r.recurrent_segments
                         : r.segments.empty()          ? std::span<const int64_t>(&T, 1)
                                                       : r.segments) {
          if (o.kind == BlockOpKind::CausalConv)
            causal_conv_backward(g(o.in0) + t0 * CD, dy + t0 * CD, buf(o.in0) + t0 * CD, n, CD, L.la_conv.data(), conv_bias, K,
                                 !s.la_short_conv, r.dtype);
          else if (o.kind == BlockOpKind::Ssm1Scan)
            ssm1_scan_backward(ssm1_shape(s), g(o.in0) + t0 * VD, g(o.in1) + t0 * VD, g(o.in2) + t0 * 2 * s.la_k_dim,
                               dy + t0 * VD, buf(o.in0) + t0 * VD, buf(o.in1) + t0 * VD, buf(o.in2) + t0 * 2 * s.la_k_dim,
                               L.la_A.data(), L.la_D.data(), n, r.dtype);
          else if (o.kind == BlockOpKind::SsmScan)
            ssm_scan_backward(ssm_shape(s), g(o.in0) + t0 * CD, g(o.in1) + t0 * H, dy + t0 * VD, buf(o.in0) + t0 * CD,
                              buf(o.in1) + t0 * H, L.la_A_log.data(), L.la_dt_bias.data(), L.la_D.data(), n, r.dtype);
          else
            delta_rule_backward(sh, g(o.in0) + t0 * CD, g(o.in1) + t0 * H, g(o.in2) + t0 * H, dy + t0 * VD,
                                buf(o.in0) + t0 * CD, buf(o.in1) + t0 * H, buf(o.in2) + t0 * H, L.la_A_log.data(),
                                L.la_dt_bias.data(), n, r.dtype);
          t0 += n;
        }
        break;
      }
      case BlockOpKind::GatedNorm:
        gated_norm_backward(g(o.in0), g(o.in1), dy, buf(o.in0), buf(o.in1), L.la_norm.data(), buf(o.aux),
                            T * o.rows_per_token, o.width, r.dtype);
        break;
      case BlockOpKind::SsmBcdtNorm:
        ssm1_norm_backward(g(o.in0), dy, buf(o.in0), (o.rows_per_token == 1 ? L.la_dt_norm : L.la_bc_norm).data(),
                           buf(o.aux), T, o.rows_per_token, o.width);
        break;
      case BlockOpKind::SsmNorm:
        ssm_norm_backward(g(o.in0), g(o.in1), dy, buf(o.in0), buf(o.in1), L.la_norm.data(), buf(o.aux), T,
                          s.la_value_dim(), s.la_k_heads);
        break;
      case BlockOpKind::OutputGate:
        output_gate_backward(g(o.in0), g(o.in1), dy, buf(o.in0), buf(o.in1), p.floats_on(o.out, r.layer, T, T), r.dtype);
        break;
      case BlockOpKind::Mul: {  // out = in0 * in1
        const int64_t n = p.floats_on(o.out, r.layer, T, T);
        float* d0 = g(o.in0);
        float* d1 = g(o.in1);
        const float* a = buf(o.in0);
        const float* b = buf(o.in1);
        for (int64_t i = 0; i < n; ++i) {
          d0[i] += dy[i] * b[i];
          d1[i] += dy[i] * a[i];
        }
        break;
      }
      case BlockOpKind::Gather: {
        const std::vector<int32_t>& cols = p.gather_columns(o.gather);
        const int64_t W = static_cast<int64_t>(cols.size()), Win = p.buffers()[static_cast<size_t>(o.in0)].width;
        float* din = g(o.in0);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < W; ++j) din[t * Win + cols[static_cast<size_t>(j)]] += dy[t * W + j];
        break;
      }
      case BlockOpKind::Concat: {  // each part's columns back to it (the broadcast one: summed over groups)
        const int64_t G = o.groups, A = o.width, B = o.width1, W = G * (A + B);
        float* d0 = g(o.in0);
        float* d1 = o.in1 >= 0 ? g(o.in1) : nullptr;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t gi = 0; gi < G; ++gi) {
            const float* src = dy + t * W + gi * (A + B);
            float* a = d0 + (t * G + gi) * A;
            for (int64_t i = 0; i < A; ++i) a[i] += src[i];
            if (!d1) continue;
            float* b = d1 + (o.broadcast ? t * B : (t * G + gi) * B);
            for (int64_t i = 0; i < B; ++i) b[i] += src[A + i];
          }
        break;
      }
      case BlockOpKind::Slice:
        be.slice_backward(g(o.in0), dy, T, p.buffers()[static_cast<size_t>(o.in0)].width, o.offset, o.width, o.groups,
                          o.group_stride);
        break;
    }
  }
}

}  // namespace qlora
