// The forward passes of a loaded Model (inference, batched decoding, the Linears outside the blocks)
// and set_adapter. Loading and the weights' accessors: model/model_load.cpp.
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>

#include "base/error.h"
#include "lora/lora.h"
#include "lora/lora_model.h"
#include "model/block_run.h"
#include "model/linear_kernels.h"
#include "model/ops.h"
#include "model/ops_backward.h"

namespace qlora {

namespace {

// y (T, out) = W x (+ the adapter's LoRA), rounded to the compute dtype: a block Linear op's
// arithmetic, for the Linears outside the blocks.
void model_linear_forward(Backend& be, float* y, const float* x, int64_t T, const Model& model, ModelLinear which,
                          const LoraModel* adapter, LoraCache* cache, bool training, LoraRng* rng,
                          const LoraScratch& lora_scratch) {
  const QuantLinear& W = model.model_linear(which);
  const LoraLayer* lo = adapter ? adapter->find(which) : nullptr;
  be.linear_forward(y, x, T, W, lo, cache, training, rng, lora_scratch);
  be.round(y, T * W.out_features(), model.compute_dtype());
}

}  // namespace

void embed_forward(Backend& be, float* x, float* emb, float* scratch, std::span<const int> tokens, const int32_t* pos,
                   const Model& model, const LoraModel* adapter, LoraCache* lora_cache, bool training, LoraRng* rng,
                   const LoraScratch& lora_scratch) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  if (model.spec().projects_embeddings()) {
    be.embedding_forward(emb, tokens, model.embed_tokens());
    model_linear_forward(be, x, emb, T, model, ModelLinear::ProjectIn, adapter, lora_cache, training, rng, lora_scratch);
  } else {
    be.embedding_forward(x, tokens, model.embed_tokens());
  }
  embed_extras(be, x, scratch, pos, T, model);
}

void ple_inputs_forward(Backend& be, float* out, float* pre, float* rstd, std::span<const int> tokens, const float* emb,
                        const Model& model, const LoraModel* adapter, LoraCache* lora_cache, bool training, LoraRng* rng,
                        const LoraScratch& lora_scratch) {
  const ModelSpec& s = model.spec();
  const ComputeDType dt = model.compute_dtype();
  check(be.host_addressable(), "per-layer inputs", std::string("run on the CPU backend only, not on ") + be.name());
  const int64_t T = static_cast<int64_t>(tokens.size()), L = s.n_layers, P = s.ple_dim, LP = L * P;
  // (T, L*P): per_layer_model_projection(emb) / sqrt(hidden), each step rounded
  model_linear_forward(be, pre, emb, T, model, ModelLinear::PleProjection, adapter, lora_cache, training, rng,
                       lora_scratch);
  be.scale(pre, T * LP, static_cast<float>(std::pow(static_cast<double>(s.hidden), -0.5)));
  be.round(pre, T * LP, dt);
  // its RMSNorm over each layer's P values (float32, rounded once), into the (L, T, P) output
  std::vector<float> normed(static_cast<size_t>(T * LP)), tok(static_cast<size_t>(LP));
  rmsnorm_forward(normed.data(), rstd, pre, model.ple_projection_norm().data(), T * L, P, s.norm_eps, dt, 0.0f,
                  /*round_once=*/true);
  const float inv_sqrt2 = static_cast<float>(std::pow(2.0, -0.5));
  for (int64_t t = 0; t < T; ++t) {
    const int id = tokens[static_cast<size_t>(t)];
    if (id < 0 || id >= s.ple_vocab)
      fail("per-layer inputs", "token id " + std::to_string(id) + " is outside vocab_size_per_layer_input " +
                                   std::to_string(s.ple_vocab));
    model.embed_per_layer().rows_to_f32(id, id + 1, tok.data());
    embed_scale_forward(tok.data(), LP, P, dt);  // (times sqrt(P) in the compute dtype, as the embedding's scale)
    const float* nr = normed.data() + t * LP;
    for (int64_t i = 0; i < LP; ++i) tok[static_cast<size_t>(i)] += nr[i];
    round_activations(tok.data(), LP, dt);
    for (float& v : tok) v *= inv_sqrt2;
    round_activations(tok.data(), LP, dt);
    for (int64_t l = 0; l < L; ++l) std::copy_n(tok.data() + l * P, P, out + (l * T + t) * P);
  }
}

void ple_inputs_backward(Backend& be, const float* dple, const float* pre, const float* rstd, const float* emb, int64_t T,
                         const Model& model, LoraModel& adapter, LoraCache* lora_cache, float* tile,
                         const LoraScratch& lora_scratch) {
  const ModelSpec& s = model.spec();
  LoraLayer* lo = adapter.find(ModelLinear::PleProjection);
  if (!lo) return;  // (nothing below learns)
  const int64_t L = s.n_layers, P = s.ple_dim, LP = L * P;
  const float inv_sqrt2 = static_cast<float>(std::pow(2.0, -0.5));
  std::vector<float> dnormed(static_cast<size_t>(T * LP)), dpre(static_cast<size_t>(T * LP), 0.0f);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < P; ++i)
        dnormed[static_cast<size_t>(t * LP + l * P + i)] = dple[(l * T + t) * P + i] * inv_sqrt2;
  rmsnorm_backward(dpre.data(), nullptr, dnormed.data(), pre, model.ple_projection_norm().data(), rstd, T * L, P, 0.0f);
  be.scale(dpre.data(), T * LP, static_cast<float>(std::pow(static_cast<double>(s.hidden), -0.5)));
  be.linear_backward(nullptr, dpre.data(), emb, T, model.model_linear(ModelLinear::PleProjection), lo, lora_cache,
                     tile, lora_scratch);
}

const float* head_input_forward(Backend& be, float* e, float* h, float* stats, const float* x, int64_t n,
                                const Model& model, const LoraModel* adapter, LoraCache* lora_cache, bool training,
                                LoraRng* rng, const LoraScratch& lora_scratch) {
  const ModelSpec& s = model.spec();
  if (s.final_norm)
    be.norm_forward(s, h, stats, x, model.final_norm().data(), model.final_norm_bias().data(), n, s.hidden,
                    model.compute_dtype());
  else
    be.copy(h, x, n * s.hidden);
  if (!s.projects_embeddings()) return h;
  model_linear_forward(be, e, h, n, model, ModelLinear::ProjectOut, adapter, lora_cache, training, rng, lora_scratch);
  return e;
}

void logit_scale(Backend& be, float* logits, int64_t n, float factor, ComputeDType dtype) {
  be.scale(logits, n, factor);
  be.round(logits, n, dtype);
}

void embed_extras(Backend& be, float* x, float* scratch, const int32_t* pos, int64_t T, const Model& model) {
  const ModelSpec& s = model.spec();
  if (s.embed_scale) be.embed_scale(x, T * s.hidden, s.hidden, model.compute_dtype());
  if (s.embed_multiplier != 1.0f) {  // granite: inputs_embeds * embedding_multiplier
    be.scale(x, T * s.hidden, s.embed_multiplier);
    be.round(x, T * s.hidden, model.compute_dtype());
  }
  if (s.positional == PositionalKind::Learned) add_position_embeddings(be, x, scratch, pos, T, model);
  if (s.embed_norm)  // (in place: each row is read whole before it is written)
    be.layernorm_forward(x, x, model.embed_norm().data(), model.embed_norm_bias().data(), T, s.hidden, s.norm_eps,
                         model.compute_dtype());
}

void add_position_embeddings(Backend& be, float* x, float* scratch, const int32_t* pos, int64_t T, const Model& model) {
  const ModelSpec& s = model.spec();
  for (int64_t t = 0; t < T; ++t)
    if (pos[t] < 0 || pos[t] >= s.max_positions)
      fail("position embedding", "position " + std::to_string(pos[t]) + " is past the model's " +
                                     std::to_string(s.max_positions) + " learned positions");
  std::vector<int> rows(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) rows[static_cast<size_t>(t)] = pos[t] + static_cast<int>(s.position_offset);
  be.embedding_forward(scratch, rows, model.embed_positions());
  be.residual_forward(x, x, scratch, T * s.hidden);
  be.round(x, T * s.hidden, model.compute_dtype());
}

void Model::set_adapter(const LoraModel* a) {
  // A device runner copied the adapter it was made with; a change now would be ignored there.
  if (runner_ && a != adapter_)
    fail("LoRA adapter", "cannot be changed while the model runs on " + runner_->describe() +
                             "; attach the adapter before moving the model to the device");
  if (a) {
    const int64_t blocks = a->model().spec().n_layers;
    check(blocks == spec_.n_layers, "LoRA adapter",
          "has " + std::to_string(blocks) + " blocks, the model has " + std::to_string(spec_.n_layers) + " layers");
    for (int64_t l = 0; l < spec_.n_layers; ++l) {
      for (int w = 0; w < kBlockLinearCount; ++w) {
        const LoraLayer* lo = a->find(l, static_cast<BlockLinear>(w));
        if (!lo) continue;
        const QuantLinear& q = block_linear(l, w);
        const std::string where = "LoRA adapter module '" + lo->module_path + "'";
        check(lo->in == q.in_features() && lo->out == q.out_features(), where,
              "shape (out " + std::to_string(lo->out) + ", in " + std::to_string(lo->in) +
                  ") but the model's Linear is (out " + std::to_string(q.out_features()) + ", in " +
                  std::to_string(q.in_features()) + ")");
        check(lo->r >= 1 && lo->A.size() == static_cast<size_t>(lo->r * lo->in) &&
                  lo->B.size() == static_cast<size_t>(lo->out * lo->r),
              where, "A/B do not hold (r, in) / (out, r) values");
      }
    }
    for (int w = 0; w < kModelLinearCount; ++w) {
      const LoraLayer* lo = a->find(static_cast<ModelLinear>(w));
      if (!lo) continue;
      check(!model_linear_name(spec_, static_cast<ModelLinear>(w)).empty(), "LoRA adapter module '" + lo->module_path + "'",
            "the model has no such Linear");
      const QuantLinear& q = model_linear(static_cast<ModelLinear>(w));
      check(lo->in == q.in_features() && lo->out == q.out_features() &&
                lo->A.size() == static_cast<size_t>(lo->r * lo->in) && lo->B.size() == static_cast<size_t>(lo->out * lo->r),
            "LoRA adapter module '" + lo->module_path + "'", "does not fit the model's Linear");
    }
  }
  adapter_ = a;
}

// ---- inference -------------------------------------------------------------------------

InferenceState::InferenceState(const ModelSpec& spec, int64_t capacity, Backend& backend, ComputeDType kv_dtype)
    : backend_(&backend),
      cache_(spec.kv_dims(), std::clamp<int64_t>(capacity, 1, spec.max_positions),
             /*allocate=*/false, backend, kv_dtype) {
  if (spec.hybrid()) cache_.set_state_layers(spec.state_layers(), spec.la_state_floats());
}

void InferenceState::ensure_scratch(const BlockProgram& p, int64_t T) {
  if (T <= scratch_T_) return;
  const ModelSpec& s = p.spec();
  Backend& be = *backend_;
  const int64_t half = s.rope_table_dims(false) / 2, half_local = s.rope_table_dims(true) / 2;
  x_.ensure(be, T * s.hidden);
  h_.ensure(be, T * s.hidden);
  if (s.projects_embeddings()) emb_.ensure(be, T * s.embed_width());
  const std::vector<int64_t>& widths = p.inference_slots().slot_width;
  slots_.resize(widths.size());
  for (size_t i = 0; i < widths.size(); ++i) slots_[i].ensure(be, T * widths[i]);
  cos_.ensure(be, T * half);
  sin_.ensure(be, T * half);
  if (s.rope_local) {
    cos_local_.ensure(be, T * half_local);
    sin_local_.ensure(be, T * half_local);
  }
  key_start_.ensure(be, T);
  if (s.ple()) {
    ple_.ensure(be, T * s.n_layers * s.ple_dim);
    ple_pre_.ensure(be, T * s.n_layers * s.ple_dim);
    ple_rstd_.ensure(be, T * s.n_layers);
  }
  pos_.resize(static_cast<size_t>(T));
  key_start_host_.resize(static_cast<size_t>(T));
  cos_host_.resize(static_cast<size_t>(T * std::max(half, half_local)));
  sin_host_.resize(static_cast<size_t>(T * std::max(half, half_local)));
  scratch_T_ = T;
}

void InferenceState::run_blocks(const Model& model, BlockRun& run, const int32_t* window_start) {
  const ModelSpec& s = model.spec();
  const BlockProgram& prog = model.block();
  run.buf.assign(prog.buffers().size(), nullptr);
  for (size_t b = 0; b < run.buf.size(); ++b) {
    const int slot = prog.inference_slots().slot_of[b];
    if (slot >= 0) run.buf[b] = slots_[static_cast<size_t>(slot)].data();
  }
  run.buf[static_cast<size_t>(prog.input())] = x_.data();
  run.buf[static_cast<size_t>(prog.output())] = x_.data();
  for (int64_t l = 0; l < s.n_layers; ++l) {
    run.layer = l;
    run.weights = &model.layers()[static_cast<size_t>(l)];
    const bool local = s.layer_uses_local_rope(l);
    run.cos = local ? cos_local_.data() : cos_.data();
    run.sin = local ? sin_local_.data() : sin_.data();
    run.key_start = s.layer_slides(l) ? window_start : nullptr;
    if (s.ple()) run.ple = ple_.data() + l * run.T * s.ple_dim;
    block_forward(run);
  }
}

// A hybrid model's recurrent states for the cache's positions when they hold others (the cache
// was cut back to a prefix, or copied short of its end): from the latest snapshot within the
// prefix, running the tokens after it again; without one, from the start.
void rebuild_states(const Model& model, InferenceState& st) {
  KVCache& c = st.cache_;
  const int64_t n = c.length();
  check(static_cast<int64_t>(c.tokens().size()) >= n, "forward", "the cache holds tokens it has no record of");
  const int64_t from = c.restore_states(n);
  const std::vector<int> rest(c.tokens().begin() + std::max<int64_t>(from, 0), c.tokens().begin() + n);
  if (from >= 0) {
    c.set_length(from);  // (the states' position: they hold exactly that prefix)
  } else {
    c.clear();
  }
  if (!rest.empty()) forward(model, st, rest, nullptr);
  c.set_replayed_tokens(static_cast<int64_t>(rest.size()));
}

void forward(const Model& model, InferenceState& st, std::span<const int> tokens, float* logits, bool all_logits) {
  const ModelSpec& s = model.spec();
  const ComputeDType dt = model.compute_dtype();
  const int64_t T = static_cast<int64_t>(tokens.size());
  if (T == 0) return;
  const int64_t pos0 = st.cache_.length();
  st.backend_->bind_thread();  // (before the cache may grow below)
  if (pos0 + T > s.max_positions)
    fail("forward", "sequence of " + std::to_string(pos0 + T) + " tokens exceeds the model's context of " +
                        std::to_string(s.max_positions) + " positions");
  if (pos0 + T > st.cache_.capacity())
    st.cache_.reserve(std::min(s.max_positions, std::max(pos0 + T, 2 * st.cache_.capacity())));
  if (const DeviceRunner* dev = model.runner()) {
    for (int tok : tokens)
      if (tok < 0 || tok >= s.vocab)
        fail("embedding", "token id " + std::to_string(tok) + " is outside the vocabulary of " +
                              std::to_string(s.vocab));
    if (!st.device_) st.device_ = dev->new_sequence(st.cache_.capacity());
    dev->forward(*st.device_, pos0, tokens, logits, all_logits);
    st.cache_.set_length(pos0 + T);
    return;
  }
  if (s.rope_scaling.type == RopeScaling::Type::LongRope) {
    const int64_t orig = s.rope_scaling.original_max_positions;
    check(static_cast<int64_t>(st.tokens_.size()) >= pos0, "forward", "the cache holds tokens it has no record of");
    st.tokens_.resize(static_cast<size_t>(pos0));  // (the cache may have been cut back: prompt reuse)
    if (pos0 > 0 && pos0 <= orig && pos0 + T > orig) {
      // The cached keys were rotated with the short factors: run everything again.
      std::vector<int> all(st.tokens_);
      all.insert(all.end(), tokens.begin(), tokens.end());
      st.cache_.clear();
      st.tokens_.clear();
      if (!all_logits || !logits) return forward(model, st, all, logits, all_logits);
      std::vector<float> full(static_cast<size_t>((pos0 + T) * s.vocab));
      forward(model, st, all, full.data(), true);
      std::copy(full.begin() + pos0 * s.vocab, full.end(), logits);
      return;
    }
    st.tokens_.insert(st.tokens_.end(), tokens.begin(), tokens.end());
  }
  Backend& be = *st.backend_;
  st.cache_.allocate();
  if (s.hybrid()) {
    KVCache& c = st.cache_;
    if (pos0 == 0) {
      c.zero_states();
    } else if (c.state_position() != pos0) {
      rebuild_states(model, st);
    }
  }
  const BlockProgram& prog = model.block();
  st.ensure_scratch(prog, T);
  // The block's declared scratch, for keys up to the cache's capacity (so that decoding one
  // token after another does not grow it every step) and the adapter's Linears.
  BlockScratchQuery sq;
  sq.tokens = T;
  sq.keys = st.cache_.capacity();
  add_lora_to_scratch_query(sq, model.adapter());
  const BlockScratchFloats sf = block_scratch_floats(prog, sq);
  st.scratch_.ensure(be, sf.total());
  const BlockScratch scratch = BlockScratch::carve(st.scratch_.data(), sf);

  const int64_t C = s.hidden, HS = s.rope_table_dims(false), half = HS / 2;
  const int64_t HS_local = s.rope_table_dims(true), half_local = HS_local / 2;
  float* x = st.x_.data();  // (T, C) residual stream
  float* h = st.h_.data();  // (T, C) final norm output

  for (int64_t t = 0; t < T; ++t) st.pos_[t] = static_cast<int32_t>(pos0 + t);
  embed_forward(be, x, st.emb_.data(), h, tokens, st.pos_.data(), model, model.adapter(), nullptr, false, nullptr,
                scratch.lora);
  if (s.ple())
    ple_inputs_forward(be, st.ple_.data(), st.ple_pre_.data(), st.ple_rstd_.data(), tokens, x, model, model.adapter(),
                       nullptr, false, nullptr, scratch.lora);
  // Rotary tables (and windows) are computed on the host and copied to the backend.
  rope_tables(st.cos_host_.data(), st.sin_host_.data(), st.pos_.data(), T, HS, s.rope_theta, s.rope_scaling);
  be.upload(st.cos_.data(), st.cos_host_.data(), T * half);
  be.upload(st.sin_.data(), st.sin_host_.data(), T * half);
  if (s.rope_local) {
    be.synchronize();  // (the staging vectors are reused)
    rope_tables(st.cos_host_.data(), st.sin_host_.data(), st.pos_.data(), T, HS_local, s.rope_theta_local,
                s.rope_scaling_local);
    be.upload(st.cos_local_.data(), st.cos_host_.data(), T * half_local);
    be.upload(st.sin_local_.data(), st.sin_host_.data(), T * half_local);
  }
  // A sliding window narrows each query's keys once the sequence is longer than it.
  // (on the layers that slide: all of them for mistral, every other one for gemma2)
  const int32_t* window_start = nullptr;
  if (s.sliding_window > 0 && pos0 + T > s.sliding_window) {
    for (int64_t t = 0; t < T; ++t) st.key_start_host_[t] = static_cast<int32_t>(first_visible_key(s, pos0 + t));
    be.upload(st.key_start_.data(), st.key_start_host_.data(), T);
    window_start = st.key_start_.data();
  }

  // The block's buffers: the residual stream in and out (in place), the rest in slots.
  BlockRun run;
  run.backend = &be;
  run.program = &prog;
  run.dtype = dt;
  run.T = T;
  run.cache = &st.cache_;
  run.pos0 = pos0;
  run.adapter = model.adapter();
  run.scratch = scratch;
  std::vector<float> q_scale;  // (Ministral 3's per-position query scale)
  if (s.q_pos_scale_beta != 0.0f) {
    for (int64_t t = 0; t < T; ++t) q_scale.push_back(s.q_pos_scale(st.pos_[t]));
    run.q_scale = q_scale.data();
  }
  st.run_blocks(model, run, window_start);
  st.cache_.set_length(pos0 + T);
  if (s.hybrid()) {
    st.cache_.set_state_position(pos0 + T);
    st.cache_.tokens().insert(st.cache_.tokens().end(), tokens.begin(), tokens.end());
    if (T > 1) st.cache_.snapshot_states();  // (after a prompt: where a later turn may cut back to)
  }

  if (!logits) {
    be.synchronize();
    return;
  }
  const int64_t first = all_logits ? 0 : T - 1;
  const int64_t n = T - first;
  const float* e = head_input_forward(be, st.emb_.data(), h, nullptr, x + first * C, n, model, model.adapter(), nullptr,
                                      false, nullptr, scratch.lora);
  // The logits go straight to the caller's memory when the backend's is the host's.
  float* lg = logits;
  if (!be.host_addressable()) {
    st.logits_.ensure(be, n * s.vocab);
    lg = st.logits_.data();
  }
  be.dense_forward(lg, e, n, model.lm_head());
  if (s.head_bias) be.add_bias(lg, model.lm_head_bias().data(), n, s.vocab);
  be.round(lg, n * s.vocab, dt);
  if (s.logit_factor() != 1.0f) logit_scale(be, lg, n * s.vocab, s.logit_factor(), dt);
  if (s.final_softcap > 0.0f) be.softcap_forward(lg, n * s.vocab, s.final_softcap, dt);
  if (lg != logits) be.download(logits, lg, n * s.vocab);
}

// ---- batched decoding ----------------------------------------------------------------

static_assert(kMaxBatchRows == kernels::kMaxGemvTokens, "a batched pass is what the few-token kernels take");

bool can_forward_batch(const Model& model) {
  return !model.runner() && model.backend().host_addressable() &&
         model.spec().rope_scaling.type != RopeScaling::Type::LongRope;
}

void forward_batch(const Model& model, InferenceState& work, std::span<InferenceState* const> seqs,
                   std::span<const int> tokens, float* logits) {
  const ModelSpec& s = model.spec();
  const ComputeDType dt = model.compute_dtype();
  const int64_t N = static_cast<int64_t>(seqs.size());
  check(static_cast<int64_t>(tokens.size()) == N, "batched decoding", "needs one token per sequence");
  if (N == 0) return;
  check(can_forward_batch(model), "batched decoding",
        "runs on the host backend without a device runner, and not for LongRope models (decode one at a time)");
  Backend& be = *work.backend_;
  be.bind_thread();
  // Every check before any cache changes.
  for (int64_t i = 0; i < N; ++i) {
    const InferenceState& st = *seqs[static_cast<size_t>(i)];
    check(&st.backend() == &be && &st != &work, "batched decoding", "every sequence must be on the work state's backend");
    for (int64_t j = 0; j < i; ++j)
      check(seqs[static_cast<size_t>(j)] != &st, "batched decoding", "a sequence appears twice in one batch");
    if (st.position() + 1 > s.max_positions)
      fail("forward", "sequence of " + std::to_string(st.position() + 1) + " tokens exceeds the model's context of " +
                          std::to_string(s.max_positions) + " positions");
    const int tok = tokens[static_cast<size_t>(i)];
    if (tok < 0 || tok >= s.vocab)
      fail("embedding", "token id " + std::to_string(tok) + " is outside the vocabulary of " + std::to_string(s.vocab));
  }
  // At most kMaxBatchRows rows a pass: the few-token kernels, whose values are the one-token
  // kernels' bit for bit, take up to that many tokens (model/linear_kernels.h kMaxGemvTokens;
  // beyond it the products would switch to other kernels, and a sequence's tokens would depend
  // on how many others share its step).
  if (N > kMaxBatchRows) {
    for (int64_t i = 0; i < N; i += kMaxBatchRows) {
      const int64_t n = std::min(kMaxBatchRows, N - i);
      forward_batch(model, work, seqs.subspan(static_cast<size_t>(i), static_cast<size_t>(n)),
                    tokens.subspan(static_cast<size_t>(i), static_cast<size_t>(n)), logits + i * s.vocab);
    }
    return;
  }
  std::vector<KVCache*> caches(static_cast<size_t>(N));
  int64_t max_capacity = 1;
  for (int64_t i = 0; i < N; ++i) {
    InferenceState& st = *seqs[static_cast<size_t>(i)];
    if (s.hybrid() && st.cache_.length() > 0 && st.cache_.state_position() != st.cache_.length())
      rebuild_states(model, st);  // (states that cannot be rewound)
    const int64_t pos = st.cache_.length();
    if (pos + 1 > st.cache_.capacity())
      st.cache_.reserve(std::min(s.max_positions, std::max(pos + 1, 2 * st.cache_.capacity())));
    st.cache_.allocate();
    if (s.hybrid() && pos == 0) st.cache_.zero_states();
    caches[static_cast<size_t>(i)] = &st.cache_;
    max_capacity = std::max(max_capacity, st.cache_.capacity());
  }
  const BlockProgram& prog = model.block();
  work.ensure_scratch(prog, N);
  BlockScratchQuery sq;
  sq.tokens = N;
  sq.keys = max_capacity;
  add_lora_to_scratch_query(sq, model.adapter());
  const BlockScratchFloats sf = block_scratch_floats(prog, sq);
  work.scratch_.ensure(be, sf.total());
  const BlockScratch scratch = BlockScratch::carve(work.scratch_.data(), sf);

  // (the tables' rows are rope_dims() / 2 wide: partial rotary rotates fewer dims than head_dim)
  float* x = work.x_.data();
  float* h = work.h_.data();
  for (int64_t i = 0; i < N; ++i) work.pos_[static_cast<size_t>(i)] = static_cast<int32_t>(caches[static_cast<size_t>(i)]->length());
  embed_forward(be, x, work.emb_.data(), h, tokens, work.pos_.data(), model, model.adapter(), nullptr, false, nullptr,
                scratch.lora);
  if (s.ple())
    ple_inputs_forward(be, work.ple_.data(), work.ple_pre_.data(), work.ple_rstd_.data(), tokens, x, model,
                       model.adapter(), nullptr, false, nullptr, scratch.lora);
  // Each row's rotary table on its own, as forward() computes it for that one token (dynamic
  // NTK scaling depends on the forward's longest sequence).
  auto tables = [&](float* cos_dev, float* sin_dev, float theta, const RopeScaling& scaling, bool local) {
    const int64_t HS = s.rope_table_dims(local), half = HS / 2;
    for (int64_t i = 0; i < N; ++i)
      rope_tables(work.cos_host_.data() + i * half, work.sin_host_.data() + i * half, work.pos_.data() + i, 1, HS,
                  theta, scaling);
    be.upload(cos_dev, work.cos_host_.data(), N * half);
    be.upload(sin_dev, work.sin_host_.data(), N * half);
  };
  tables(work.cos_.data(), work.sin_.data(), s.rope_theta, s.rope_scaling, false);
  if (s.rope_local) {
    be.synchronize();  // (the staging vectors are reused)
    tables(work.cos_local_.data(), work.sin_local_.data(), s.rope_theta_local, s.rope_scaling_local, true);
  }
  const int32_t* window_start = nullptr;
  if (s.sliding_window > 0) {
    for (int64_t i = 0; i < N; ++i)
      work.key_start_host_[static_cast<size_t>(i)] = static_cast<int32_t>(first_visible_key(s, work.pos_[static_cast<size_t>(i)]));
    be.upload(work.key_start_.data(), work.key_start_host_.data(), N);
    window_start = work.key_start_.data();
  }

  BlockRun run;
  run.backend = &be;
  run.program = &prog;
  run.dtype = dt;
  run.T = N;
  run.caches = caches;
  run.adapter = model.adapter();
  run.scratch = scratch;
  std::vector<float> q_scale;
  if (s.q_pos_scale_beta != 0.0f) {
    for (int64_t i = 0; i < N; ++i) q_scale.push_back(s.q_pos_scale(work.pos_[static_cast<size_t>(i)]));
    run.q_scale = q_scale.data();
  }
  work.run_blocks(model, run, window_start);
  for (int64_t i = 0; i < N; ++i) {
    KVCache* c = caches[static_cast<size_t>(i)];
    c->set_length(c->length() + 1);
    if (s.hybrid()) {
      c->set_state_position(c->length());
      c->tokens().push_back(tokens[static_cast<size_t>(i)]);
    }
  }

  const float* e = head_input_forward(be, work.emb_.data(), h, nullptr, x, N, model, model.adapter(), nullptr, false,
                                      nullptr, scratch.lora);
  be.dense_forward(logits, e, N, model.lm_head());
  if (s.head_bias) be.add_bias(logits, model.lm_head_bias().data(), N, s.vocab);
  be.round(logits, N * s.vocab, dt);
  if (s.logit_factor() != 1.0f) logit_scale(be, logits, N * s.vocab, s.logit_factor(), dt);
  if (s.final_softcap > 0.0f) be.softcap_forward(logits, N * s.vocab, s.final_softcap, dt);
  be.synchronize();
}

}  // namespace qlora
