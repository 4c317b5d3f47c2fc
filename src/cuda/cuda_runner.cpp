#include "cuda/cuda_runner.h"
#include "cuda/cuda_runner_impl.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "base/error.h"
#include "cuda/blas.h"
#include "cuda/cuda_error.h"
#include "cuda/device_buffer.h"
#include "cuda/device_weights.h"
#include "cuda/kernels.h"
#include "lora/lora.h"
#include "lora/lora_model.h"
#include "model/model.h"
#include "model/ops.h"

namespace qlora {

bool cuda_backend_built() { return true; }

void check_device_available(const DeviceChoice& d) {
  if (d.cuda) cuda::describe_device(d.index);  // throws when it does not exist
}

bool device_free_memory(const DeviceChoice& d, uint64_t* free_bytes, uint64_t* total_bytes) {
  if (!d.cuda) return false;
  cuda::describe_device(d.index);
  QLORA_CUDA_CHECK(cudaSetDevice(d.index));
  size_t f = 0, t = 0;
  cuda::memory_info(&f, &t);
  *free_bytes = f;
  *total_bytes = t;
  return true;
}

std::shared_ptr<const DeviceRunner> make_cuda_runner(const Model& model, int index) {
  return cuda::make_runner(model, index);
}

namespace cuda {

DeviceLinear upload_linear(const QuantLinear& q, const LoraLayer* lo, const std::string& where) {
  DeviceLinear d;
  d.out = q.out_features();
  d.in = q.in_features();
  if (q.is_int8())
    fail(where, "LLM.int8 weights do not run on CUDA yet; load the model with --quant nf4, fp4 or none");
  if (const Quantized4bit* w = q.q4()) {
    d.q4 = true;
    d.w4 = upload_q4(*w, d.out, d.in, q.dtype());
  } else {
    d.dense = upload_dense(*q.dense());
  }
  if (!q.bias().empty()) d.bias = DeviceBuffer<float>(q.bias());
  if (lo) {
    d.lora = std::make_unique<DeviceLora>();
    d.lora->r = lo->r;
    d.lora->scaling = lo->scaling;
    d.lora->A = DeviceBuffer<float>(lo->A);
    d.lora->B = DeviceBuffer<float>(lo->B);
  }
  return d;
}


CudaRunner::CudaRunner(const Model& model, int device) : spec_(model.spec()), dt_(model.compute_dtype()), device_(device) {
  try {
    init(model);
  } catch (...) {
    release_handles();  // the destructor does not run for a constructor that throws
    throw;
  }
}

void CudaRunner::init(const Model& model) {
  describe_ = describe_device(device_);  // validates the index
  QLORA_CUDA_CHECK(cudaSetDevice(device_));
  QLORA_CUDA_CHECK(cudaFree(nullptr));  // creates the context now, so it can be measured
  QLORA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  blas_ = std::make_unique<Blas>();
  blas_->set_stream(stream_);
  context_bytes_ = device_context_bytes();
  const LoraModel* ad = model.adapter();
  embed_ = upload_dense(model.embed_tokens());
  tied_ = spec_.tied_embeddings;
  if (!tied_) lm_head_ = upload_dense(model.lm_head());
  final_norm_ = DeviceBuffer<float>(model.final_norm());
  layers_.resize(static_cast<size_t>(spec_.n_layers));
  for (int64_t l = 0; l < spec_.n_layers; ++l) {
    const LayerWeights& L = model.layers()[static_cast<size_t>(l)];
    DeviceLayer& D = layers_[static_cast<size_t>(l)];
    D.input_norm = DeviceBuffer<float>(L.input_norm);
    D.post_norm = DeviceBuffer<float>(L.post_norm);
    for (int w = 0; w < kAttentionLinears; ++w) {
      const LoraLayer* lo = ad ? ad->find(l, static_cast<BlockLinear>(w)) : nullptr;
      D.lin[w] = upload_linear(model.block_linear(l, w), lo, "--device cuda: layer " + std::to_string(l));
      if (D.lin[w].q4) max_linear_numel_ = std::max(max_linear_numel_, D.lin[w].out * D.lin[w].in);
      if (lo) max_lora_r_ = std::max<int64_t>(max_lora_r_, lo->r);
    }
  }
  // Decoding's staging buffers.
  QLORA_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&h_step_), 2 * sizeof(int32_t)));
  QLORA_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&h_rope_), static_cast<size_t>(spec_.head_dim) * sizeof(float)));
  QLORA_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&h_logits_), static_cast<size_t>(spec_.vocab) * sizeof(float)));
  d_step_.resize(2);
  const char* g = std::getenv("QLORA_CUDA_GRAPHS");
  use_graphs_ = !(g && std::string(g) == "0");
  // The uploads ran on the legacy default stream, which a non-blocking stream does not wait
  // for: finish them before any kernel of ours reads the weights.
  QLORA_CUDA_CHECK(cudaDeviceSynchronize());
}

void CudaRunner::release_handles() {
  if (graph_) cudaGraphExecDestroy(graph_);
  if (h_step_) cudaFreeHost(h_step_);
  if (h_rope_) cudaFreeHost(h_rope_);
  if (h_logits_) cudaFreeHost(h_logits_);
  if (stream_) cudaStreamDestroy(stream_);
  graph_ = nullptr;
  h_step_ = nullptr;
  h_rope_ = h_logits_ = nullptr;
  stream_ = nullptr;
}

CudaRunner::~CudaRunner() {
  train_.reset();
  release_handles();
}

DeviceRunner::Memory CudaRunner::device_memory() const {
  Memory m;
  m.context = context_bytes_;
  m.buffers_peak = device_bytes_peak();
  return m;
}

size_t CudaRunner::device_bytes() const {
  size_t b = embed_.bytes() + lm_head_.bytes() + final_norm_.bytes();
  for (const DeviceLayer& D : layers_) {
    b += D.input_norm.bytes() + D.post_norm.bytes();
    for (const DeviceLinear& L : D.lin) b += L.bytes();
  }
  return b + wscratch_f32_.bytes() + wscratch_h16_.bytes();
}

std::unique_ptr<DeviceSequence> CudaRunner::new_sequence(int64_t capacity) const {
  std::lock_guard<std::mutex> lock(mu_);
  QLORA_CUDA_CHECK(cudaSetDevice(device_));
  auto seq = std::make_unique<CudaSequence>();
  grow(*seq, std::max<int64_t>(1, capacity));
  return seq;
}

void CudaRunner::grow(CudaSequence& seq, int64_t capacity) const {
  if (capacity <= seq.capacity) return;
  const int64_t L = spec_.n_layers, KVD = spec_.kv_dim();
  DeviceBuffer<float> k(static_cast<size_t>(L * capacity * KVD)), v(static_cast<size_t>(L * capacity * KVD));
  if (seq.capacity > 0) {
    // Row pitch changes with the capacity: copy each layer's block.
    const size_t old_pitch = static_cast<size_t>(seq.capacity * KVD) * sizeof(float);
    const size_t new_pitch = static_cast<size_t>(capacity * KVD) * sizeof(float);
    QLORA_CUDA_CHECK(cudaMemcpy2DAsync(k.data(), new_pitch, seq.k.data(), old_pitch, old_pitch,
                                       static_cast<size_t>(L), cudaMemcpyDeviceToDevice, stream_));
    QLORA_CUDA_CHECK(cudaMemcpy2DAsync(v.data(), new_pitch, seq.v.data(), old_pitch, old_pitch,
                                       static_cast<size_t>(L), cudaMemcpyDeviceToDevice, stream_));
    QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  seq.k = std::move(k);
  seq.v = std::move(v);
  seq.capacity = capacity;
}

void CudaRunner::ensure_scratch(int64_t T) const {
  if (T <= scratch_T_) return;
  scratch_T_ = 0;  // until every buffer below is allocated (an out-of-memory Error may stop it)
  const ModelSpec& s = spec_;
  const auto n = [T](int64_t per) { return static_cast<size_t>(T * per); };
  x_.resize(n(s.hidden));
  h_.resize(n(s.hidden));
  q_.resize(n(s.q_dim()));
  k_.resize(n(s.kv_dim()));
  v_.resize(n(s.kv_dim()));
  att_.resize(n(s.q_dim()));
  o_.resize(n(s.hidden));
  gate_.resize(n(s.ffn));
  up_.resize(n(s.ffn));
  cos_.resize(n(s.head_dim / 2));
  sin_.resize(n(s.head_dim / 2));
  tokens_.resize(n(1));
  if (max_lora_r_ > 0) lora_tmp_.resize(n(max_lora_r_));
  if (dt_ != ComputeDType::F32) x16_.resize(n(std::max({s.hidden, s.ffn, s.q_dim()})));
  scratch_T_ = T;
}

void CudaRunner::dense_matmul(float* y, const DeviceDense& W, const float* x, int64_t T) const {
  if (T <= 8) {
    gemv_dense(W.data(), W.type, W.rows, W.cols, x, static_cast<int>(T), y, W.rows, stream_);
  } else if (W.type == DenseType::F32) {
    blas_->sgemm_nt(T, W.rows, W.cols, 1.0f, x, W.cols, W.f32.data(), W.cols, 0.0f, y, W.rows);
  } else {
    x16_.reserve(static_cast<size_t>(T * W.cols));
    f32_to_half(x16_.data(), x, T * W.cols, W.type, stream_);
    blas_->gemm16_nt(W.type, T, W.rows, W.cols, 1.0f, x16_.data(), W.cols, W.h16.data(), W.cols, 0.0f, y, W.rows);
  }
}

void CudaRunner::linear(float* y, const DeviceLinear& L, const float* x, int64_t T) const {
  base_linear(y, L, x, T);
  if (L.lora) {
    // h (T, r) = x Aᵀ;  y += (h Bᵀ) · scaling, as lora_forward (the scaling on the product).
    const DeviceLora& lo = *L.lora;
    lora_tmp_.reserve(static_cast<size_t>(T * lo.r));
    blas_->sgemm_nt(T, lo.r, L.in, 1.0f, x, L.in, lo.A.data(), L.in, 0.0f, lora_tmp_.data(), lo.r);
    // cuBLAS's alpha would scale inside the product; the CPU scales the finished product.
    lora_out_.reserve(static_cast<size_t>(T * L.out));
    blas_->sgemm_nt(T, L.out, lo.r, 1.0f, lora_tmp_.data(), lo.r, lo.B.data(), lo.r, 0.0f, lora_out_.data(), L.out);
    axpy(y, lo.scaling, lora_out_.data(), T * L.out, stream_);
    round_activations(y, T * L.out, dt_, stream_);  // as the CPU: the sum in the compute dtype
  }
}

void CudaRunner::base_linear(float* y, const DeviceLinear& L, const float* x, int64_t T) const {
  if (!L.q4) {
    dense_matmul(y, L.dense, x, T);
  } else if (T <= 8) {
    gemv_q4(L.w4.view, x, static_cast<int>(T), y, L.out, stream_);
  } else if (dt_ == ComputeDType::F32) {
    wscratch_f32_.reserve(static_cast<size_t>(max_linear_numel_));
    dequantize_q4(L.w4.view, DenseType::F32, wscratch_f32_.data(), stream_);
    blas_->sgemm_nt(T, L.out, L.in, 1.0f, x, L.in, wscratch_f32_.data(), L.in, 0.0f, y, L.out);
  } else {
    // x holds values already representable in the compute dtype (the CPU rounds them the
    // same way), so converting it is exact; the dequantized weight is rounded once, as the
    // CPU's dequantized panels are.
    const DenseType t = dense_type_of(dt_);
    wscratch_h16_.reserve(static_cast<size_t>(max_linear_numel_));
    dequantize_q4(L.w4.view, t, wscratch_h16_.data(), stream_);
    x16_.reserve(static_cast<size_t>(T * L.in));
    f32_to_half(x16_.data(), x, T * L.in, t, stream_);
    blas_->gemm16_nt(t, T, L.out, L.in, 1.0f, x16_.data(), L.in, wscratch_h16_.data(), L.in, 0.0f, y, L.out);
  }
  if (L.bias.size()) add_bias(y, L.bias.data(), T, L.out, stream_);
  round_activations(y, T * L.out, dt_, stream_);
}

void CudaRunner::forward(DeviceSequence& seq_base, int64_t pos0, std::span<const int> tokens, float* logits,
                         bool all_logits) const {
  std::lock_guard<std::mutex> lock(mu_);
  QLORA_CUDA_CHECK(cudaSetDevice(device_));
  CudaSequence& seq = static_cast<CudaSequence&>(seq_base);
  const ModelSpec& s = spec_;
  const int64_t T = static_cast<int64_t>(tokens.size());
  if (T == 0) return;
  // The CUDA attention kernels have no sliding window yet: within it they are exact.
  if (s.sliding_window > 0 && pos0 + T > s.sliding_window)
    fail("--device cuda", "this " + s.family + " model attends through a sliding window of " +
                              std::to_string(s.sliding_window) + " positions, which the CUDA backend does not " +
                              "implement yet; a sequence of " + std::to_string(pos0 + T) +
                              " tokens needs it (use --device cpu, or shorter sequences)");
  if (pos0 + T > seq.capacity) grow(seq, std::min(s.max_positions, std::max(pos0 + T, 2 * seq.capacity)));
  ensure_scratch(T);
  if (T == 1 && logits && !all_logits) {
    decode(seq, pos0, tokens[0], logits);
    return;
  }
  const int64_t C = s.hidden, HS = s.head_dim, NH = s.n_heads, NKV = s.n_kv_heads, F = s.ffn;
  const int64_t QD = s.q_dim(), KVD = s.kv_dim();

  // Token ids and the rotary tables (computed on the host exactly as the CPU does).
  std::vector<int32_t> ids(tokens.begin(), tokens.end()), pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(pos0 + t);
  std::vector<float> cs(static_cast<size_t>(T * HS / 2)), sn(cs.size());
  rope_tables(cs.data(), sn.data(), pos.data(), T, HS, s.rope_theta, s.rope_scaling);
  QLORA_CUDA_CHECK(cudaMemcpyAsync(tokens_.data(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice, stream_));
  QLORA_CUDA_CHECK(cudaMemcpyAsync(cos_.data(), cs.data(), cs.size() * 4, cudaMemcpyHostToDevice, stream_));
  QLORA_CUDA_CHECK(cudaMemcpyAsync(sin_.data(), sn.data(), sn.size() * 4, cudaMemcpyHostToDevice, stream_));

  float *x = x_.data(), *h = h_.data(), *q = q_.data(), *k = k_.data(), *v = v_.data(), *att = att_.data(),
        *o = o_.data(), *gate = gate_.data(), *up = up_.data();
  embedding_forward(x, tokens_.data(), T, embed_.data(), embed_.type, C, stream_);
  for (int64_t l = 0; l < s.n_layers; ++l) {
    const DeviceLayer& L = layers_[static_cast<size_t>(l)];
    rmsnorm_forward(h, nullptr, x, L.input_norm.data(), T, C, s.norm_eps, dt_, stream_);
    linear(q, L.lin[0], h, T);
    linear(k, L.lin[1], h, T);
    linear(v, L.lin[2], h, T);
    rope_forward(q, cos_.data(), sin_.data(), T, NH, HS, stream_);
    rope_forward(k, cos_.data(), sin_.data(), T, NKV, HS, stream_);
    round_activations(q, T * QD, dt_, stream_);
    round_activations(k, T * KVD, dt_, stream_);
    float* kc = seq.k.data() + l * seq.capacity * KVD;
    float* vc = seq.v.data() + l * seq.capacity * KVD;
    QLORA_CUDA_CHECK(cudaMemcpyAsync(kc + pos0 * KVD, k, static_cast<size_t>(T * KVD) * 4, cudaMemcpyDeviceToDevice, stream_));
    QLORA_CUDA_CHECK(cudaMemcpyAsync(vc + pos0 * KVD, v, static_cast<size_t>(T * KVD) * 4, cudaMemcpyDeviceToDevice, stream_));
    attention_forward(att, q, kc, vc, T, pos0, NH, NKV, HS, nullptr, stream_);
    round_activations(att, T * QD, dt_, stream_);
    linear(o, L.lin[3], att, T);
    residual_forward(x, x, o, T * C, stream_);
    round_activations(x, T * C, dt_, stream_);
    rmsnorm_forward(h, nullptr, x, L.post_norm.data(), T, C, s.norm_eps, dt_, stream_);
    linear(gate, L.lin[4], h, T);
    linear(up, L.lin[5], h, T);
    swiglu_forward(gate, gate, up, T * F, stream_);
    round_activations(gate, T * F, dt_, stream_);
    linear(o, L.lin[6], gate, T);
    residual_forward(x, x, o, T * C, stream_);
    round_activations(x, T * C, dt_, stream_);
  }
  if (logits) {
    const int64_t first = all_logits ? 0 : T - 1;
    const int64_t n = T - first;
    rmsnorm_forward(h, nullptr, x + first * C, final_norm_.data(), n, C, s.norm_eps, dt_, stream_);
    logits_.reserve(static_cast<size_t>(n * s.vocab));
    dense_matmul(logits_.data(), tied_ ? embed_ : lm_head_, h, n);
    round_activations(logits_.data(), n * s.vocab, dt_, stream_);
    QLORA_CUDA_CHECK(cudaMemcpyAsync(logits, logits_.data(), static_cast<size_t>(n * s.vocab) * 4,
                                     cudaMemcpyDeviceToHost, stream_));
  }
  QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}


void CudaRunner::decode_ops(CudaSequence& seq) const {
  const ModelSpec& s = spec_;
  const int64_t C = s.hidden, HS = s.head_dim, NH = s.n_heads, NKV = s.n_kv_heads, F = s.ffn;
  const int64_t QD = s.q_dim(), KVD = s.kv_dim(), half = HS / 2;
  const int32_t* token = d_step_.data();
  const int32_t* pos = d_step_.data() + 1;
  QLORA_CUDA_CHECK(cudaMemcpyAsync(d_step_.data(), h_step_, 2 * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  QLORA_CUDA_CHECK(cudaMemcpyAsync(cos_.data(), h_rope_, static_cast<size_t>(half) * 4, cudaMemcpyHostToDevice, stream_));
  QLORA_CUDA_CHECK(
      cudaMemcpyAsync(sin_.data(), h_rope_ + half, static_cast<size_t>(half) * 4, cudaMemcpyHostToDevice, stream_));
  float *x = x_.data(), *h = h_.data(), *q = q_.data(), *k = k_.data(), *v = v_.data(), *att = att_.data(),
        *o = o_.data(), *gate = gate_.data(), *up = up_.data();
  embedding_forward(x, token, 1, embed_.data(), embed_.type, C, stream_);
  for (int64_t l = 0; l < s.n_layers; ++l) {
    const DeviceLayer& L = layers_[static_cast<size_t>(l)];
    rmsnorm_forward(h, nullptr, x, L.input_norm.data(), 1, C, s.norm_eps, dt_, stream_);
    linear(q, L.lin[0], h, 1);
    linear(k, L.lin[1], h, 1);
    linear(v, L.lin[2], h, 1);
    rope_forward(q, cos_.data(), sin_.data(), 1, NH, HS, stream_);
    rope_forward(k, cos_.data(), sin_.data(), 1, NKV, HS, stream_);
    round_activations(q, QD, dt_, stream_);
    round_activations(k, KVD, dt_, stream_);
    float* kc = seq.k.data() + l * seq.capacity * KVD;
    float* vc = seq.v.data() + l * seq.capacity * KVD;
    kv_store(kc, vc, k, v, pos, KVD, stream_);
    attention_decode(att, q, kc, vc, pos, NH, NKV, HS, stream_);
    round_activations(att, QD, dt_, stream_);
    linear(o, L.lin[3], att, 1);
    residual_forward(x, x, o, C, stream_);
    round_activations(x, C, dt_, stream_);
    rmsnorm_forward(h, nullptr, x, L.post_norm.data(), 1, C, s.norm_eps, dt_, stream_);
    linear(gate, L.lin[4], h, 1);
    linear(up, L.lin[5], h, 1);
    swiglu_forward(gate, gate, up, F, stream_);
    round_activations(gate, F, dt_, stream_);
    linear(o, L.lin[6], gate, 1);
    residual_forward(x, x, o, C, stream_);
    round_activations(x, C, dt_, stream_);
  }
  rmsnorm_forward(h, nullptr, x, final_norm_.data(), 1, C, s.norm_eps, dt_, stream_);
  dense_matmul(logits_.data(), tied_ ? embed_ : lm_head_, h, 1);
  round_activations(logits_.data(), s.vocab, dt_, stream_);
  QLORA_CUDA_CHECK(
      cudaMemcpyAsync(h_logits_, logits_.data(), static_cast<size_t>(s.vocab) * 4, cudaMemcpyDeviceToHost, stream_));
}

void CudaRunner::decode(CudaSequence& seq, int64_t pos, int token, float* logits) const {
  const ModelSpec& s = spec_;
  const int32_t p32 = static_cast<int32_t>(pos);
  h_step_[0] = token;
  h_step_[1] = p32;
  rope_tables(h_rope_, h_rope_ + s.head_dim / 2, &p32, 1, s.head_dim, s.rope_theta, s.rope_scaling);
  logits_.reserve(static_cast<size_t>(s.vocab));
  if (max_lora_r_ > 0) lora_tmp_.reserve(static_cast<size_t>(max_lora_r_));
  auto current_key = [&] {
    return SeqKey{{seq.k.data(), seq.v.data(), x_.data(), h_.data(), q_.data(), k_.data(), v_.data(), att_.data(),
                   o_.data(), gate_.data(), up_.data(), cos_.data(), sin_.data(), logits_.data(), lora_tmp_.data(),
                   lora_out_.data(), x16_.data()},
                  seq.capacity};
  };
  const SeqKey key = current_key();
  if (use_graphs_ && graph_ && graph_key_ == key) {
    QLORA_CUDA_CHECK(cudaGraphLaunch(graph_, stream_));
  } else if (use_graphs_ && warm_key_ == key) {
    // Capture the step (every buffer exists now: it ran eagerly once), then replay it.
    cudaGraph_t g = nullptr;
    QLORA_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      decode_ops(seq);
    } catch (...) {
      cudaStreamEndCapture(stream_, &g);
      if (g) cudaGraphDestroy(g);
      use_graphs_ = false;  // something in the step cannot be captured: stay eager
      decode_ops(seq);
      QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
      std::copy_n(h_logits_, s.vocab, logits);
      return;
    }
    const cudaError_t ended = cudaStreamEndCapture(stream_, &g);
    if (graph_) cudaGraphExecDestroy(graph_);
    graph_ = nullptr;
    const cudaError_t e = ended == cudaSuccess ? cudaGraphInstantiate(&graph_, g, 0) : ended;
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess) {
      // This driver cannot capture or instantiate the step: stay eager from now on.
      cudaGetLastError();
      graph_ = nullptr;
      use_graphs_ = false;
      decode_ops(seq);
    } else {
      graph_key_ = key;
      QLORA_CUDA_CHECK(cudaGraphLaunch(graph_, stream_));
    }
  } else {
    decode_ops(seq);
    warm_key_ = current_key();  // after the step: it may have allocated a buffer it uses
  }
  QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::copy_n(h_logits_, s.vocab, logits);
}

std::shared_ptr<const DeviceRunner> make_runner(const Model& model, int device) {
  if (const std::string why = cuda_runner_unsupported(model.spec()); !why.empty())
    fail("--device cuda", "the llama CUDA runner does not run " + why +
                              " (the CUDA backend does: QLORA_CUDA_ENGINE=backend or auto)");
  return std::make_shared<CudaRunner>(model, device);
}

}  // namespace cuda
}  // namespace qlora
