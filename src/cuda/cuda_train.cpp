// The QLoRA training step on the GPU: train/train_model.cpp's forward_backward and
// forward_loss, op for op, on the CUDA runner's copy of the frozen weights.
//  - Block by block with the same caches; with gradient checkpointing only the block
//    inputs are kept and each block is recomputed right before its backward.
//  - LoRA A/B are uploaded at each call (they change at every optimizer step and are
//    small); their gradients are computed on the GPU and ADDED to the host LoraLayer dA/dB,
//    so the optimizers, gradient clipping, checkpoints and exact resume stay the CPU's.
//  - Dropout masks are the CPU's very numbers: each LoRA call draws its seed from the same
//    generator in the same order, and the GPU expands it exactly as lora_forward does; a
//    recomputed block reuses its recorded seeds (the CPU restores the generator instead).
//  - The frozen Linear's input gradient multiplies by the weight dequantized in float32
//    (rounded to the compute dtype, as the CPU's dequantize_rows), through cuBLAS.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "base/error.h"
#include "cuda/cuda_error.h"
#include "cuda/cuda_runner_impl.h"
#include "cuda/kernels_train.h"
#include "lora/lora.h"
#include "model/ops.h"
#include "train/train_model.h"

namespace qlora::cuda {

namespace {

struct TrainLora {
  int64_t in = 0, out = 0, r = 0;
  float scaling = 0.f, dropout = 0.f;
  DeviceBuffer<float> A, B, dA, dB;
};

// The caches of one block's forward (train_model.cpp's Block).
struct TrainBlock {
  DeviceBuffer<float> h1, rstd1, q, k, v, att, atto, xmid, h2, rstd2, gate, up, act;
  std::array<DeviceBuffer<float>, kBlockLinears> lh, mask;  // LoRA: A·dropout(x) (T, r), masks (T, in)
  std::array<bool, kBlockLinears> dropped{};
};

void ensure(DeviceBuffer<float>& b, int64_t n) { b.reserve(static_cast<size_t>(std::max<int64_t>(n, 1))); }

}  // namespace

struct CudaRunner::TrainState {
  std::vector<TrainLora> lora;                         // parallel to LoraModel::layers()
  std::vector<std::array<int, kBlockLinears>> index;  // per layer: index into lora or -1
  std::vector<std::array<uint64_t, kBlockLinears>> seeds;  // dropout call seeds of the last forward
  int64_t T = 0, M = 0;
  std::vector<TrainBlock> blocks;
  bool packed = false;
  DeviceBuffer<float> xs, hf, rstdf, hsel, logits, row_loss, dhsel, dhf, dx, dxmid, dact, dgate, dup, dh, datto, dq,
      dk, dv, datt, tile, cos, sin, recompute, lora_y, lora_dh, lora_db, lora_xd;
  DeviceBuffer<int32_t> tokens, key_start, sel, sel_targets;
};

void CudaRunner::TrainStateDeleter::operator()(TrainState* p) const { delete p; }

void CudaRunner::weight_f32(float* tile, const DeviceLinear& L) const {
  if (L.q4) {
    dequantize_q4(L.w4.view, DenseType::F32, tile, stream_);
    round_activations(tile, L.out * L.in, dt_, stream_);
  } else if (L.dense.type == DenseType::F32) {
    QLORA_CUDA_CHECK(cudaMemcpyAsync(tile, L.dense.f32.data(), L.dense.f32.bytes(), cudaMemcpyDeviceToDevice, stream_));
  } else {
    half_to_f32(tile, L.dense.h16.data(), L.out * L.in, L.dense.type == DenseType::BF16, stream_);
  }
}

void CudaRunner::train_block_forward(TrainState& ts, int64_t blk, int64_t l, float* xout, const float* xin,
                                     bool training) const {
  const ModelSpec& s = spec_;
  const int64_t T = ts.T, C = s.hidden, NH = s.n_heads, NKV = s.n_kv_heads, HS = s.head_dim, F = s.ffn;
  const int64_t QD = s.q_dim(), KVD = s.kv_dim();
  const DeviceLayer& L = layers_[static_cast<size_t>(l)];
  TrainBlock& b = ts.blocks[static_cast<size_t>(blk)];
  auto lin = [&](BlockLinear w, float* y, const float* x) {
    const int wi = static_cast<int>(w);
    const DeviceLinear& W = L.lin[wi];
    base_linear(y, W, x, T);
    const int li = ts.index[static_cast<size_t>(l)][static_cast<size_t>(wi)];
    if (li < 0) return;
    TrainLora& lo = ts.lora[static_cast<size_t>(li)];
    const bool drop = training && lo.dropout > 0.f;
    b.dropped[static_cast<size_t>(wi)] = drop;
    const float* xin_l = x;
    if (drop) {
      DeviceBuffer<float>& mk = b.mask[static_cast<size_t>(wi)];
      ensure(mk, T * lo.in);
      lora_dropout_mask(mk.data(), T, lo.in, ts.seeds[static_cast<size_t>(l)][static_cast<size_t>(wi)], lo.dropout,
                        stream_);
      ensure(ts.lora_xd, T * lo.in);
      multiply(ts.lora_xd.data(), x, mk.data(), T * lo.in, stream_);
      xin_l = ts.lora_xd.data();
    }
    // h (T, r) = dropout(x) Aᵀ;  tmp (T, out) = h Bᵀ;  y += tmp · scaling.
    DeviceBuffer<float>& h = b.lh[static_cast<size_t>(wi)];
    ensure(h, T * lo.r);
    blas_->sgemm_nt(T, lo.r, lo.in, 1.f, xin_l, lo.in, lo.A.data(), lo.in, 0.f, h.data(), lo.r);
    ensure(ts.lora_y, T * lo.out);
    blas_->sgemm_nt(T, lo.out, lo.r, 1.f, h.data(), lo.r, lo.B.data(), lo.r, 0.f, ts.lora_y.data(), lo.out);
    axpy(y, lo.scaling, ts.lora_y.data(), T * lo.out, stream_);
  };
  const int32_t* ks = ts.packed ? ts.key_start.data() : nullptr;
  rmsnorm_forward(b.h1.data(), b.rstd1.data(), xin, L.input_norm.data(), T, C, s.norm_eps, dt_, stream_);
  lin(BlockLinear::Q, b.q.data(), b.h1.data());
  lin(BlockLinear::K, b.k.data(), b.h1.data());
  lin(BlockLinear::V, b.v.data(), b.h1.data());
  round_activations(b.q.data(), T * QD, dt_, stream_);
  round_activations(b.k.data(), T * KVD, dt_, stream_);
  round_activations(b.v.data(), T * KVD, dt_, stream_);
  rope_forward(b.q.data(), ts.cos.data(), ts.sin.data(), T, NH, HS, stream_);
  rope_forward(b.k.data(), ts.cos.data(), ts.sin.data(), T, NKV, HS, stream_);
  round_activations(b.q.data(), T * QD, dt_, stream_);
  round_activations(b.k.data(), T * KVD, dt_, stream_);
  attention_forward_train(b.atto.data(), b.att.data(), b.q.data(), b.k.data(), b.v.data(), T, 0, NH, NKV, HS, ks,
                          stream_);
  round_activations(b.atto.data(), T * QD, dt_, stream_);
  lin(BlockLinear::O, xout, b.atto.data());  // xout temporarily holds o
  round_activations(xout, T * C, dt_, stream_);
  residual_forward(b.xmid.data(), xin, xout, T * C, stream_);
  round_activations(b.xmid.data(), T * C, dt_, stream_);
  rmsnorm_forward(b.h2.data(), b.rstd2.data(), b.xmid.data(), L.post_norm.data(), T, C, s.norm_eps, dt_, stream_);
  lin(BlockLinear::Gate, b.gate.data(), b.h2.data());
  lin(BlockLinear::Up, b.up.data(), b.h2.data());
  round_activations(b.gate.data(), T * F, dt_, stream_);
  round_activations(b.up.data(), T * F, dt_, stream_);
  swiglu_forward(b.act.data(), b.gate.data(), b.up.data(), T * F, stream_);
  round_activations(b.act.data(), T * F, dt_, stream_);
  lin(BlockLinear::Down, xout, b.act.data());
  round_activations(xout, T * C, dt_, stream_);
  residual_forward(xout, b.xmid.data(), xout, T * C, stream_);
  round_activations(xout, T * C, dt_, stream_);
}

void CudaRunner::train_block_backward(TrainState& ts, int64_t blk, int64_t l, float* dx, const float* xin) const {
  const ModelSpec& s = spec_;
  const int64_t T = ts.T, C = s.hidden, NH = s.n_heads, NKV = s.n_kv_heads, HS = s.head_dim, F = s.ffn;
  const int64_t QD = s.q_dim(), KVD = s.kv_dim();
  const DeviceLayer& L = layers_[static_cast<size_t>(l)];
  TrainBlock& b = ts.blocks[static_cast<size_t>(blk)];
  auto zero = [&](DeviceBuffer<float>& v, int64_t n) {
    ensure(v, n);
    QLORA_CUDA_CHECK(cudaMemsetAsync(v.data(), 0, static_cast<size_t>(n) * sizeof(float), stream_));
  };
  // dxi (T, in) += dy · W, and the LoRA path (gradients into dA/dB).
  auto lin = [&](BlockLinear w, float* dxi, const float* dy, const float* x) {
    const int wi = static_cast<int>(w);
    const DeviceLinear& W = L.lin[wi];
    weight_f32(ts.tile.data(), W);
    blas_->sgemm_nn(T, W.in, W.out, 1.f, dy, W.out, ts.tile.data(), W.in, 1.f, dxi, W.in);
    const int li = ts.index[static_cast<size_t>(l)][static_cast<size_t>(wi)];
    if (li < 0) return;
    TrainLora& lo = ts.lora[static_cast<size_t>(li)];
    const bool drop = b.dropped[static_cast<size_t>(wi)];
    const float sc = lo.scaling;
    // dh (T, r) = scaling · dy B
    ensure(ts.lora_dh, T * lo.r);
    blas_->sgemm_nn(T, lo.r, lo.out, 1.f, dy, lo.out, lo.B.data(), lo.r, 0.f, ts.lora_dh.data(), lo.r);
    scale(ts.lora_dh.data(), sc, T * lo.r, stream_);
    // dB (out, r) += scaling · dyᵀ h
    ensure(ts.lora_db, lo.out * lo.r);
    blas_->sgemm_tn(lo.out, lo.r, T, 1.f, dy, lo.out, b.lh[static_cast<size_t>(wi)].data(), lo.r, 0.f,
                    ts.lora_db.data(), lo.r);
    axpy(lo.dB.data(), sc, ts.lora_db.data(), lo.out * lo.r, stream_);
    // dA (r, in) += dhᵀ dropout(x)
    const float* xd = x;
    if (drop) {
      ensure(ts.lora_xd, T * lo.in);
      multiply(ts.lora_xd.data(), x, b.mask[static_cast<size_t>(wi)].data(), T * lo.in, stream_);
      xd = ts.lora_xd.data();
    }
    blas_->sgemm_tn(lo.r, lo.in, T, 1.f, ts.lora_dh.data(), lo.r, xd, lo.in, 1.f, lo.dA.data(), lo.in);
    // dx += mask ⊙ (dh A)
    if (!drop) {
      blas_->sgemm_nn(T, lo.in, lo.r, 1.f, ts.lora_dh.data(), lo.r, lo.A.data(), lo.in, 1.f, dxi, lo.in);
    } else {
      blas_->sgemm_nn(T, lo.in, lo.r, 1.f, ts.lora_dh.data(), lo.r, lo.A.data(), lo.in, 0.f, ts.lora_xd.data(), lo.in);
      multiply_add(dxi, ts.lora_xd.data(), b.mask[static_cast<size_t>(wi)].data(), T * lo.in, stream_);
    }
  };
  // MLP
  ensure(ts.dxmid, T * C);
  QLORA_CUDA_CHECK(cudaMemcpyAsync(ts.dxmid.data(), dx, static_cast<size_t>(T * C) * 4, cudaMemcpyDeviceToDevice, stream_));
  zero(ts.dact, T * F);
  lin(BlockLinear::Down, ts.dact.data(), dx, b.act.data());
  zero(ts.dgate, T * F);
  zero(ts.dup, T * F);
  swiglu_backward(ts.dgate.data(), ts.dup.data(), ts.dact.data(), b.gate.data(), b.up.data(), T * F, stream_);
  zero(ts.dh, T * C);
  lin(BlockLinear::Gate, ts.dh.data(), ts.dgate.data(), b.h2.data());
  lin(BlockLinear::Up, ts.dh.data(), ts.dup.data(), b.h2.data());
  rmsnorm_backward(ts.dxmid.data(), ts.dh.data(), b.xmid.data(), L.post_norm.data(), b.rstd2.data(), T, C, stream_);
  // attention
  zero(ts.datto, T * QD);
  lin(BlockLinear::O, ts.datto.data(), ts.dxmid.data(), b.atto.data());
  zero(ts.dq, T * QD);
  zero(ts.dk, T * KVD);
  zero(ts.dv, T * KVD);
  ensure(ts.datt, NH * T * T);
  attention_backward(ts.dq.data(), ts.dk.data(), ts.dv.data(), ts.datt.data(), ts.datto.data(), b.q.data(), b.k.data(),
                     b.v.data(), b.att.data(), T, 0, NH, NKV, HS, ts.packed ? ts.key_start.data() : nullptr, stream_);
  rope_backward(ts.dq.data(), ts.cos.data(), ts.sin.data(), T, NH, HS, stream_);
  rope_backward(ts.dk.data(), ts.cos.data(), ts.sin.data(), T, NKV, HS, stream_);
  zero(ts.dh, T * C);
  lin(BlockLinear::Q, ts.dh.data(), ts.dq.data(), b.h1.data());
  lin(BlockLinear::K, ts.dh.data(), ts.dk.data(), b.h1.data());
  lin(BlockLinear::V, ts.dh.data(), ts.dv.data(), b.h1.data());
  // dxin = dxmid + norm backward (written over dx)
  QLORA_CUDA_CHECK(cudaMemcpyAsync(dx, ts.dxmid.data(), static_cast<size_t>(T * C) * 4, cudaMemcpyDeviceToDevice, stream_));
  rmsnorm_backward(dx, ts.dh.data(), xin, L.input_norm.data(), b.rstd1.data(), T, C, stream_);
}

float CudaRunner::train_forward(TrainState& ts, const LoraModel& lm, std::span<const int> inputs,
                                std::span<const int> targets, std::span<const int32_t> positions, bool keep_all,
                                bool training, LoraRng* rng) const {
  const ModelSpec& s = spec_;
  const int64_t T = static_cast<int64_t>(inputs.size());
  const int64_t C = s.hidden, NL = s.n_layers, V = s.vocab, NH = s.n_heads, F = s.ffn, HS = s.head_dim;
  if (s.sliding_window > 0 && T > s.sliding_window)
    fail("--device cuda", "this " + s.family + " model attends through a sliding window of " +
                              std::to_string(s.sliding_window) + " positions, which the CUDA backend does not " +
                              "implement yet; a training sequence of " + std::to_string(T) +
                              " tokens needs it (use --device cpu, or a shorter --seq-len)");
  ts.T = T;

  // LoRA layers: shapes from the LoraModel, A and B uploaded now (the optimizer moved them).
  const std::vector<LoraLayer>& layers = lm.layers();
  if (ts.lora.size() != layers.size()) {
    ts.lora.clear();
    ts.lora.resize(layers.size());
  }
  ts.index.assign(static_cast<size_t>(NL), {});
  for (int64_t l = 0; l < NL; ++l)
    for (int w = 0; w < kBlockLinears; ++w) {
      const LoraLayer* lo = lm.find(l, static_cast<BlockLinear>(w));
      ts.index[static_cast<size_t>(l)][static_cast<size_t>(w)] = lo ? static_cast<int>(lo - layers.data()) : -1;
    }
  int64_t max_numel = V * C;  // the lm_head tile
  for (const DeviceLayer& D : layers_)
    for (const DeviceLinear& W : D.lin) max_numel = std::max(max_numel, W.out * W.in);
  ensure(ts.tile, max_numel);
  for (size_t i = 0; i < layers.size(); ++i) {
    const LoraLayer& h = layers[i];
    TrainLora& d = ts.lora[i];
    d.in = h.in;
    d.out = h.out;
    d.r = h.r;
    d.scaling = h.scaling;
    d.dropout = h.dropout;
    d.A.resize(h.A.size());
    d.B.resize(h.B.size());
    d.dA.resize(h.A.size());
    d.dB.resize(h.B.size());
    d.A.upload_async(h.A.data(), h.A.size(), stream_);
    d.B.upload_async(h.B.data(), h.B.size(), stream_);
  }

  // Positions: packed examples restart at 0 and see only their own keys.
  std::vector<int32_t> pos(static_cast<size_t>(T)), ks;
  ts.packed = false;
  for (int64_t t = 0; t < T; ++t) {
    pos[static_cast<size_t>(t)] = positions.empty() ? static_cast<int32_t>(t) : positions[static_cast<size_t>(t)];
    ts.packed = ts.packed || pos[static_cast<size_t>(t)] != t;
  }
  if (ts.packed) {
    ks.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) ks[static_cast<size_t>(t)] = static_cast<int32_t>(t) - pos[static_cast<size_t>(t)];
    ts.key_start.reserve(static_cast<size_t>(T));
    ts.key_start.upload_async(ks.data(), ks.size(), stream_);
  }
  std::vector<float> cs(static_cast<size_t>(T * HS / 2)), sn(cs.size());
  rope_tables(cs.data(), sn.data(), pos.data(), T, HS, s.rope_theta, s.rope_scaling);
  ensure(ts.cos, static_cast<int64_t>(cs.size()));
  ensure(ts.sin, static_cast<int64_t>(sn.size()));
  ts.cos.upload_async(cs.data(), cs.size(), stream_);
  ts.sin.upload_async(sn.data(), sn.size(), stream_);
  std::vector<int32_t> ids(inputs.begin(), inputs.end());
  for (int32_t id : ids)
    if (id < 0 || id >= V)
      fail("embedding", "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(V));
  check(T <= 65535, "--device cuda", "training sequences of more than 65535 tokens do not run on the GPU yet");
  ts.tokens.reserve(static_cast<size_t>(T));
  ts.tokens.upload_async(ids.data(), ids.size(), stream_);

  // Buffers for T tokens.
  ensure(ts.xs, (NL + 1) * T * C);
  ts.blocks.resize(keep_all ? static_cast<size_t>(NL) : 1);
  for (TrainBlock& b : ts.blocks) {
    for (auto* buf : {&b.h1, &b.xmid, &b.h2}) ensure(*buf, T * C);
    for (auto* buf : {&b.rstd1, &b.rstd2}) ensure(*buf, T);
    ensure(b.q, T * s.q_dim());
    ensure(b.atto, T * s.q_dim());
    ensure(b.k, T * s.kv_dim());
    ensure(b.v, T * s.kv_dim());
    ensure(b.att, NH * T * T);
    for (auto* buf : {&b.gate, &b.up, &b.act}) ensure(*buf, T * F);
  }

  // Dropout seeds, drawn in the CPU's order (block by block, Linear by Linear).
  ts.seeds.assign(static_cast<size_t>(NL), {});
  embedding_forward(ts.xs.data(), ts.tokens.data(), T, embed_.data(), embed_.type, C, stream_);
  for (int64_t l = 0; l < NL; ++l) {
    for (int w = 0; w < kBlockLinears; ++w) {
      const int li = ts.index[static_cast<size_t>(l)][static_cast<size_t>(w)];
      if (li >= 0 && training && ts.lora[static_cast<size_t>(li)].dropout > 0.f) {
        check(rng != nullptr, layers[static_cast<size_t>(li)].module_path,
              "LoRA dropout in training needs a random generator");
        ts.seeds[static_cast<size_t>(l)][static_cast<size_t>(w)] = rng->next_u64();
      }
    }
    train_block_forward(ts, keep_all ? l : 0, l, ts.xs.data() + (l + 1) * T * C, ts.xs.data() + l * T * C, training);
  }
  ensure(ts.hf, T * C);
  ensure(ts.rstdf, T);
  rmsnorm_forward(ts.hf.data(), ts.rstdf.data(), ts.xs.data() + NL * T * C, final_norm_.data(), T, C, s.norm_eps, dt_,
                  stream_);
  std::vector<int32_t> sel, sel_t;
  for (int64_t t = 0; t < T; ++t)
    if (targets[static_cast<size_t>(t)] != -100) {
      sel.push_back(static_cast<int32_t>(t));
      sel_t.push_back(targets[static_cast<size_t>(t)]);
    }
  const int64_t M = static_cast<int64_t>(sel.size());
  ts.M = M;
  // Nothing queued may still read the buffers the next call overwrites.
  QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (M == 0) return 0.f;
  for (int32_t tg : sel_t)
    if (tg < 0 || tg >= V)
      fail("cross_entropy", "target " + std::to_string(tg) + " is outside the vocabulary of " + std::to_string(V));
  ts.sel.reserve(static_cast<size_t>(M));
  ts.sel.upload_async(sel.data(), sel.size(), stream_);
  ts.sel_targets.reserve(static_cast<size_t>(M));
  ts.sel_targets.upload_async(sel_t.data(), sel_t.size(), stream_);
  ensure(ts.hsel, M * C);
  gather_rows(ts.hsel.data(), ts.hf.data(), ts.sel.data(), M, C, stream_);
  ensure(ts.logits, M * V);
  dense_matmul(ts.logits.data(), tied_ ? embed_ : lm_head_, ts.hsel.data(), M);
  round_activations(ts.logits.data(), M * V, dt_, stream_);
  // Loss and dlogits (in place).
  ensure(ts.row_loss, M);
  cross_entropy_forward_backward(ts.row_loss.data(), ts.logits.data(), ts.logits.data(), ts.sel_targets.data(), M, V,
                                 1.0f / static_cast<float>(M), -100, stream_);
  std::vector<float> rows(static_cast<size_t>(M));
  QLORA_CUDA_CHECK(cudaMemcpyAsync(rows.data(), ts.row_loss.data(), rows.size() * 4, cudaMemcpyDeviceToHost, stream_));
  QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double total = 0.0;
  for (float r : rows) total += static_cast<double>(r);
  return static_cast<float>(total / static_cast<double>(M));
}

float CudaRunner::forward_loss(const LoraModel& lm, std::span<const int> inputs, std::span<const int> targets,
                               std::span<const int32_t> positions) const {
  std::lock_guard<std::mutex> lock(mu_);
  QLORA_CUDA_CHECK(cudaSetDevice(device_));
  if (!train_) train_.reset(new TrainState);
  return train_forward(*train_, lm, inputs, targets, positions, /*keep_all=*/false, /*training=*/false, nullptr);
}

float CudaRunner::forward_backward(LoraModel& lm, std::span<const int> inputs, std::span<const int> targets,
                                   const TrainStepOptions& opt, LoraRng* rng, std::span<const int32_t> positions) const {
  std::lock_guard<std::mutex> lock(mu_);
  QLORA_CUDA_CHECK(cudaSetDevice(device_));
  if (!train_) train_.reset(new TrainState);
  TrainState& ts = *train_;
  const ModelSpec& s = spec_;
  const bool training = opt.training;
  const float loss = train_forward(ts, lm, inputs, targets, positions, !opt.checkpointing, training, rng);
  const int64_t T = ts.T, M = ts.M, C = s.hidden, V = s.vocab, NL = s.n_layers;
  if (M == 0) return 0.f;  // nothing to learn from: no gradient
  for (TrainLora& d : ts.lora) {
    QLORA_CUDA_CHECK(cudaMemsetAsync(d.dA.data(), 0, d.dA.bytes(), stream_));
    QLORA_CUDA_CHECK(cudaMemsetAsync(d.dB.data(), 0, d.dB.bytes(), stream_));
  }
  float* dlogits = ts.logits.data();
  if (opt.grad_scale != 1.f) scale(dlogits, opt.grad_scale, M * V, stream_);
  // lm_head (frozen): dhsel (M, C) = dlogits · W; scattered back to the T positions.
  const DeviceDense& head = tied_ ? embed_ : lm_head_;
  const float* W = head.f32.data();
  if (head.type != DenseType::F32) {
    half_to_f32(ts.tile.data(), head.h16.data(), V * C, head.type == DenseType::BF16, stream_);
    W = ts.tile.data();
  }
  ensure(ts.dhsel, M * C);
  blas_->sgemm_nn(M, C, V, 1.f, dlogits, V, W, C, 0.f, ts.dhsel.data(), C);
  ensure(ts.dhf, T * C);
  QLORA_CUDA_CHECK(cudaMemsetAsync(ts.dhf.data(), 0, static_cast<size_t>(T * C) * 4, stream_));
  scatter_rows(ts.dhf.data(), ts.dhsel.data(), ts.sel.data(), M, C, stream_);
  ensure(ts.dx, T * C);
  QLORA_CUDA_CHECK(cudaMemsetAsync(ts.dx.data(), 0, static_cast<size_t>(T * C) * 4, stream_));
  rmsnorm_backward(ts.dx.data(), ts.dhf.data(), ts.xs.data() + NL * T * C, final_norm_.data(), ts.rstdf.data(), T, C,
                   stream_);
  // Blocks, last to first (recomputed from their inputs with checkpointing).
  if (opt.checkpointing) ensure(ts.recompute, T * C);
  for (int64_t l = NL - 1; l >= 0; --l) {
    const float* xin = ts.xs.data() + l * T * C;
    const int64_t blk = opt.checkpointing ? 0 : l;
    if (opt.checkpointing) train_block_forward(ts, 0, l, ts.recompute.data(), xin, training);
    train_block_backward(ts, blk, l, ts.dx.data(), xin);
  }
  // The LoRA gradients join the host's (which may hold earlier micro-batches').
  std::vector<float> g;
  std::vector<LoraLayer>& layers = lm.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    LoraLayer& h = layers[i];
    const TrainLora& d = ts.lora[i];
    g.resize(h.dA.size());
    QLORA_CUDA_CHECK(cudaMemcpyAsync(g.data(), d.dA.data(), g.size() * 4, cudaMemcpyDeviceToHost, stream_));
    QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (size_t k = 0; k < g.size(); ++k) h.dA[k] += g[k];
    g.resize(h.dB.size());
    QLORA_CUDA_CHECK(cudaMemcpyAsync(g.data(), d.dB.data(), g.size() * 4, cudaMemcpyDeviceToHost, stream_));
    QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (size_t k = 0; k < g.size(); ++k) h.dB[k] += g[k];
  }
  return loss;
}

}  // namespace qlora::cuda
