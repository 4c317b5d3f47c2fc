#include "model/device_runner.h"

#include <charconv>

#include "base/error.h"
#include "model/backend.h"
#include "model/model_spec.h"

namespace qlora {

float DeviceRunner::forward_backward(LoraModel&, std::span<const int>, std::span<const int>, const TrainStepOptions&,
                                     LoraRng*, std::span<const int32_t>) const {
  fail("--device", "training does not run on " + describe() + " yet");
}

float DeviceRunner::forward_loss(const LoraModel&, std::span<const int>, std::span<const int>,
                                 std::span<const int32_t>) const {
  fail("--device", "evaluation does not run on " + describe() + " yet");
}

DeviceChoice parse_device(std::string_view s) {
  DeviceChoice d;
  if (s == "cpu") return d;
  if (s == "cuda") {
    d.cuda = true;
    return d;
  }
  if (s.substr(0, 5) == "cuda:" && s.size() > 5) {
    const char* b = s.data() + 5;
    const char* e = s.data() + s.size();
    int idx = -1;
    const auto r = std::from_chars(b, e, idx);
    if (r.ec == std::errc() && r.ptr == e && idx >= 0) {
      d.cuda = true;
      d.index = idx;
      return d;
    }
  }
  // Appended piece by piece: "'" + std::string(s) trips GCC 12's -Wrestrict false positive.
  std::string msg(1, '\'');
  msg.append(s);
  msg.append("' is not a device: use cpu, cuda or cuda:N (N = 0, 1, ...)");
  fail("--device", msg);
}

std::string cuda_runner_unsupported(const ModelSpec& s, bool int8_weights) {
  if (int8_weights) return s.family + " with LLM.int8 weights";
  if (s.mla()) return s.family + ": multi-head latent attention";
  if (s.moe()) return s.family + ": mixture-of-experts layers";
  if (s.attn_sinks) return s.family + ": attention sinks";
  if (s.has_global_geometry() || s.v_norm || s.layer_scalar || s.ple() || s.kv_shared_layers > 0)
    return s.family + ": full-attention layers of their own head size, value norms, layer scalars, per-layer inputs "
                      "and shared keys and values";
  if (s.hybrid())
    return s.family + (s.la_short_conv ? ": short-convolution layers"
                       : s.la_mamba2  ? ": Mamba2 (selective state space) layers"
                       : s.la_mamba1  ? ": Mamba (selective state space) layers"
                                      : ": gated DeltaNet (linear attention) layers");
  if (s.attn_output_gate) return s.family + ": gated attention outputs";
  if (s.q_pos_scale_beta != 0.0f) return s.family + ": a per-position query scale (llama_4_scaling_beta)";
  if (s.qk_norm) return s.family + ": per-head q/k norms";
  if (s.mlp == MlpKind::GeGLU) return s.family + ": a GeGLU MLP";
  if (s.mlp == MlpKind::Plain) return s.family + ": a plain (non-gated) MLP";
  if (s.norm == NormKind::LayerNorm) return s.family + ": LayerNorm";
  if (s.norm_unit_offset) return s.family + ": (1 + w) norms";
  if (s.embed_scale) return s.family + ": scaled embeddings";
  if (s.parallel_residual) return s.family + ": parallel-residual blocks";
  if (s.positional != PositionalKind::Rotary) return s.family + ": positions other than rotary";
  if (s.fused_qkv || s.fused_gate_up) return s.family + ": fused qkv/gate_up Linears";
  if (s.rotary_dim > 0) return s.family + ": partial rotary";
  if (s.rope_interleaved) return s.family + ": interleaved rotary pairs";
  if (!s.nope_layers.empty()) return s.family + ": layers without rotary";
  if (s.clip_qkv > 0.0f) return s.family + ": clamped q/k/v";
  if (s.rope_scaling.type == RopeScaling::Type::LongRope) return s.family + ": longrope";
  if (s.sliding_window > 0) return s.family + ": a sliding attention window";
  if (s.rope_local) return s.family + ": local rotary layers";
  if (s.sandwich_norms || s.post_norm || s.shared_branch_norm || s.embed_norm || !s.final_norm)
    return s.family + ": its norm placement";
  if (s.attn_scale > 0.0f || s.attn_softcap > 0.0f || s.final_softcap > 0.0f)
    return s.family + ": a custom attention scale or softcaps";
  if (s.projects_embeddings()) return s.family + ": projected embeddings";
  if (s.head_bias) return s.family + ": a bias on the output head";
  if (!s.pre_norms || s.qk_norm_full || s.norm_round_once || s.qk_norm_round_once) return s.family + ": its norm placement";
  if (s.embed_multiplier != 1.0f || s.residual_multiplier != 1.0f || s.logit_factor() != 1.0f)
    return s.family + ": embedding, residual or logit multipliers";
  if (s.qkv_per_head || s.qkv_grouped) return s.family + ": per-head q/k/v layouts";
  return "";
}

CudaEngine choose_cuda_engine(const ModelSpec& spec, std::string_view request, bool int8_weights) {
  if (request == "backend") return CudaEngine::Backend;
  const std::string why = cuda_runner_unsupported(spec, int8_weights);
  if (request == "runner") {
    if (!why.empty())
      fail("QLORA_CUDA_ENGINE=runner", "the llama CUDA runner does not run " + why +
                                           "; unset QLORA_CUDA_ENGINE (or set it to backend) to run it on the "
                                           "CUDA backend");
    return CudaEngine::Runner;
  }
  if (!request.empty() && request != "auto") {
    std::string msg(1, '\'');
    msg.append(request);
    msg.append("' is not an engine: use auto, runner or backend");
    fail("QLORA_CUDA_ENGINE", msg);
  }
  return why.empty() ? CudaEngine::Runner : CudaEngine::Backend;
}

const char* cuda_engine_name(CudaEngine e) {
  return e == CudaEngine::Runner ? "llama runner (CUDA graphs)" : "block interpreter on the CUDA backend";
}

#ifndef QLORA_HAVE_CUDA
namespace {
[[noreturn]] void no_cuda() {
  fail("--device", "this qlora was built without the CUDA backend; rebuild with -DQLORA_CUDA=ON "
                   "(needs the CUDA toolkit: nvcc and cuBLAS)");
}
}  // namespace

bool cuda_backend_built() { return false; }

bool device_free_memory(const DeviceChoice&, uint64_t*, uint64_t*) { return false; }

void check_device_available(const DeviceChoice& d) {
  if (d.cuda) no_cuda();
}

std::shared_ptr<const DeviceRunner> make_cuda_runner(const Model&, int) { no_cuda(); }

std::shared_ptr<Backend> make_cuda_backend(int) { no_cuda(); }
#endif

}  // namespace qlora
