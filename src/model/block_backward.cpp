// The backward interpreter of a BlockProgram: the forward's ops in reverse, each through its
// hand-written backward. Rounding to the compute dtype is the identity here (straight-
// through, as autograd treats .to(dtype)).
#include <algorithm>

#include "base/error.h"
#include "lora/lora_model.h"
#include "model/block_run.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/ops_backward.h"

namespace qlora {

void linear_backward(float* dx, std::vector<float>& tile, const QuantLinear& W, LoraLayer* lora,
                     const LoraCache* cache, const float* dy, const float* x, int64_t T) {
  const int64_t in = W.in_features(), out = W.out_features();
  const int64_t rows = std::clamp<int64_t>((int64_t{1} << 18) / in, 16, out);
  if (static_cast<int64_t>(tile.size()) < rows * in) tile.resize(static_cast<size_t>(rows * in));
  for (int64_t o0 = 0; o0 < out; o0 += rows) {
    const int64_t o1 = std::min(out, o0 + rows);
    W.dequantize_rows(o0, o1, tile.data());
    matmul_backward_input(dx, dy + o0, tile.data(), T, in, o1 - o0, out);
  }
  if (lora) lora_backward(dx, *lora, dy, x, *cache, T);
}

void norm_backward(const ModelSpec& s, float* din, const float* dout, const float* in, const float* weight,
                   const float* stats, int64_t rows, int64_t C) {
  if (s.norm == NormKind::LayerNorm)
    layernorm_backward(din, dout, in, weight, stats, rows, C);
  else
    rmsnorm_backward(din, nullptr, dout, in, weight, stats, rows, C, s.norm_offset());
}

void block_backward(const BlockRun& r, LoraModel& adapter, const std::vector<float*>& grad, std::vector<float>& tile,
                    float* datt) {
  const BlockProgram& p = *r.program;
  const ModelSpec& s = p.spec();
  const LayerWeights& L = *r.weights;
  const int64_t T = r.T;
  for (int b = 0; b < static_cast<int>(p.buffers().size()); ++b)
    if (b != p.output() && grad[static_cast<size_t>(b)])
      std::fill_n(grad[static_cast<size_t>(b)], p.batch_floats(b, T, 0), 0.0f);  // (no gradient of probabilities)
  auto buf = [&](int b) -> const float* { return r.buf[static_cast<size_t>(b)]; };
  auto g = [&](int b) -> float* { return grad[static_cast<size_t>(b)]; };
  const auto& ops = p.ops();
  for (auto it = ops.rbegin(); it != ops.rend(); ++it) {
    const BlockOp& o = *it;
    const float* dy = g(o.out);
    switch (o.kind) {
      case BlockOpKind::Norm:
        norm_backward(s, g(o.in0), dy, buf(o.in0), L.norm(o.norm).data(), buf(o.aux), T * o.rows_per_token, o.width);
        break;
      case BlockOpKind::Linear: {
        LoraLayer* lo = adapter.find(r.layer, static_cast<BlockLinear>(o.linear));
        linear_backward(g(o.in0), tile, L.linear(o.linear), lo, lo ? &r.lora_caches[o.linear] : nullptr, dy,
                        buf(o.in0), T);
        break;
      }
      case BlockOpKind::Rope:  // in place: the gradient of the rotated values becomes the unrotated one's
        rope_backward(g(o.out), r.cos, r.sin, T, o.heads, s.head_dim, o.width);
        break;
      case BlockOpKind::Attention: {
        const int64_t QD = s.q_dim(), KVD = s.kv_dim();
        int64_t t0 = 0, p0 = 0;
        const std::span<const int64_t> segs = r.segments.empty() ? std::span<const int64_t>(&T, 1) : r.segments;
        for (int64_t n : segs) {
          attention_backward(g(o.in0) + t0 * QD, g(o.in1) + t0 * KVD, g(o.in2) + t0 * KVD, datt, dy + t0 * QD,
                             buf(o.in0) + t0 * QD, buf(o.in1) + t0 * KVD, buf(o.in2) + t0 * KVD, buf(o.aux) + p0, n, n, 0,
                             s.n_heads, s.n_kv_heads, s.head_dim, r.key_start ? r.key_start + t0 : nullptr,
                             s.attn_scale, s.attn_softcap);
          t0 += n;
          p0 += s.n_heads * n * n;
        }
        break;
      }
      case BlockOpKind::GatedAct:
        if (s.mlp == MlpKind::GeGLU)
          geglu_backward(g(o.in0), g(o.in1), dy, buf(o.in0), buf(o.in1), p.floats(o.out, T, T));
        else
          swiglu_backward(g(o.in0), g(o.in1), dy, buf(o.in0), buf(o.in1), p.floats(o.out, T, T));
        break;
      case BlockOpKind::Residual:
        residual_backward(g(o.in0), g(o.in1), dy, p.floats(o.out, T, T));
        break;
      case BlockOpKind::Act:
        activation_backward(g(o.in0), dy, buf(o.in0), p.floats(o.out, T, T), s.act);
        break;
      case BlockOpKind::Slice: {
        float* din = g(o.in0);
        const int64_t in_w = p.buffers()[static_cast<size_t>(o.in0)].width, out_w = o.groups * o.width;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t gr = 0; gr < o.groups; ++gr) {
            float* d = din + t * in_w + gr * o.group_stride + o.offset;
            const float* y = dy + t * out_w + gr * o.width;
            for (int64_t i = 0; i < o.width; ++i) d[i] += y[i];
          }
        break;
      }
    }
  }
}

}  // namespace qlora
