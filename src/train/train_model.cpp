#include "train/train_model.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "model/ops.h"
#include "model/ops_backward.h"

namespace qlora {

// Everything the backward of one block needs, for T tokens.
struct TrainWorkspace::Block {
  std::vector<float> h1, rstd1;        // (T, C), (T)  input_layernorm output and its rstd
  std::vector<float> q, k, v;          // (T, QD), (T, KVD), (T, KVD)  q, k rotated
  std::vector<float> qpre, kpre;       // qk_norm: the projections before their norms
  std::vector<float> rstdq, rstdk;     // qk_norm: (T*NH), (T*NKV)
  std::vector<float> opre, rstdo;      // sandwich_norms: o_proj output before its norm, (T)
  std::vector<float> mpre, rstdm;      // sandwich_norms: down output before its norm, (T)
  std::vector<float> att;              // (NH, T, T)  attention probabilities
  std::vector<float> atto;             // (T, QD)  attention output (o_proj input)
  std::vector<float> xmid;             // (T, C)  residual after attention
  std::vector<float> h2, rstd2;        // (T, C), (T)  post_attention_layernorm
  std::vector<float> gate, up, act;    // (T, F) each; act = silu(gate) * up
  std::array<LoraCache, kBlockLinears> lc;

  void resize(const ModelSpec& s, int64_t T) {
    const auto z = [](std::vector<float>& v, int64_t n) { v.resize(static_cast<size_t>(n)); };
    z(h1, T * s.hidden);
    z(rstd1, T);
    z(q, T * s.q_dim());
    z(k, T * s.kv_dim());
    z(v, T * s.kv_dim());
    if (s.sandwich_norms) {
      z(opre, T * s.hidden);
      z(rstdo, T);
      z(mpre, T * s.hidden);
      z(rstdm, T);
    }
    if (s.qk_norm) {
      z(qpre, T * s.q_dim());
      z(kpre, T * s.kv_dim());
      z(rstdq, T * s.n_heads);
      z(rstdk, T * s.n_kv_heads);
    }
    z(att, s.n_heads * T * T);
    z(atto, T * s.q_dim());
    z(xmid, T * s.hidden);
    z(h2, T * s.hidden);
    z(rstd2, T);
    z(gate, T * s.ffn);
    z(up, T * s.ffn);
    z(act, T * s.ffn);
  }
};

struct TrainWorkspace::Impl {
  int64_t T = 0;
  std::vector<float> xs;                 // (NL + 1, T, C) block inputs, then the last output
  std::vector<Block> blocks;             // NL without checkpointing, 1 with
  std::vector<LoraRng> rng_at_block;     // generator state at each block's forward
  std::vector<float> cos, sin;           // (T, HS/2)
  std::vector<float> cos_l, sin_l;       // (T, HS/2) rope_local models: the sliding layers' tables
  std::vector<int32_t> pos;
  std::vector<int32_t> key_start;        // (T) first key of each query's example; empty = causal
  std::vector<int32_t> key_start_win;    // (T) the same, narrowed by the sliding window; empty = none
  std::vector<float> hf, rstdf, logits;  // (T, C), (T), (M, V)
  std::vector<float> dlogits;            // (M, V) final_softcap models (logits keep the capped values)
  // The output head runs only on the M positions that have a target: with prompt masking
  // most positions of an instruction example have none, and the (vocab x hidden) head is
  // the largest single product of the model.
  std::vector<int64_t> sel;              // (M) positions with a target
  std::vector<int> sel_targets;          // (M) their targets
  std::vector<float> hsel, dhsel;        // (M, C) gathered head inputs and their gradient
  std::vector<float> tile;               // dequantized rows of a weight
  // backward scratch
  std::vector<float> dx, dxmid, dh, dact, dgate, dup, datto, dq, dk, dv, datt, dhf, dqpre, dkpre, dopre, dmpre;
};

TrainWorkspace::TrainWorkspace() : impl_(std::make_unique<Impl>()) {}
TrainWorkspace::~TrainWorkspace() = default;
TrainWorkspace::TrainWorkspace(TrainWorkspace&&) noexcept = default;
TrainWorkspace& TrainWorkspace::operator=(TrainWorkspace&&) noexcept = default;

namespace {

using Block = TrainWorkspace::Block;

void check_sequence(const ModelSpec& s, std::span<const int> inputs, std::span<const int> targets,
                    std::span<const int32_t> positions) {
  const int64_t T = static_cast<int64_t>(inputs.size());
  if (T == 0) fail("train", "empty sequence");
  if (targets.size() != inputs.size())
    fail("train", "inputs (" + std::to_string(inputs.size()) + ") and targets (" +
                      std::to_string(targets.size()) + ") differ in length");
  if (T > s.max_positions)
    fail("train", "sequence of " + std::to_string(T) + " tokens exceeds the model's context of " +
                      std::to_string(s.max_positions) + " positions");
  if (!positions.empty()) {
    if (positions.size() != inputs.size())
      fail("train", "positions (" + std::to_string(positions.size()) + ") and inputs (" +
                        std::to_string(inputs.size()) + ") differ in length");
    for (size_t t = 0; t < positions.size(); ++t) {
      const int32_t p = positions[t];
      if (p != 0 && (t == 0 || p != positions[t - 1] + 1))
        fail("train", "positions must be runs 0, 1, 2, ... (one per packed example); position " +
                          std::to_string(t) + " is " + std::to_string(p));
    }
  }
}

// The key window of layer l's queries: packing and, on the layers that slide, the window.
const int32_t* layer_key_start(const TrainWorkspace::Impl& w, const ModelSpec& s, int64_t l) {
  if (s.layer_slides(l) && !w.key_start_win.empty()) return w.key_start_win.data();
  return w.key_start.empty() ? nullptr : w.key_start.data();
}

// y (T, out) = W x (+ b) (+ LoRA).
void linear_forward(float* y, LoraCache* cache, const QuantLinear& W, const LoraLayer* lora, const float* x,
                    int64_t T, bool training, LoraRng* rng) {
  W.forward(y, x, T);
  if (lora) lora_forward(y, cache, *lora, x, T, training, rng);
}

// dx (T, in) += dy (T, out) · W (through the frozen weight, a tile of rows at a time) and
// the LoRA path; LoRA A/B gradients accumulate.
void linear_backward(float* dx, std::vector<float>& tile, const QuantLinear& W, LoraLayer* lora,
                     const LoraCache& cache, const float* dy, const float* x, int64_t T) {
  const int64_t in = W.in_features(), out = W.out_features();
  const int64_t rows = std::clamp<int64_t>((int64_t{1} << 18) / in, 16, out);
  if (static_cast<int64_t>(tile.size()) < rows * in) tile.resize(static_cast<size_t>(rows * in));
  for (int64_t o0 = 0; o0 < out; o0 += rows) {
    const int64_t o1 = std::min(out, o0 + rows);
    W.dequantize_rows(o0, o1, tile.data());
    matmul_backward_input(dx, dy + o0, tile.data(), T, in, o1 - o0, out);
  }
  if (lora) lora_backward(dx, *lora, dy, x, cache, T);
}

// xout (T, C) = block(xin); fills `b`.
void block_forward(float* xout, Block& b, const LoraModel& lm, int64_t l, const float* xin, int64_t T,
                   const float* cos, const float* sin, const int32_t* key_start, bool training, LoraRng* rng) {
  const Model& m = lm.model();
  const ModelSpec& s = m.spec();
  const ComputeDType dt = m.compute_dtype();
  const LayerWeights& L = m.layers()[static_cast<size_t>(l)];
  const int64_t C = s.hidden, NH = s.n_heads, NKV = s.n_kv_heads, HS = s.head_dim, F = s.ffn;
  const int64_t QD = s.q_dim(), KVD = s.kv_dim();
  auto lin = [&](BlockLinear w, float* y, const float* x) {
    linear_forward(y, &b.lc[static_cast<size_t>(w)], block_linear(L, w), lm.find(l, w), x, T, training, rng);
  };
  const float noff = s.norm_offset();
  rmsnorm_forward(b.h1.data(), b.rstd1.data(), xin, L.input_norm.data(), T, C, s.norm_eps, dt, noff);
  lin(BlockLinear::Q, b.q.data(), b.h1.data());
  lin(BlockLinear::K, b.k.data(), b.h1.data());
  lin(BlockLinear::V, b.v.data(), b.h1.data());
  round_activations(b.q.data(), T * QD, dt);
  round_activations(b.k.data(), T * KVD, dt);
  round_activations(b.v.data(), T * KVD, dt);
  if (s.qk_norm) {  // per-head norms: keep their inputs for the backward
    b.qpre.assign(b.q.begin(), b.q.end());
    b.kpre.assign(b.k.begin(), b.k.end());
    rmsnorm_forward(b.q.data(), b.rstdq.data(), b.qpre.data(), L.q_norm.data(), T * NH, HS, s.norm_eps, dt, noff);
    rmsnorm_forward(b.k.data(), b.rstdk.data(), b.kpre.data(), L.k_norm.data(), T * NKV, HS, s.norm_eps, dt, noff);
  }
  rope_forward(b.q.data(), cos, sin, T, NH, HS);
  rope_forward(b.k.data(), cos, sin, T, NKV, HS);
  round_activations(b.q.data(), T * QD, dt);
  round_activations(b.k.data(), T * KVD, dt);
  attention_forward(b.atto.data(), b.att.data(), b.q.data(), b.k.data(), b.v.data(), T, T, 0, NH, NKV, HS,
                    key_start, s.attn_scale, s.attn_softcap);
  round_activations(b.atto.data(), T * QD, dt);
  lin(BlockLinear::O, xout, b.atto.data());  // xout temporarily holds o
  round_activations(xout, T * C, dt);
  if (s.sandwich_norms) {  // the attention output's own norm (its input kept for the backward)
    b.opre.assign(xout, xout + T * C);
    rmsnorm_forward(xout, b.rstdo.data(), b.opre.data(), L.post_norm.data(), T, C, s.norm_eps, dt, noff);
  }
  residual_forward(b.xmid.data(), xin, xout, T * C);
  round_activations(b.xmid.data(), T * C, dt);
  rmsnorm_forward(b.h2.data(), b.rstd2.data(), b.xmid.data(), (s.sandwich_norms ? L.pre_ffn_norm : L.post_norm).data(),
                  T, C, s.norm_eps, dt, noff);
  lin(BlockLinear::Gate, b.gate.data(), b.h2.data());
  lin(BlockLinear::Up, b.up.data(), b.h2.data());
  round_activations(b.gate.data(), T * F, dt);
  round_activations(b.up.data(), T * F, dt);
  if (s.mlp == MlpKind::GeGLU)
    geglu_forward(b.act.data(), b.gate.data(), b.up.data(), T * F);
  else
    swiglu_forward(b.act.data(), b.gate.data(), b.up.data(), T * F);
  round_activations(b.act.data(), T * F, dt);
  lin(BlockLinear::Down, xout, b.act.data());
  round_activations(xout, T * C, dt);
  if (s.sandwich_norms) {
    b.mpre.assign(xout, xout + T * C);
    rmsnorm_forward(xout, b.rstdm.data(), b.mpre.data(), L.post_ffn_norm.data(), T, C, s.norm_eps, dt, noff);
  }
  residual_forward(xout, b.xmid.data(), xout, T * C);
  round_activations(xout, T * C, dt);
}

// Given dxout (T, C), WRITES dxin (T, C) (may alias dxout); accumulates LoRA gradients.
void block_backward(float* dxin, TrainWorkspace::Impl& w, Block& b, LoraModel& lm, int64_t l,
                    const float* dxout, const float* xin, int64_t T) {
  const Model& m = lm.model();
  const ModelSpec& s = m.spec();
  const LayerWeights& L = m.layers()[static_cast<size_t>(l)];
  const int64_t C = s.hidden, NH = s.n_heads, NKV = s.n_kv_heads, HS = s.head_dim, F = s.ffn;
  const int64_t QD = s.q_dim(), KVD = s.kv_dim();
  auto zero = [](std::vector<float>& v, int64_t n) { v.assign(static_cast<size_t>(n), 0.f); };
  auto lin = [&](BlockLinear wh, float* dx, const float* dy, const float* x) {
    linear_backward(dx, w.tile, block_linear(L, wh), lm.find(l, wh), b.lc[static_cast<size_t>(wh)], dy, x, T);
  };
  // MLP: xout = xmid + down(act), act = swiglu(gate(h2), up(h2)), h2 = norm(xmid)
  w.dxmid.assign(dxout, dxout + T * C);
  const float noff = s.norm_offset();
  const float* dy_down = dxout;  // the gradient at down's output (through its norm, if any)
  if (s.sandwich_norms) {
    zero(w.dmpre, T * C);
    rmsnorm_backward(w.dmpre.data(), nullptr, dxout, b.mpre.data(), L.post_ffn_norm.data(), b.rstdm.data(), T, C, noff);
    dy_down = w.dmpre.data();
  }
  zero(w.dact, T * F);
  lin(BlockLinear::Down, w.dact.data(), dy_down, b.act.data());
  zero(w.dgate, T * F);
  zero(w.dup, T * F);
  if (s.mlp == MlpKind::GeGLU)
    geglu_backward(w.dgate.data(), w.dup.data(), w.dact.data(), b.gate.data(), b.up.data(), T * F);
  else
    swiglu_backward(w.dgate.data(), w.dup.data(), w.dact.data(), b.gate.data(), b.up.data(), T * F);
  zero(w.dh, T * C);
  lin(BlockLinear::Gate, w.dh.data(), w.dgate.data(), b.h2.data());
  lin(BlockLinear::Up, w.dh.data(), w.dup.data(), b.h2.data());
  rmsnorm_backward(w.dxmid.data(), nullptr, w.dh.data(), b.xmid.data(),
                   (s.sandwich_norms ? L.pre_ffn_norm : L.post_norm).data(), b.rstd2.data(), T, C, noff);
  // attention: xmid = xin + o(atto), atto = attn(rope(q(h1)), rope(k(h1)), v(h1)), h1 = norm(xin)
  const float* dy_o = w.dxmid.data();
  if (s.sandwich_norms) {
    zero(w.dopre, T * C);
    rmsnorm_backward(w.dopre.data(), nullptr, w.dxmid.data(), b.opre.data(), L.post_norm.data(), b.rstdo.data(), T, C,
                     noff);
    dy_o = w.dopre.data();
  }
  zero(w.datto, T * QD);
  lin(BlockLinear::O, w.datto.data(), dy_o, b.atto.data());
  zero(w.dq, T * QD);
  zero(w.dk, T * KVD);
  zero(w.dv, T * KVD);
  if (static_cast<int64_t>(w.datt.size()) < NH * T * T) w.datt.resize(static_cast<size_t>(NH * T * T));
  attention_backward(w.dq.data(), w.dk.data(), w.dv.data(), w.datt.data(), w.datto.data(), b.q.data(),
                     b.k.data(), b.v.data(), b.att.data(), T, T, 0, NH, NKV, HS, layer_key_start(w, s, l),
                     s.attn_scale, s.attn_softcap);
  const bool local = s.layer_uses_local_rope(l);
  const float* rc = local ? w.cos_l.data() : w.cos.data();
  const float* rs = local ? w.sin_l.data() : w.sin.data();
  rope_backward(w.dq.data(), rc, rs, T, NH, HS);
  rope_backward(w.dk.data(), rc, rs, T, NKV, HS);
  if (s.qk_norm) {  // through the per-head norms to the projections' outputs
    zero(w.dqpre, T * QD);
    zero(w.dkpre, T * KVD);
    rmsnorm_backward(w.dqpre.data(), nullptr, w.dq.data(), b.qpre.data(), L.q_norm.data(), b.rstdq.data(), T * NH, HS,
                     noff);
    rmsnorm_backward(w.dkpre.data(), nullptr, w.dk.data(), b.kpre.data(), L.k_norm.data(), b.rstdk.data(), T * NKV,
                     HS, noff);
    w.dq.swap(w.dqpre);
    w.dk.swap(w.dkpre);
  }
  zero(w.dh, T * C);
  lin(BlockLinear::Q, w.dh.data(), w.dq.data(), b.h1.data());
  lin(BlockLinear::K, w.dh.data(), w.dk.data(), b.h1.data());
  lin(BlockLinear::V, w.dh.data(), w.dv.data(), b.h1.data());
  // dxin = dxmid + norm backward (dxmid is a separate buffer, so dxin may alias dxout)
  std::copy_n(w.dxmid.data(), T * C, dxin);
  rmsnorm_backward(dxin, nullptr, w.dh.data(), xin, L.input_norm.data(), b.rstd1.data(), T, C, noff);
}

// Embedding, all blocks (caching per `keep_all`), final norm and the logits of the
// positions that have a target (w.sel).
void model_forward(TrainWorkspace::Impl& w, const LoraModel& lm, std::span<const int> inputs,
                   std::span<const int> targets, std::span<const int32_t> positions, bool keep_all, bool training,
                   LoraRng* rng) {
  const Model& m = lm.model();
  const ModelSpec& s = m.spec();
  const int64_t T = static_cast<int64_t>(inputs.size());
  const int64_t C = s.hidden, NL = s.n_layers, V = s.vocab;
  w.T = T;
  w.xs.resize(static_cast<size_t>((NL + 1) * T * C));
  w.blocks.resize(keep_all ? static_cast<size_t>(NL) : 1);
  for (Block& b : w.blocks) b.resize(s, T);
  w.pos.resize(static_cast<size_t>(T));
  w.key_start.clear();
  w.key_start_win.clear();
  bool packed = false;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t p = positions.empty() ? static_cast<int32_t>(t) : positions[static_cast<size_t>(t)];
    w.pos[static_cast<size_t>(t)] = p;
    packed = packed || p != t;
  }
  // Each query's first key: its own example's start when packed, and on sliding layers no
  // further back than the window.
  if (packed) {
    w.key_start.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) w.key_start[static_cast<size_t>(t)] = static_cast<int32_t>(t) - w.pos[static_cast<size_t>(t)];
  }
  if (s.sliding_window > 0 && T > s.sliding_window) {
    w.key_start_win.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const int32_t p = w.pos[static_cast<size_t>(t)];
      w.key_start_win[static_cast<size_t>(t)] = static_cast<int32_t>(t - p + first_visible_key(s, p));
    }
  }
  w.cos.resize(static_cast<size_t>(T * s.head_dim / 2));
  w.sin.resize(w.cos.size());
  rope_tables(w.cos.data(), w.sin.data(), w.pos.data(), T, s.head_dim, s.rope_theta, s.rope_scaling);
  if (s.rope_local) {
    w.cos_l.resize(w.cos.size());
    w.sin_l.resize(w.cos.size());
    rope_tables(w.cos_l.data(), w.sin_l.data(), w.pos.data(), T, s.head_dim, s.rope_theta_local, s.rope_scaling_local);
  }
  w.rng_at_block.clear();
  embedding_forward(w.xs.data(), inputs.data(), T, m.embed_tokens());
  if (s.embed_scale) embed_scale_forward(w.xs.data(), T * C, C, m.compute_dtype());
  for (int64_t l = 0; l < NL; ++l) {
    if (rng) w.rng_at_block.push_back(*rng);
    Block& b = w.blocks[keep_all ? static_cast<size_t>(l) : 0];
    const bool local = s.layer_uses_local_rope(l);
    block_forward(w.xs.data() + (l + 1) * T * C, b, lm, l, w.xs.data() + l * T * C, T,
                  (local ? w.cos_l : w.cos).data(), (local ? w.sin_l : w.sin).data(), layer_key_start(w, s, l), training,
                  rng);
  }
  w.hf.resize(static_cast<size_t>(T * C));
  w.rstdf.resize(static_cast<size_t>(T));
  rmsnorm_forward(w.hf.data(), w.rstdf.data(), w.xs.data() + NL * T * C, m.final_norm().data(), T, C, s.norm_eps,
                  m.compute_dtype(), s.norm_offset());
  w.sel.clear();
  w.sel_targets.clear();
  for (int64_t t = 0; t < T; ++t)
    if (targets[static_cast<size_t>(t)] != -100) {  // cross_entropy_forward_backward's ignore_index
      w.sel.push_back(t);
      w.sel_targets.push_back(targets[static_cast<size_t>(t)]);
    }
  const int64_t M = static_cast<int64_t>(w.sel.size());
  const float* hin = w.hf.data();
  if (M < T) {
    w.hsel.resize(static_cast<size_t>(M * C));
    for (int64_t i = 0; i < M; ++i) std::copy_n(w.hf.data() + w.sel[static_cast<size_t>(i)] * C, C, w.hsel.data() + i * C);
    hin = w.hsel.data();
  }
  w.logits.resize(static_cast<size_t>(M * V));
  if (M > 0) m.lm_head().matmul(w.logits.data(), hin, M);
  round_activations(w.logits.data(), M * V, m.compute_dtype());
  if (s.final_softcap > 0.0f) softcap_forward(w.logits.data(), M * V, s.final_softcap, m.compute_dtype());
}

}  // namespace

float forward_loss(const LoraModel& lm, TrainWorkspace& ws, std::span<const int> inputs,
                   std::span<const int> targets, std::span<const int32_t> positions) {
  check_sequence(lm.model().spec(), inputs, targets, positions);
  if (const DeviceRunner* dev = lm.model().runner()) return dev->forward_loss(lm, inputs, targets, positions);
  TrainWorkspace::Impl& w = *ws.impl_;
  model_forward(w, lm, inputs, targets, positions, /*keep_all=*/false, /*training=*/false, nullptr);
  const int64_t M = static_cast<int64_t>(w.sel.size());
  if (M == 0) return 0.f;
  return cross_entropy_forward_backward(nullptr, w.logits.data(), w.logits.data(), w.sel_targets.data(), M,
                                        lm.model().spec().vocab);
}

float forward_backward(LoraModel& lm, TrainWorkspace& ws, std::span<const int> inputs, std::span<const int> targets,
                       const TrainStepOptions& opt, LoraRng* rng, std::span<const int32_t> positions) {
  const Model& m = lm.model();
  const ModelSpec& s = m.spec();
  check_sequence(s, inputs, targets, positions);
  const bool training = opt.training;
  LoraRng* frng = training ? rng : nullptr;
  // Another device (model/device_runner.h) runs the same step there.
  if (const DeviceRunner* dev = m.runner()) return dev->forward_backward(lm, inputs, targets, opt, frng, positions);
  TrainWorkspace::Impl& w = *ws.impl_;
  model_forward(w, lm, inputs, targets, positions, !opt.checkpointing, training, frng);
  const int64_t T = w.T, C = s.hidden, V = s.vocab, NL = s.n_layers;
  const int64_t M = static_cast<int64_t>(w.sel.size());
  if (M == 0) return 0.f;  // nothing to learn from: no gradient

  // loss and dlogits (in place), over the M positions with a target
  float* dlogits = w.logits.data();
  if (s.final_softcap > 0.0f) {  // the capped logits stay for the tanh's derivative
    w.dlogits.resize(static_cast<size_t>(M * V));
    dlogits = w.dlogits.data();
  }
  const float loss = cross_entropy_forward_backward(nullptr, dlogits, w.logits.data(), w.sel_targets.data(), M, V);
  if (s.final_softcap > 0.0f)
    for (int64_t i = 0; i < M * V; ++i) {
      const float t = w.logits[static_cast<size_t>(i)] / s.final_softcap;
      dlogits[i] *= 1.0f - t * t;
    }
  if (opt.grad_scale != 1.f)
    for (int64_t i = 0; i < M * V; ++i) dlogits[i] *= opt.grad_scale;

  // lm_head (frozen, dense): dh (M, C) = dlogits · W, a tile of vocabulary rows at a time;
  // then scattered back to the T positions (the others get no gradient from the head).
  w.dhsel.assign(static_cast<size_t>(M * C), 0.f);
  const DenseWeight& head = m.lm_head();
  if (head.dtype() == ComputeDType::F32) {
    matmul_backward_input(w.dhsel.data(), dlogits, head.f32_data(), M, C, V);
  } else {
    const int64_t rows = std::clamp<int64_t>((int64_t{1} << 18) / C, 16, V);
    if (static_cast<int64_t>(w.tile.size()) < rows * C) w.tile.resize(static_cast<size_t>(rows * C));
    for (int64_t v0 = 0; v0 < V; v0 += rows) {
      const int64_t v1 = std::min(V, v0 + rows);
      head.rows_to_f32(v0, v1, w.tile.data());
      matmul_backward_input(w.dhsel.data(), dlogits + v0, w.tile.data(), M, C, v1 - v0, V);
    }
  }
  w.dhf.assign(static_cast<size_t>(T * C), 0.f);
  for (int64_t i = 0; i < M; ++i)
    std::copy_n(w.dhsel.data() + i * C, C, w.dhf.data() + w.sel[static_cast<size_t>(i)] * C);
  w.dx.assign(static_cast<size_t>(T * C), 0.f);
  rmsnorm_backward(w.dx.data(), nullptr, w.dhf.data(), w.xs.data() + NL * T * C, m.final_norm().data(),
                   w.rstdf.data(), T, C, s.norm_offset());

  // blocks, last to first
  std::vector<float> recompute_out;
  if (opt.checkpointing) recompute_out.resize(static_cast<size_t>(T * C));
  for (int64_t l = NL - 1; l >= 0; --l) {
    const float* xin = w.xs.data() + l * T * C;
    Block* b;
    if (opt.checkpointing) {
      b = &w.blocks[0];
      LoraRng r = frng ? w.rng_at_block[static_cast<size_t>(l)] : LoraRng(0);
      const bool local = s.layer_uses_local_rope(l);
      block_forward(recompute_out.data(), *b, lm, l, xin, T, (local ? w.cos_l : w.cos).data(),
                    (local ? w.sin_l : w.sin).data(), layer_key_start(w, s, l), training, frng ? &r : nullptr);
    } else {
      b = &w.blocks[static_cast<size_t>(l)];
    }
    block_backward(w.dx.data(), w, *b, lm, l, w.dx.data(), xin, T);
  }
  return loss;
}

}  // namespace qlora
