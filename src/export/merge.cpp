#include "export/merge.h"
#include "formats/config_reader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <functional>

#include <nlohmann/json.hpp>

#include "base/atomic_file.h"
#include "base/error.h"
#include "base/float_formats.h"
#include "base/progress.h"
#include "base/mapped_file.h"
#include "formats/hf_wrapper.h"
#include "formats/model_family.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "export/tokenizer_json_writer.h"
#include "lora/lora.h"
#include "lora/lora_model.h"

namespace qlora {

namespace fs = std::filesystem;

namespace {

// One tensor of the output: its name, shape, and how to make its float32 values.
struct OutTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::function<std::vector<float>()> values;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::vector<float> dense_rows(const DenseWeight& w) {
  std::vector<float> v(static_cast<size_t>(w.rows() * w.cols()));
  w.rows_to_f32(0, w.rows(), v.data());
  return v;
}

// Every tensor of the merged model, in the order ModelSpec::tensors() lists them, under the
// family's Hugging Face names.
// (Conv1D families, gpt2, get their block Linears back in their (in, out) layout.)
// The name a merged file gives a canonical tensor: the family's Hugging Face name, and for a
// vision-language model's language model the form the source's files use (`stored_embed`:
// how they name model.embed_tokens.weight).
std::string output_name(const ModelSpec& s, const std::string& canonical, const std::string& stored_embed) {
  std::string h = canonical_to_hf(s, canonical);
  if (const ModelFamily* f = find_family(s.family); f && !f->stored_alias.hf.empty() && h.starts_with(f->stored_alias.canonical))
    h = std::string(f->stored_alias.hf) + h.substr(f->stored_alias.canonical.size());  // (Nemotron-H: backbone.)
  if (s.hf_wrapper.empty()) return h;
  const auto text = wrapped_path_to_text(h);
  return text ? text_to_wrapped_file_name(*text, stored_embed) : h;
}

std::vector<OutTensor> output_tensors(const Model& model, const std::vector<WeightedAdapter>& adapters,
                                      const std::string& stored_embed) {
  std::vector<OutTensor> t;
  const ModelFamily* fam = find_family(model.spec().family);
  for (const TensorSpec& ts : model.spec().tensors()) {
    if (fam && fam->conv1d_linears && ts.shape.size() == 2 && is_block_linear_weight(ts.name)) {
      t.push_back({output_name(model.spec(), ts.name, stored_embed), {ts.shape[1], ts.shape[0]}, [&model, &adapters, name = ts.name,
                                                                                 shape = ts.shape] {
                     const std::vector<float> v = merged_tensor_values(model, name, adapters);
                     std::vector<float> tr(v.size());
                     for (int64_t o = 0; o < shape[0]; ++o)
                       for (int64_t i = 0; i < shape[1]; ++i)
                         tr[static_cast<size_t>(i * shape[0] + o)] = v[static_cast<size_t>(o * shape[1] + i)];
                     return tr;
                   }});
      continue;
    }
    t.push_back({output_name(model.spec(), ts.name, stored_embed), ts.shape, [&model, &adapters, name = ts.name] {
                   return merged_tensor_values(model, name, adapters);
                 }});
  }
  // (a family whose transformers class never ties, Nemotron-H's, from a tied source -- a GGUF
  // without output.weight: the head written out as the embeddings' copy)
  if (fam && fam->never_tied && model.spec().tied_embeddings)
    t.push_back({output_name(model.spec(), "lm_head.weight", stored_embed), {model.spec().vocab, model.spec().hidden},
                 [&model, &adapters] { return merged_tensor_values(model, "model.embed_tokens.weight", adapters); }});
  return t;
}

std::vector<uint8_t> encode(const std::vector<float>& v, DType dtype, const std::string& name) {
  std::vector<uint8_t> out(v.size() * dtype_size(dtype));
  if (dtype == DType::F32) {
    std::memcpy(out.data(), v.data(), out.size());
    return out;
  }
  auto* h = reinterpret_cast<uint16_t*>(out.data());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) fail(name, "holds a non-finite value; nothing was written for it");
    h[i] = dtype == DType::BF16 ? f32_to_bf16(v[i]) : f32_to_fp16(v[i]);
    if (dtype == DType::F16 && std::isinf(fp16_to_f32(h[i])))
      fail(name, "value " + std::to_string(v[i]) + " does not fit fp16 (max 65504): use --dtype bf16 or fp32");
  }
  return out;
}

const char* torch_dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: return "?";
  }
}

// Files of a Hugging Face tokenizer, copied as they are.
// (and a vision-language model's processor settings, which its users load beside it)
constexpr const char* kTokenizerFiles[] = {"tokenizer.json",      "tokenizer_config.json",   "special_tokens_map.json",
                                           "chat_template.jinja", "tokenizer.model",         "generation_config.json",
                                           "chat_template.json",  "preprocessor_config.json", "processor_config.json"};

// A vision-language model's config.json: the source's as it was (a merge changes weights,
// not the architecture, and the wrapper's keys -- its text_config's own model_type, Qwen's
// multimodal rotary -- stay as transformers wants them), the dtype updated.
std::string wrapped_config_json(const fs::path& source_config, DType dtype) {
  nlohmann::ordered_json outer;
  try {
    outer = nlohmann::ordered_json::parse(config::python_json_literals(read_text_file(source_config.string())));
  } catch (const nlohmann::json::exception& e) {
    fail(source_config.string(), std::string("not valid JSON: ") + e.what());
  }
  const bool old_key = outer.contains("torch_dtype") && !outer.contains("dtype");
  outer[old_key ? "torch_dtype" : "dtype"] = torch_dtype_name(dtype);
  return outer.dump(2) + "\n";
}

}  // namespace

namespace {

// W (out, in) plus each adapter's weighted ΔW for the Linear `find` picks (below: of a QuantLinear, dequantized).
template <class Find>
std::vector<float> merged_weight(std::vector<float> w, int64_t out, int64_t in, const std::vector<WeightedAdapter>& adapters,
                                 Find find) {
  for (const WeightedAdapter& wa : adapters) {
    if (!wa.adapter) continue;
    const LoraLayer* L = find(*wa.adapter);
    if (!L) continue;
    check(L->in == in && L->out == out, L->module_path, "the adapter's shape differs from the model's Linear");
    // ΔW = weight · scaling · B A, B (out, r), A (r, in); B·A accumulated in float32 over r
    // as torch's (B @ A) does, then scaled, as PEFT's get_delta_weight.
    const float scale = static_cast<float>(wa.weight) * L->scaling;
    const int r = L->r;
    const float* A = L->A.data();
    const float* B = L->B.data();
    float* W = w.data();
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; ++o) {
      std::vector<float> row(static_cast<size_t>(in), 0.f);
      for (int k = 0; k < r; ++k) {
        const float b = B[o * r + k];
        const float* a = A + static_cast<int64_t>(k) * in;
        for (int64_t i = 0; i < in; ++i) row[static_cast<size_t>(i)] += b * a[i];
      }
      float* wr = W + o * in;
      for (int64_t i = 0; i < in; ++i) wr[i] += row[static_cast<size_t>(i)] * scale;
    }
  }
  return w;
}

template <class Find>
std::vector<float> merged_weight(const QuantLinear& q, const std::vector<WeightedAdapter>& adapters, Find find) {
  const int64_t out = q.out_features(), in = q.in_features();
  std::vector<float> w(static_cast<size_t>(out * in));
  q.dequantize_rows(0, out, w.data());
  return merged_weight(std::move(w), out, in, adapters, find);
}

}  // namespace

std::vector<float> merged_tensor_values(const Model& model, const std::string& name,
                                        const std::vector<WeightedAdapter>& adapters) {
  if (name == "model.embed_tokens.weight") return dense_rows(model.embed_tokens());
  if (name == "lm_head.weight") return dense_rows(model.lm_head());
  if (name == "lm_head.bias" && !model.lm_head_bias().empty()) return model.lm_head_bias();
  if (name == "model.norm.weight") return model.final_norm();
  if (name == "model.embed_positions.weight") return dense_rows(model.embed_positions());
  if (name == "model.embed_norm.weight") return model.embed_norm();
  if (name == "model.embed_norm.bias") return model.embed_norm_bias();
  if (name == "model.norm.bias" && !model.final_norm_bias().empty()) return model.final_norm_bias();
  if (model.spec().ple()) {  // (Gemma 4's per-layer inputs)
    if (name == "model.embed_tokens_per_layer.weight") return dense_rows(model.embed_per_layer());
    if (name == "model.per_layer_projection_norm.weight") return model.ple_projection_norm();
  }
  for (int w = 0; w < kModelLinearCount; ++w)
    if (const std::string n = model_linear_name(model.spec(), static_cast<ModelLinear>(w)); !n.empty() && name == n + ".weight")
      return merged_model_linear_weight(model, static_cast<ModelLinear>(w), adapters);
  constexpr std::string_view prefix = "model.layers.";
  if (name.rfind(prefix, 0) == 0) {
    const size_t dot = name.find('.', prefix.size());
    const std::string num = name.substr(prefix.size(), dot == std::string::npos ? 0 : dot - prefix.size());
    if (!num.empty() && num.size() < 8 && num.find_first_not_of("0123456789") == std::string::npos) {
      const int64_t l = std::stoll(num);
      const std::string rest = name.substr(dot + 1);
      if (l < model.spec().n_layers) {
        const LayerWeights& L = model.layers()[static_cast<size_t>(l)];
        if (rest == "input_layernorm.weight") return L.input_norm;
        if (rest == "post_attention_layernorm.weight") return L.post_norm;
        if (rest == "input_layernorm.bias" && !L.input_norm_bias.empty()) return L.input_norm_bias;
        if (rest == "post_attention_layernorm.bias" && !L.post_norm_bias.empty()) return L.post_norm_bias;
        if (rest == "self_attn.q_norm.weight" && !L.q_norm.empty()) return L.q_norm;
        if (rest == "pre_feedforward_layernorm.weight" && !L.pre_ffn_norm.empty()) return L.pre_ffn_norm;
        if (rest == "post_feedforward_layernorm.weight" && !L.post_ffn_norm.empty()) return L.post_ffn_norm;
        if (rest == "self_attn.k_norm.weight" && !L.k_norm.empty()) return L.k_norm;
        if (rest == "self_attn.q_a_layernorm.weight" && !L.q_a_norm.empty()) return L.q_a_norm;
        if (rest == "self_attn.kv_a_layernorm.weight" && !L.kv_a_norm.empty()) return L.kv_a_norm;
        if (model.spec().qk_norm_tensor_per_head)  // (one head's slice of the (heads, head_dim) weights)
          for (bool key : {false, true})
            for (int64_t h = 0; h < (key ? model.spec().n_kv_heads : model.spec().n_heads); ++h)
              if (rest == qk_head_norm_module(key, h) + ".weight") {
                const std::vector<float>& w = key ? L.k_norm : L.q_norm;
                const int64_t HS = model.spec().head_dim;
                return std::vector<float>(w.begin() + h * HS, w.begin() + (h + 1) * HS);
              }
        if (rest == "self_attn.sinks" && !L.attn_sinks.empty()) return L.attn_sinks;
        if (model.spec().act == Activation::Xielu && name.find(".mlp.act_fn.") != std::string::npos) {  // (Apertus)
          const float v[4] = {L.xielu.alpha_p, L.xielu.alpha_n, L.xielu.beta, L.xielu.eps};
          for (int i = 0; i < 4; ++i)
            if (name == xielu_tensor_name(l, i)) return {v[i]};
        }
        if (rest == "layer_scalar" && model.spec().layer_scalar) return {L.layer_scalar};
        if (rest == "post_per_layer_input_norm.weight" && model.spec().ple()) return L.ple_norm;
        if (model.spec().moe_gemma4) {  // (its router's scales and the experts' norms)
          if (rest == "router.scale") return L.router_scale;
          if (rest == "router.per_expert_scale") return L.per_expert_scale;
          if (rest == "post_feedforward_layernorm_1.weight") return L.post_ffn_norm1;
          if (rest == "pre_feedforward_layernorm_2.weight") return L.pre_ffn_norm2;
          if (rest == "post_feedforward_layernorm_2.weight") return L.post_ffn_norm2;
        }
        if (model.spec().layer_is_linear_attn(l)) {  // the gated DeltaNet's own parameters
          if (rest == "linear_attn.dt_bias") return L.la_dt_bias;
          if (rest == "linear_attn.A_log") return L.la_A_log;
          if (rest == "linear_attn.conv1d.weight") return L.la_conv;
          if (rest == "linear_attn.norm.weight") return L.la_norm;
          if (rest == "linear_attn.conv1d.bias") return L.la_conv_bias;
          if (rest == "linear_attn.D") return L.la_D;
          if (model.spec().la_bcdt_weights) {  // (Jamba's dt / B / C norms; la_bc_norm holds B's then C's)
            const int64_t N = model.spec().la_k_dim;
            if (rest == "linear_attn.dt_layernorm.weight") return L.la_dt_norm;
            if (rest == "linear_attn.b_layernorm.weight") return {L.la_bc_norm.begin(), L.la_bc_norm.begin() + N};
            if (rest == "linear_attn.c_layernorm.weight") return {L.la_bc_norm.begin() + N, L.la_bc_norm.end()};
          }
        }
        if (model.spec().layer_moe(l) && model.spec().moe_f32_router()) {  // (float32, with its score bias)
          if (rest == std::string(kMoeRouterModule) + ".weight")  // (with its adapters: PEFT's ParamWrapper)
            return merged_weight(L.router_f32, model.spec().n_experts, model.spec().hidden, adapters,
                                 [&](const LoraModel& a) { return a.find_router(l); });
          if (rest == model.spec().moe_score_bias && model.spec().moe_has_score_bias()) return L.router_score_bias;
        }
        if (model.spec().layer_moe(l) && model.spec().moe_gpt_oss) {  // router bias; experts fused again
          const ModelSpec& s = model.spec();
          const int64_t E = s.n_experts, F = s.expert_ffn, C = s.hidden;
          if (rest == std::string(kMoeRouterModule) + ".weight")
            return merged_weight(L.router, adapters, [&](const LoraModel& a) { return a.find_router(l); });
          if (rest == std::string(kMoeRouterModule) + ".bias") return L.router.bias();
          for (int part = 0; part < 4; ++part) {
            if (rest != fused_expert_tensor(part)) continue;
            const int64_t per = part == 0 ? C * 2 * F : part == 1 ? 2 * F : part == 2 ? F * C : C;
            std::vector<float> out(static_cast<size_t>(E * per));
            for (int64_t e = 0; e < E; ++e) {
              float* o = out.data() + e * per;
              const QuantLinear& gu = L.expert_gate_up[static_cast<size_t>(e)];
              const QuantLinear& dn = L.expert_down[static_cast<size_t>(e)];
              if (part == 0 || part == 1) {  // (2F, C), rows interleaved as stored -> (C, 2F)
                const std::vector<float> w =
                    part == 0 ? merged_weight(gu, adapters, [&](const LoraModel& a) { return a.find_expert(l, e, 0); })
                              : std::vector<float>();
                for (int64_t j = 0; j < 2 * F; ++j) {
                  if (part == 1) o[j] = gu.bias()[static_cast<size_t>(j)];
                  else
                    for (int64_t c = 0; c < C; ++c) o[c * 2 * F + j] = w[static_cast<size_t>(j * C + c)];
                }
              } else if (part == 2) {  // (C, F) -> (F, C)
                const std::vector<float> w =
                    merged_weight(dn, adapters, [&](const LoraModel& a) { return a.find_expert(l, e, 1); });
                for (int64_t f = 0; f < F; ++f)
                  for (int64_t c = 0; c < C; ++c) o[f * C + c] = w[static_cast<size_t>(c * F + f)];
              } else {
                std::copy(dn.bias().begin(), dn.bias().end(), o);
              }
            }
            return out;
          }
        }
        if (model.spec().layer_moe(l) && model.spec().moe_fused_experts)  // (E, 2F, C) and (E, C, F) again
          for (int part : {0, 2}) {
            if (rest != fused_expert_tensor(part)) continue;
            std::vector<float> out;
            const int64_t F = model.spec().expert_ffn, C = model.spec().hidden;
            for (int64_t e = 0; e < model.spec().n_experts; ++e) {
              std::vector<float> w =
                  part == 0 ? merged_weight(L.expert_gate_up[static_cast<size_t>(e)], adapters,
                                            [&](const LoraModel& a) { return a.find_expert(l, e, 0); })
                            : merged_weight(L.expert_down[static_cast<size_t>(e)], adapters,
                                            [&](const LoraModel& a) { return a.find_expert(l, e, 1); });
              if (model.spec().moe_llama4) {  // (Llama 4's (in, out): (C, 2F) and (F, C))
                const int64_t rows = part == 0 ? 2 * F : C, cols = part == 0 ? C : F;
                std::vector<float> t(w.size());
                for (int64_t i = 0; i < rows; ++i)
                  for (int64_t j = 0; j < cols; ++j) t[static_cast<size_t>(j * rows + i)] = w[static_cast<size_t>(i * cols + j)];
                w = std::move(t);
              }
              out.insert(out.end(), w.begin(), w.end());
            }
            return out;
          }
        if (model.spec().layer_moe(l)) {  // the router, shared-expert gate and experts, with their adapters
          if (rest == std::string(kMoeRouterModule) + ".weight")
            return merged_weight(L.router, adapters, [&](const LoraModel& a) { return a.find_router(l); });
          if (rest == std::string(kMoeSharedGateModule) + ".weight" && model.spec().shared_expert)
            return merged_weight(L.shared_gate, adapters, [&](const LoraModel& a) { return a.find_shared_gate(l); });
          const int64_t F = model.spec().expert_ffn, C = model.spec().hidden;
          for (int64_t e = 0; e < model.spec().n_experts; ++e)
            for (int part = 0; part < 3; ++part)
              if (rest == expert_module(e, part) + ".weight") {
                if (part == 2)
                  return merged_weight(L.expert_down[static_cast<size_t>(e)], adapters,
                                           [&](const LoraModel& a) { return a.find_expert(l, e, 1); });
                // gate rows, or up rows, of the expert's fused gate_up (and its adapter's ΔW); an
                // ungated expert's up rows are all of it
                std::vector<float> gu = merged_weight(L.expert_gate_up[static_cast<size_t>(e)], adapters,
                                                          [&](const LoraModel& a) { return a.find_expert(l, e, 0); });
                if (model.spec().moe_ungated) {
                  if (part == 0) break;
                  return gu;
                }
                return std::vector<float>(gu.begin() + part * F * C, gu.begin() + (part + 1) * F * C);
              }
        }
        const auto lin = model.spec().block_linears(l);
        for (int w = 0; w < kBlockLinearCount; ++w) {
          if (!lin[w].module || !model.spec().layer_has_linear(l, w)) continue;  // absent (fused, or not this layer's kind)
          if (rest == std::string(lin[w].module) + ".weight") return merged_linear_weight(model, l, w, adapters);
          if (rest == std::string(lin[w].module) + ".bias") return model.block_linear(l, w).bias();
        }
      }
    }
  }
  fail(name, "not a tensor of this model");
}


std::vector<float> merged_linear_weight(const Model& model, int64_t layer, int which,
                                        const std::vector<WeightedAdapter>& adapters) {
  return merged_weight(model.block_linear(layer, which), adapters,
                       [&](const LoraModel& a) { return a.find(layer, static_cast<BlockLinear>(which)); });
}

std::vector<float> merged_model_linear_weight(const Model& model, ModelLinear which,
                                              const std::vector<WeightedAdapter>& adapters) {
  return merged_weight(model.model_linear(which), adapters, [&](const LoraModel& a) { return a.find(which); });
}

std::string hf_config_json(const ModelSpec& s, DType dtype) {
  nlohmann::ordered_json j;
  const ModelFamily* fam = find_family(s.family);
  if (!fam || fam->hf_class.empty())
    fail("config.json", "exporting model_type '" + s.family + "' is not supported (" + supported_model_types() + ")");
  j["architectures"] = {std::string(fam->hf_class)};
  j["model_type"] = s.family;
  j["hidden_size"] = s.hidden;
  j["intermediate_size"] = s.ffn;
  j["num_hidden_layers"] = s.n_layers;
  j["num_attention_heads"] = s.n_heads;
  j["num_key_value_heads"] = s.n_kv_heads;
  j["head_dim"] = s.head_dim;
  j["hidden_act"] = s.mlp == MlpKind::GeGLU ? "gelu_pytorch_tanh" : "silu";
  j["max_position_embeddings"] = s.max_positions;
  j["rms_norm_eps"] = s.norm_eps;
  j["rope_theta"] = s.rope_theta;
  // Rotary scaling in the rope_scaling form both transformers 4 and 5 read.
  const RopeScaling& rs = s.rope_scaling;
  if (rs.type != RopeScaling::Type::None) j["rope_scaling"] = config::rope_scaling_json(rs);
  // (dynamic: the context the model runs to is factor x the one config.json names)
  if (rs.type == RopeScaling::Type::Dynamic) j["max_position_embeddings"] = rs.original_max_positions;
  j["vocab_size"] = s.vocab;
  j["tie_word_embeddings"] = s.tied_embeddings && !fam->never_tied;
  if (fam->write_config) fam->write_config(s, j);  // the family's own keys (and its refusals)
  if (s.bos_id >= 0) j["bos_token_id"] = s.bos_id;
  if (s.eos_ids.size() == 1) j["eos_token_id"] = s.eos_ids[0];
  else if (!s.eos_ids.empty()) j["eos_token_id"] = s.eos_ids;
  if (s.pad_id >= 0) j["pad_token_id"] = s.pad_id;
  j["torch_dtype"] = torch_dtype_name(dtype);
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

std::vector<std::string> write_merged_hf_dir(const Model& model, const ModelFiles& source,
                                             const std::vector<WeightedAdapter>& adapters,
                                             const std::string& out_dir, const HfExportOptions& opt,
                                             bool overwrite) {
  if (opt.dtype != DType::F32 && opt.dtype != DType::BF16 && opt.dtype != DType::F16)
    fail("--dtype", "must be fp32, bf16 or fp16");
  std::error_code ec;
  // The source directory itself is never written into: merging must not touch the base.
  const fs::path src_dir = source.format == ModelFormat::HfDirectory ? fs::path(source.path)
                                                                     : fs::path(source.path).parent_path();
  if (fs::exists(out_dir, ec) && fs::exists(src_dir, ec) && fs::equivalent(out_dir, src_dir, ec))
    fail(out_dir, "is the base model's own directory: write the merged model somewhere else");
  if (const auto n = model_file_in_dir(out_dir); n && !overwrite)
    fail(out_dir, "already holds a model (" + *n + "); pass --overwrite to replace it, or choose another --out");
  fs::create_directories(out_dir, ec);
  if (ec) fail(out_dir, "cannot create the output directory: " + ec.message());

  std::string config = hf_config_json(model.spec(), opt.dtype);  // refuses unsupported forms first
  // A vision-language model: its vision tower and projector as they were (converted to the
  // output dtype), read from the source again (the model holds its language model only),
  // the language model under the source's names, the source's config.json.
  std::unique_ptr<ModelFiles> wrapped_source;
  std::string stored_embed;
  if (!model.spec().hf_wrapper.empty()) {
    check(source.format == ModelFormat::HfDirectory || source.format == ModelFormat::SafeTensors, source.path,
          "a vision-language model merges from its Hugging Face files");
    config = wrapped_config_json(src_dir / "config.json", opt.dtype);
    wrapped_source = std::make_unique<ModelFiles>(open_model_files(source.path));
    stored_embed = wrapped_source->tensors->stored_name("model.embed_tokens.weight");
  }
  std::vector<OutTensor> tensors = output_tensors(model, adapters, stored_embed);
  if (wrapped_source) {
    const TensorSource& ws = *wrapped_source->tensors;
    for (const std::string& n : ws.other_part_names())
      tensors.push_back({n, ws.shape(n), [&ws, n] { return ws.get(n); }});
  }

  // Shards: consecutive tensors up to max_shard_bytes each (a bigger tensor gets its own).
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t b = static_cast<uint64_t>(tensors[i].numel()) * dtype_size(opt.dtype);
    if (!shards.back().empty() && in_shard + b > opt.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += b;
    total += b;
  }
  std::vector<std::string> written;
  auto shard_name = [&](size_t k) {
    if (shards.size() == 1) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    return std::string(buf);
  };
  std::unique_ptr<ProgressBar> bar;
  if (opt.log) bar = std::make_unique<ProgressBar>(static_cast<int64_t>(tensors.size()), "merge", "tensors");
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  int64_t done = 0;
  for (size_t k = 0; k < shards.size(); ++k) {
    SafeTensorsWriter w;
    w.set_metadata("format", "pt");
    for (size_t i : shards[k]) {
      OutTensor& t = tensors[i];
      w.add_owned(t.name, opt.dtype, t.shape, encode(t.values(), opt.dtype, t.name));
      weight_map[t.name] = shard_name(k);
      if (bar) bar->update(++done, t.name);
    }
    w.write((fs::path(out_dir) / shard_name(k)).string());
    written.push_back(shard_name(k));
  }
  if (bar) bar->finish("");
  // A single file needs no index; a stale one from an earlier export would mislead loaders.
  const fs::path index = fs::path(out_dir) / "model.safetensors.index.json";
  if (shards.size() > 1) {
    nlohmann::ordered_json idx;
    idx["metadata"] = {{"total_size", total}};
    idx["weight_map"] = weight_map;
    write_file_atomic(index.string(), idx.dump(2) + "\n");
    written.push_back(index.filename().string());
  } else {
    fs::remove(index, ec);
  }
  write_file_atomic((fs::path(out_dir) / "config.json").string(), config);
  written.push_back("config.json");

  // Tokenizer and generation settings: the source's own files when it has them.
  bool have_gen = false;
  if (source.format == ModelFormat::HfDirectory || source.format == ModelFormat::SafeTensors) {
    for (const char* f : kTokenizerFiles) {
      const fs::path from = src_dir / f;
      if (!fs::exists(from, ec)) continue;
      fs::copy_file(from, fs::path(out_dir) / f, fs::copy_options::overwrite_existing, ec);
      if (ec) fail((fs::path(out_dir) / f).string(), "cannot copy the tokenizer file: " + ec.message());
      written.emplace_back(f);
      have_gen = have_gen || std::string(f) == "generation_config.json";
    }
  }
  // A source without Hugging Face tokenizer files (GGUF, llama2.c): write its tokenizer.
  const bool have_tok = std::find(written.begin(), written.end(), "tokenizer.json") != written.end();
  if (!have_tok && source.tokenizer) {
    try {
      const TokenizerSpec& ts = source.tokenizer->spec();
      const std::string tj = tokenizer_json_text(ts);
      write_file_atomic((fs::path(out_dir) / "tokenizer.json").string(), tj);
      write_file_atomic((fs::path(out_dir) / "tokenizer_config.json").string(),
                        tokenizer_config_json_text(ts, model.spec().max_positions));
      written.emplace_back("tokenizer.json");
      written.emplace_back("tokenizer_config.json");
    } catch (const Error& e) {
      if (opt.log) std::fprintf(stderr, "note: no tokenizer files written: %s\n", e.what());
    }
  }
  if (!have_gen) {
    nlohmann::ordered_json g;
    const ModelSpec& s = model.spec();
    if (s.bos_id >= 0) g["bos_token_id"] = s.bos_id;
    if (s.eos_ids.size() == 1) g["eos_token_id"] = s.eos_ids[0];
    else if (!s.eos_ids.empty()) g["eos_token_id"] = s.eos_ids;
    if (s.pad_id >= 0) g["pad_token_id"] = s.pad_id;
    write_file_atomic((fs::path(out_dir) / "generation_config.json").string(), g.dump(2) + "\n");
    written.push_back("generation_config.json");
  }
  return written;
}

}  // namespace qlora
