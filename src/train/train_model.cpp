#include "train/train_model.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "base/error.h"
#include "model/block_run.h"
#include "model/moe_block.h"
#include "model/ops.h"

namespace qlora {

namespace {

// A LoRA cache (lora/lora.h) in `be`'s memory, room for the largest of `layers` over T tokens
// (the mask only when dropout acts).
void size_lora_cache(Backend& be, LoraCache& c, BackendBuffer& h, BackendBuffer& mask,
                     std::span<const LoraLayer* const> layers, int64_t T, bool training) {
  LoraCacheFloats n;
  const bool packed = be.lora_mask_packed();  // (the bits as 32-bit words, in a float buffer)
  for (const LoraLayer* lo : layers) {
    if (!lo) continue;
    const LoraCacheFloats f = lora_cache_floats(T, lo->in, lo->r, training && lo->dropout > 0.f);
    n.h = std::max(n.h, f.h);
    n.mask = std::max(n.mask, packed ? f.mask_words : f.mask);
  }
  h.ensure(be, n.h);
  mask.ensure(be, n.mask);
  c.h = n.h > 0 ? h.data() : nullptr;
  c.mask = n.mask > 0 && !packed ? mask.data() : nullptr;
  c.mask_bits = n.mask > 0 && packed ? reinterpret_cast<uint32_t*>(mask.data()) : nullptr;
  c.masked = false;
}

}  // namespace

// What the backward of one block reads (the program's saved buffers and the LoRA caches),
// for T tokens.
struct TrainWorkspace::Block {
  std::vector<BackendBuffer> saved;  // per program buffer; empty unless saved
  MoeSavedPtr moe;                   // mixture-of-experts layers: the op's kept state
  std::array<LoraCache, kBlockLinears> lc;
  std::array<BackendBuffer, kBlockLinears> lc_h, lc_mask;  // their storage

  // For T tokens in all whose attention probabilities take NH * probs_per_head floats: layer
  // `layer`'s buffers and caches (a hybrid model's layers use their own kind's), or with -1
  // those of any layer (a checkpointed run reuses one Block for all).
  void resize(Backend& be, const BlockProgram& p, const LoraModel& lm, int64_t T, int64_t probs_per_head,
              bool training, int64_t layer) {
    saved.resize(p.buffers().size());
    if (p.spec().moe() && !moe) moe = make_moe_saved();
    for (int b = 0; b < static_cast<int>(p.buffers().size()); ++b)
      if (p.buffers()[static_cast<size_t>(b)].saved && b != p.input() && b != p.output() &&
          (layer < 0 || p.used_on(b, layer)))
        saved[static_cast<size_t>(b)].ensure(
            be, layer < 0 ? p.batch_floats(b, T, probs_per_head) : p.batch_floats_on(b, layer, T, probs_per_head));
    std::vector<const LoraLayer*> layers;
    for (int w = 0; w < kBlockLinears; ++w) {
      layers.clear();
      for (int64_t l = 0; l < p.spec().n_layers; ++l)
        if (layer < 0 || l == layer) layers.push_back(lm.find(l, static_cast<BlockLinear>(w)));
      size_lora_cache(be, lc[static_cast<size_t>(w)], lc_h[static_cast<size_t>(w)], lc_mask[static_cast<size_t>(w)],
                      layers, T, training);
    }
  }
};

// Every activation, gradient and scratch buffer is the backend's memory (model/backend.h);
// the host keeps the batch's token ids, targets, positions and the tables it computes
// before copying them over. Buffers only grow (BackendArray::ensure).
struct TrainWorkspace::Impl {
  Backend* be = &cpu_backend();
  int64_t T = 0;                         // tokens of the batch, its sequences laid end to end
  // --- host
  std::vector<int64_t> seg;              // the sequences' lengths
  std::vector<int> tokens, targets;      // (T) the batch's inputs and targets
  std::vector<int32_t> pos;              // (T) positions
  std::vector<float> q_scale;            // (T) ModelSpec::q_pos_scale of each position, or empty
  std::vector<LoraRng> rng_at_block;     // generator state at each block's forward
  std::vector<float> cos_host, sin_host; // (T, HS/2) staging for the rotary tables
  std::vector<int32_t> key_start_host;   // (T) staging for the key windows
  // The output head runs only on the M positions that have a target: with prompt masking
  // most positions of an instruction example have none, and the (vocab x hidden) head is
  // the largest single product of the model.
  std::vector<int64_t> sel;              // (M) positions with a target
  std::vector<int> sel_targets;          // (M) their targets
  // --- backend
  BackendBuffer xs;                      // (NL + 1, T, C) block inputs, then the last output
  std::vector<Block> blocks;             // NL without checkpointing, 1 with
  BackendBuffer cos, sin;                // (T, HS/2)
  BackendBuffer cos_l, sin_l;            // (T, HS/2) rope_local models: the sliding layers' tables
  BackendArray<int32_t> key_start;       // (T) first key of each query's example (packed batches)
  BackendArray<int32_t> key_start_win;   // (T) the same, narrowed by the sliding window
  bool packed = false, windowed = false; // whether key_start / key_start_win are in use
  std::vector<int64_t> rec_seg;          // packed: the examples' lengths (hybrid models' DeltaNet restarts)
  BackendBuffer hf, rstdf, logits;       // (T, C), (T, 2), (M, V)
  // Models that project their embeddings (OPT's project_in / project_out): the embedding
  // rows (project_in's input) and project_out's output, (T, E) each, and the adapters' caches.
  BackendBuffer emb, he, dhe;
  LoraCache lc_in, lc_out;
  BackendBuffer lc_in_h, lc_in_mask, lc_out_h, lc_out_mask;  // their storage
  BackendBuffer dlogits;                 // (M, V) final_softcap models (logits keep the capped values)
  BackendBuffer hsel, dhsel;             // (M, E) gathered head inputs and their gradient
  BackendBuffer head_tile;               // dequantized rows of the output head
  // The block's transient buffers (written and read within its forward only), and the
  // gradients of its buffers, per program buffer.
  std::vector<BackendBuffer> transient, grad;
  // The block's declared scratch (model/block_scratch.h), shared by every block.
  BackendBuffer scratch_arena;
  BlockScratch scratch;
  // backward: the gradient flowing down the residual stream, the final norm's input
  // gradient, and (checkpointing) the recomputed block's output
  BackendBuffer dx, dhf, recompute_out;
  // Shared-KV layers (Gemma 4 E2B / E4B), per layer type (0 sliding, 1 full attention): the
  // producer's keys (after the rotary) and values, kept from its forward for the shared layers'
  // forward and backward, and the gradients the shared layers send back to them.
  std::array<BackendBuffer, 2> shared_k, shared_v, shared_dk, shared_dv;
  // Gemma 4's per-layer inputs (L, T, P), what their backward reads, their gradient, and the
  // adapter cache of per_layer_model_projection.
  BackendBuffer ple, ple_pre, ple_rstd, dple, ple_tile;
  LoraCache lc_ple;
  BackendBuffer lc_ple_h, lc_ple_mask;

  void resize_block_scratch(const BlockProgram& p, const LoraModel& lm, int64_t T, int64_t longest, bool training,
                            bool backward) {
    const size_t nb = p.buffers().size();
    transient.resize(nb);
    grad.resize(nb);
    for (int b = 0; b < static_cast<int>(nb); ++b) {
      const int64_t n = p.batch_floats(b, T, 0);  // (probabilities are saved, never here)
      if (b == p.input() || b == p.output()) continue;
      if (!p.buffers()[static_cast<size_t>(b)].saved) transient[static_cast<size_t>(b)].ensure(*be, n);
      if (backward && p.has_grad(b)) grad[static_cast<size_t>(b)].ensure(*be, n);
    }
    if (backward) grad[static_cast<size_t>(p.input())].ensure(*be, T * p.spec().hidden);
    BlockScratchQuery q;
    q.tokens = T;
    q.longest = longest;
    q.training = true;  // (the probabilities are kept, even by forward_loss)
    q.backward = backward;
    add_lora_to_scratch_query(q, &lm);
    q.lora_dropout = q.lora_dropout && training;
    const BlockScratchFloats f = block_scratch_floats(p, q);
    scratch_arena.ensure(*be, f.total());
    scratch = BlockScratch::carve(scratch_arena.data(), f);
  }
};

TrainWorkspace::TrainWorkspace(Backend& backend) : impl_(std::make_unique<Impl>()) { impl_->be = &backend; }
TrainWorkspace::~TrainWorkspace() = default;
TrainWorkspace::TrainWorkspace(TrainWorkspace&&) noexcept = default;
TrainWorkspace& TrainWorkspace::operator=(TrainWorkspace&&) noexcept = default;

namespace {

using Block = TrainWorkspace::Block;

// The attention op that runs on layer l (a Gemma 4 program has one per layer type), or null.
const BlockOp* attention_op(const BlockProgram& p, int64_t l) {
  for (const BlockOp& o : p.ops())
    if (o.kind == BlockOpKind::Attention && o.runs_on(p.spec(), l)) return &o;
  return nullptr;
}

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
  if (s.layer_slides(l) && w.windowed) return w.key_start_win.data();
  return w.packed ? w.key_start.data() : nullptr;
}

// A run of the model's block program for layer l over the block's buffers: the saved ones
// in `b`, the transient ones in the workspace, input and output bound to xin / xout.
BlockRun block_run(TrainWorkspace::Impl& w, Block& b, const LoraModel& lm, int64_t l, const float* xin, float* xout,
                   int64_t T) {
  const Model& m = lm.model();
  const ModelSpec& s = m.spec();
  const BlockProgram& p = m.block();
  BlockRun r;
  r.backend = w.be;
  r.program = &p;
  r.weights = &m.layers()[static_cast<size_t>(l)];
  r.dtype = m.compute_dtype();
  r.layer = l;
  r.T = T;
  if (w.seg.size() > 1) r.segments = w.seg;
  if (w.packed && s.hybrid()) r.recurrent_segments = w.rec_seg;
  r.buf.assign(p.buffers().size(), nullptr);
  for (size_t i = 0; i < r.buf.size(); ++i) {
    BackendBuffer& v = p.buffers()[i].saved ? b.saved[i] : w.transient[i];
    if (!v.empty()) r.buf[i] = v.data();
  }
  r.buf[static_cast<size_t>(p.input())] = const_cast<float*>(xin);  // only read
  r.buf[static_cast<size_t>(p.output())] = xout;
  if (s.kv_shared_layers > 0) {
    const int type = s.layer_global(l) ? 1 : 0;
    if (s.layer_kv_shared(l)) {  // (its attention reads its producer's keys and values)
      const BlockOp* a = attention_op(p, l);
      r.buf[static_cast<size_t>(a->in1)] = w.shared_k[static_cast<size_t>(type)].data();
      r.buf[static_cast<size_t>(a->in2)] = w.shared_v[static_cast<size_t>(type)].data();
    } else if (s.layer_kv_producer(l)) {
      r.shared_dk = w.shared_dk[static_cast<size_t>(type)].data();
      r.shared_dv = w.shared_dv[static_cast<size_t>(type)].data();
    }
  }
  const bool local = s.layer_uses_local_rope(l);
  r.cos = (local ? w.cos_l : w.cos).data();
  r.sin = (local ? w.sin_l : w.sin).data();
  r.key_start = layer_key_start(w, s, l);
  if (!w.q_scale.empty()) r.q_scale = w.q_scale.data();
  if (s.ple()) {
    r.ple = w.ple.data() + l * T * s.ple_dim;
    if (!w.dple.empty() && lm.find(ModelLinear::PleProjection)) r.dple = w.dple.data() + l * T * s.ple_dim;
  }
  r.adapter = &lm;
  r.lora_caches = b.lc.data();
  r.scratch = w.scratch;
  // (MoE: the op keeps its forward for the backward only when one Block serves every layer,
  // i.e. with checkpointing, where the layer's backward follows its recomputed forward; without
  // it the kept state would be held for every layer at once, and the backward recomputes)
  r.moe_saved = w.blocks.size() == 1 ? b.moe.get() : nullptr;
  return r;
}

// xout (T, C) = block(xin); fills `b`.
void block_forward(float* xout, TrainWorkspace::Impl& w, Block& b, const LoraModel& lm, int64_t l, const float* xin,
                   int64_t T, bool training, LoraRng* rng) {
  BlockRun r = block_run(w, b, lm, l, xin, xout, T);
  r.training = training;
  r.rng = rng;
  qlora::block_forward(r);
}

// Given dxout (T, C), WRITES dxin (T, C) (may alias dxout); accumulates LoRA gradients.
void block_backward(float* dxin, TrainWorkspace::Impl& w, Block& b, LoraModel& lm, int64_t l, const float* dxout,
                    const float* xin, int64_t T) {
  const BlockProgram& p = lm.model().block();
  const BlockRun r = block_run(w, b, lm, l, xin, nullptr, T);
  std::vector<float*> grad(p.buffers().size(), nullptr);
  for (size_t i = 0; i < grad.size(); ++i)
    if (!w.grad[i].empty()) grad[i] = w.grad[i].data();
  grad[static_cast<size_t>(p.output())] = const_cast<float*>(dxout);  // only read
  qlora::block_backward(r, lm, grad);
  w.be->copy(dxin, grad[static_cast<size_t>(p.input())], T * p.spec().hidden);
}

// Rotary tables for the batch's positions, computed on the host, into (cos, sin).
void upload_rope_tables(TrainWorkspace::Impl& w, BackendBuffer& cos, BackendBuffer& sin, const ModelSpec& s, float theta,
                        const RopeScaling& scaling, bool local) {
  const int64_t T = w.T, HS = s.rope_table_dims(local), n = T * (HS / 2);
  w.cos_host.resize(static_cast<size_t>(n));
  w.sin_host.resize(static_cast<size_t>(n));
  rope_tables(w.cos_host.data(), w.sin_host.data(), w.pos.data(), T, HS, theta, scaling);
  cos.ensure(*w.be, n);
  sin.ensure(*w.be, n);
  w.be->upload(cos.data(), w.cos_host.data(), n);
  w.be->upload(sin.data(), w.sin_host.data(), n);
  w.be->synchronize();  // (the staging vectors are reused)
}

// Embedding, all blocks (caching per `keep_all`), final norm and the logits of the
// positions that have a target (w.sel), for the batch's sequences laid end to end.
void model_forward(TrainWorkspace::Impl& w, const LoraModel& lm, std::span<const TrainSequenceRef> batch,
                   bool keep_all, bool training, LoraRng* rng, bool backward) {
  const Model& m = lm.model();
  const ModelSpec& s = m.spec();
  Backend& be = *w.be;
  be.bind_thread();
  w.seg.clear();
  w.tokens.clear();
  w.targets.clear();
  w.pos.clear();
  int64_t probs_per_head = 0, longest = 0;
  for (const TrainSequenceRef& q : batch) {
    const int64_t n = static_cast<int64_t>(q.inputs.size());
    w.seg.push_back(n);
    w.tokens.insert(w.tokens.end(), q.inputs.begin(), q.inputs.end());
    w.targets.insert(w.targets.end(), q.targets.begin(), q.targets.end());
    for (int64_t t = 0; t < n; ++t)
      w.pos.push_back(q.positions.empty() ? static_cast<int32_t>(t) : q.positions[static_cast<size_t>(t)]);
    probs_per_head += n * n;
    longest = std::max(longest, n);
  }
  const int64_t T = static_cast<int64_t>(w.tokens.size());
  const int64_t C = s.hidden, NL = s.n_layers, V = s.vocab;
  w.T = T;
  w.xs.ensure(be, (NL + 1) * T * C);
  w.blocks.resize(keep_all ? static_cast<size_t>(NL) : 1);
  for (size_t i = 0; i < w.blocks.size(); ++i)
    w.blocks[i].resize(be, m.block(), lm, T, probs_per_head, training, keep_all ? static_cast<int64_t>(i) : -1);
  const LoraLayer* in_layer = lm.find(ModelLinear::ProjectIn);
  const LoraLayer* out_layer = lm.find(ModelLinear::ProjectOut);
  size_lora_cache(be, w.lc_in, w.lc_in_h, w.lc_in_mask, std::span(&in_layer, 1), T, training);
  size_lora_cache(be, w.lc_out, w.lc_out_h, w.lc_out_mask, std::span(&out_layer, 1), T, training);
  w.resize_block_scratch(m.block(), lm, T, longest, training, backward);
  // Each query's first key, relative to its sequence's start: its own example's start when
  // packed, and on sliding layers no further back than the window.
  std::vector<int32_t> rel(static_cast<size_t>(T));  // index within its sequence
  w.packed = false;
  for (int64_t t = 0, i = 0; i < static_cast<int64_t>(w.seg.size()); ++i)
    for (int64_t k = 0; k < w.seg[static_cast<size_t>(i)]; ++k, ++t) {
      rel[static_cast<size_t>(t)] = static_cast<int32_t>(k);
      w.packed = w.packed || w.pos[static_cast<size_t>(t)] != k;
    }
  w.key_start_host.resize(static_cast<size_t>(T));
  w.rec_seg.clear();
  if (w.packed) {
    for (int64_t t = 0; t < T; ++t) {  // (an example starts where its position is 0)
      if (w.pos[static_cast<size_t>(t)] == 0 || rel[static_cast<size_t>(t)] == 0) w.rec_seg.push_back(0);
      ++w.rec_seg.back();
    }
    for (int64_t t = 0; t < T; ++t)
      w.key_start_host[static_cast<size_t>(t)] = rel[static_cast<size_t>(t)] - w.pos[static_cast<size_t>(t)];
    w.key_start.ensure(be, T);
    be.upload(w.key_start.data(), w.key_start_host.data(), T);
    be.synchronize();
  }
  w.windowed = s.sliding_window > 0 && longest > s.sliding_window;
  if (w.windowed) {
    for (int64_t t = 0; t < T; ++t) {
      const int32_t p = w.pos[static_cast<size_t>(t)];
      w.key_start_host[static_cast<size_t>(t)] =
          static_cast<int32_t>(rel[static_cast<size_t>(t)] - p + first_visible_key(s, p));
    }
    w.key_start_win.ensure(be, T);
    be.upload(w.key_start_win.data(), w.key_start_host.data(), T);
    be.synchronize();
  }
  upload_rope_tables(w, w.cos, w.sin, s, s.rope_theta, s.rope_scaling, false);
  w.q_scale.clear();  // (Ministral 3's per-position query scale, host memory)
  if (s.q_pos_scale_beta != 0.0f)
    for (int32_t p : w.pos) w.q_scale.push_back(s.q_pos_scale(p));
  if (s.rope_local) upload_rope_tables(w, w.cos_l, w.sin_l, s, s.rope_theta_local, s.rope_scaling_local, true);
  w.rng_at_block.clear();
  w.hf.ensure(be, T * C);
  const int64_t E = s.embed_width();
  if (s.projects_embeddings()) w.emb.ensure(be, T * E);
  embed_forward(be, w.xs.data(), w.emb.data(), w.hf.data(), w.tokens, w.pos.data(), m, &lm, &w.lc_in, training, rng,
                w.scratch.lora);
  if (s.ple()) {  // (Gemma 4: each layer's per-layer inputs, from the tokens and their embeddings)
    const int64_t n = T * NL * s.ple_dim;
    w.ple.ensure(be, n);
    w.ple_pre.ensure(be, n);
    w.ple_rstd.ensure(be, T * NL);
    if (backward) w.dple.ensure(be, n);
    const LoraLayer* ple_layer = lm.find(ModelLinear::PleProjection);
    size_lora_cache(be, w.lc_ple, w.lc_ple_h, w.lc_ple_mask, std::span(&ple_layer, 1), T, training);
    ple_inputs_forward(be, w.ple.data(), w.ple_pre.data(), w.ple_rstd.data(), w.tokens, w.xs.data(), m, &lm,
                       ple_layer ? &w.lc_ple : nullptr, training, rng, w.scratch.lora);
  }
  if (s.kv_shared_layers > 0)
    for (int type = 0; type < 2; ++type) {  // (the widest layer's keys and values)
      const int64_t kvd = s.attention_geometry(type == 1).kv_dim();
      for (BackendBuffer* sb : {&w.shared_k[static_cast<size_t>(type)], &w.shared_v[static_cast<size_t>(type)],
                                &w.shared_dk[static_cast<size_t>(type)], &w.shared_dv[static_cast<size_t>(type)]})
        sb->ensure(be, T * kvd);
    }
  for (int64_t l = 0; l < NL; ++l) {
    if (rng) w.rng_at_block.push_back(*rng);
    Block& b = w.blocks[keep_all ? static_cast<size_t>(l) : 0];
    block_forward(w.xs.data() + (l + 1) * T * C, w, b, lm, l, w.xs.data() + l * T * C, T, training, rng);
    if (s.layer_kv_producer(l)) {  // (its keys and values, for the shared layers after it)
      const BlockProgram& p = m.block();
      const BlockOp* a = attention_op(p, l);
      const int type = s.layer_global(l) ? 1 : 0;
      const int64_t n = T * s.layer_kv_dim(l);
      be.copy(w.shared_k[static_cast<size_t>(type)].data(), b.saved[static_cast<size_t>(a->in1)].data(), n);
      be.copy(w.shared_v[static_cast<size_t>(type)].data(), b.saved[static_cast<size_t>(a->in2)].data(), n);
    }
  }
  w.rstdf.ensure(be, 2 * T);  // (rstd, or LayerNorm's mean and rstd)
  if (s.projects_embeddings()) w.he.ensure(be, T * E);
  const float* head_in = head_input_forward(be, w.he.data(), w.hf.data(), w.rstdf.data(), w.xs.data() + NL * T * C, T,
                                            m, &lm, &w.lc_out, training, rng, w.scratch.lora);
  w.sel.clear();
  w.sel_targets.clear();
  for (int64_t t = 0; t < T; ++t)
    if (w.targets[static_cast<size_t>(t)] != -100) {  // cross_entropy_forward_backward's ignore_index
      w.sel.push_back(t);
      w.sel_targets.push_back(w.targets[static_cast<size_t>(t)]);
    }
  const int64_t M = static_cast<int64_t>(w.sel.size());
  const float* hin = head_in;
  if (M < T) {
    w.hsel.ensure(be, M * E);
    be.gather_rows(w.hsel.data(), head_in, w.sel, E);
    hin = w.hsel.data();
  }
  w.logits.ensure(be, M * V);
  if (M == 0) return;
  be.dense_forward(w.logits.data(), hin, M, m.lm_head());
  if (s.head_bias) be.add_bias(w.logits.data(), m.lm_head_bias().data(), M, V);  // (frozen: no gradient)
  be.round(w.logits.data(), M * V, m.compute_dtype());
  if (s.logit_factor() != 1.0f) logit_scale(be, w.logits.data(), M * V, s.logit_factor(), m.compute_dtype());
  if (s.final_softcap > 0.0f) be.softcap_forward(w.logits.data(), M * V, s.final_softcap, m.compute_dtype());
}

}  // namespace

float forward_loss(const LoraModel& lm, TrainWorkspace& ws, std::span<const int> inputs,
                   std::span<const int> targets, std::span<const int32_t> positions) {
  check_sequence(lm.model().spec(), inputs, targets, positions);
  if (const DeviceRunner* dev = lm.model().runner()) return dev->forward_loss(lm, inputs, targets, positions);
  TrainWorkspace::Impl& w = *ws.impl_;
  const TrainSequenceRef one{inputs, targets, positions};
  model_forward(w, lm, std::span(&one, 1), /*keep_all=*/false, /*training=*/false, nullptr, /*backward=*/false);
  if (w.sel.empty()) return 0.f;
  return w.be->cross_entropy(w.logits.data(), w.logits.data(), w.sel_targets, lm.model().spec().vocab);
}

float forward_backward(LoraModel& lm, TrainWorkspace& ws, std::span<const int> inputs, std::span<const int> targets,
                       const TrainStepOptions& opt, LoraRng* rng, std::span<const int32_t> positions) {
  const TrainSequenceRef one{inputs, targets, positions};
  return forward_backward_batch(lm, ws, std::span(&one, 1), opt, rng);
}

float forward_backward_batch(LoraModel& lm, TrainWorkspace& ws, std::span<const TrainSequenceRef> batch,
                             const TrainStepOptions& opt, LoraRng* rng) {
  const Model& m = lm.model();
  const ModelSpec& s = m.spec();
  if (batch.empty()) fail("train", "empty batch");
  int64_t n_targets = 0;
  for (const TrainSequenceRef& q : batch) {
    check_sequence(s, q.inputs, q.targets, q.positions);
    for (int t : q.targets) n_targets += t != -100;
  }
  const bool training = opt.training;
  LoraRng* frng = training ? rng : nullptr;
  // Another device (model/device_runner.h) runs the same step there, a sequence at a time,
  // each weighted by its share of the batch's targets.
  if (const DeviceRunner* dev = m.runner()) {
    double loss = 0;
    for (const TrainSequenceRef& q : batch) {
      int64_t n = 0;
      for (int t : q.targets) n += t != -100;
      if (n == 0) continue;
      TrainStepOptions o = opt;
      o.grad_scale = opt.grad_scale * static_cast<float>(static_cast<double>(n) / static_cast<double>(n_targets));
      loss += static_cast<double>(dev->forward_backward(lm, q.inputs, q.targets, o, frng, q.positions)) *
              static_cast<double>(n) / static_cast<double>(n_targets);
    }
    return static_cast<float>(loss);
  }
  TrainWorkspace::Impl& w = *ws.impl_;
  Backend& be = *w.be;
  model_forward(w, lm, batch, !opt.checkpointing, training, frng, /*backward=*/true);
  const int64_t T = w.T, C = s.hidden, V = s.vocab, NL = s.n_layers, E = s.embed_width();
  const int64_t M = static_cast<int64_t>(w.sel.size());
  if (M == 0) return 0.f;  // nothing to learn from: no gradient

  // loss and dlogits (in place), over the M positions with a target
  float* dlogits = w.logits.data();
  if (s.final_softcap > 0.0f) {  // the capped logits stay for the tanh's derivative
    w.dlogits.ensure(be, M * V);
    dlogits = w.dlogits.data();
  }
  const float loss = be.cross_entropy(dlogits, w.logits.data(), w.sel_targets, V);
  if (s.final_softcap > 0.0f) be.softcap_backward(dlogits, w.logits.data(), M * V, s.final_softcap);
  if (s.logit_factor() != 1.0f) be.scale(dlogits, M * V, s.logit_factor());  // (granite, cohere)
  if (opt.grad_scale != 1.f) be.scale(dlogits, M * V, opt.grad_scale);

  // lm_head (frozen, dense): dh (M, E) = dlogits · W, a tile of vocabulary rows at a time;
  // then scattered back to the T positions (the others get no gradient from the head).
  w.dhsel.ensure(be, M * E);
  be.zero(w.dhsel.data(), M * E);
  const DenseWeight& head = m.lm_head();
  w.head_tile.ensure(be, dense_backward_tile_floats(head));
  be.dense_backward(w.dhsel.data(), dlogits, M, head, w.head_tile.data());
  // project_out (models that project their embeddings): its input gradient, and its adapter's.
  BackendBuffer& dhead = s.projects_embeddings() ? w.dhe : w.dhf;
  dhead.ensure(be, T * E);
  be.zero(dhead.data(), T * E);
  be.scatter_rows(dhead.data(), w.dhsel.data(), w.sel, E);
  if (s.projects_embeddings()) {
    w.dhf.ensure(be, T * C);
    be.zero(w.dhf.data(), T * C);
    LoraLayer* lo = lm.find(ModelLinear::ProjectOut);
    be.linear_backward(w.dhf.data(), w.dhe.data(), w.hf.data(), T, m.model_linear(ModelLinear::ProjectOut), lo,
                       lo ? &w.lc_out : nullptr, w.scratch.weight_tile, w.scratch.lora);
  }
  w.dx.ensure(be, T * C);
  be.zero(w.dx.data(), T * C);
  if (s.final_norm)
    be.norm_backward(s, w.dx.data(), w.dhf.data(), w.xs.data() + NL * T * C, m.final_norm().data(), w.rstdf.data(), T,
                     C);
  else
    be.copy(w.dx.data(), w.dhf.data(), T * C);

  // blocks, last to first
  if (opt.checkpointing) w.recompute_out.ensure(be, T * C);
  if (s.kv_shared_layers > 0)
    for (int type = 0; type < 2; ++type) {
      const int64_t kvd = s.attention_geometry(type == 1).kv_dim();
      be.zero(w.shared_dk[static_cast<size_t>(type)].data(), T * kvd);
      be.zero(w.shared_dv[static_cast<size_t>(type)].data(), T * kvd);
    }
  if (s.ple()) be.zero(w.dple.data(), T * NL * s.ple_dim);
  for (int64_t l = NL - 1; l >= 0; --l) {
    const float* xin = w.xs.data() + l * T * C;
    Block* b;
    if (opt.checkpointing) {
      b = &w.blocks[0];
      LoraRng r = frng ? w.rng_at_block[static_cast<size_t>(l)] : LoraRng(0);
      block_forward(w.recompute_out.data(), w, *b, lm, l, xin, T, training, frng ? &r : nullptr);
    } else {
      b = &w.blocks[static_cast<size_t>(l)];
    }
    block_backward(w.dx.data(), w, *b, lm, l, w.dx.data(), xin, T);
    if (s.layer_kv_shared(l)) {  // (what its attention sends back to the producer's keys and values)
      const BlockOp* a = attention_op(m.block(), l);
      const int type = s.layer_global(l) ? 1 : 0;
      const int64_t n = T * s.layer_kv_dim(l);
      be.axpy(w.shared_dk[static_cast<size_t>(type)].data(), 1.0f, w.grad[static_cast<size_t>(a->in1)].data(), n);
      be.axpy(w.shared_dv[static_cast<size_t>(type)].data(), 1.0f, w.grad[static_cast<size_t>(a->in2)].data(), n);
    }
  }
  if (s.ple() && lm.find(ModelLinear::PleProjection)) {  // (Gemma 4: per_layer_model_projection's adapter)
    w.ple_tile.ensure(be, linear_backward_tile_floats(C, NL * s.ple_dim));
    ple_inputs_backward(be, w.dple.data(), w.ple_pre.data(), w.ple_rstd.data(), w.xs.data(), T, m, lm, &w.lc_ple,
                        w.ple_tile.data(), w.scratch.lora);
  }
  // project_in's adapter: the first block's input gradient is its output's (positions are
  // added after it and take no gradient); nothing below it learns (no input gradient).
  if (LoraLayer* lo = lm.find(ModelLinear::ProjectIn))
    be.linear_backward(nullptr, w.dx.data(), w.emb.data(), T, m.model_linear(ModelLinear::ProjectIn), lo, &w.lc_in,
                       nullptr, w.scratch.lora);
  be.synchronize();
  return loss;
}

}  // namespace qlora
