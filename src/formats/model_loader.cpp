#include "formats/model_loader.h"

#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/mapped_file.h"
#include "formats/byte_tokenizer.h"
#include "formats/fp8_checkpoint.h"
#include "formats/ggml_as_4bit.h"
#include "formats/hf_config.h"
#include "formats/gguf.h"
#include "formats/llama2c_model.h"
#include "formats/llama2c_tokenizer.h"
#include "formats/hf_wrapper.h"
#include "quant/mxfp4.h"
#include "base/float_formats.h"
#include "formats/model_family.h"
#include "formats/safetensors.h"
#include "formats/safetensors_source.h"
#include "formats/tokenizer.h"
#include "formats/tokenizer_gguf.h"
#include "model/block_row_kernels.h"
#include "model/random_model.h"
#include "model/random_spec.h"
#include "quant/int8_safetensors.h"
#include "quant/quant_state.h"
#include "quant/quantize_checkpoint.h"

namespace qlora {

namespace fs = std::filesystem;

ModelFiles::ModelFiles() = default;
ModelFiles::~ModelFiles() = default;
ModelFiles::ModelFiles(ModelFiles&&) noexcept = default;
ModelFiles& ModelFiles::operator=(ModelFiles&&) noexcept = default;

const char* model_format_name(ModelFormat f) {
  switch (f) {
    case ModelFormat::HfDirectory: return "huggingface";
    case ModelFormat::SafeTensors: return "safetensors";
    case ModelFormat::Gguf: return "gguf";
    case ModelFormat::Llama2c: return "llama2.c";
    case ModelFormat::Random: return "random weights";
  }
  return "?";
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string first_bytes(const std::string& path, size_t n) {
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    out.resize(n);
    out.resize(std::fread(out.data(), 1, n, f));
    std::fclose(f);
  }
  return out;
}

// A family's Hugging Face names (gpt_neox.layers.0.attention.query_key_value.weight) seen
// under the canonical ones the model asks for (model.layers.0.self_attn.qkv_proj.weight).
class RenamedSource : public TensorSource {
 public:
  RenamedSource(std::unique_ptr<TensorSource> inner, const ModelFamily& fam, const ModelSpec& spec)
      : inner_(std::move(inner)), fam_(fam), renames_(fam.renames(spec)) {
    for (std::string& n : inner_->other_part_names()) others_.insert(std::move(n));
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> n;
    for (const std::string& h : inner_->names()) n.push_back(hf_to_canonical(renames_, with_prefix(h)));
    return n;
  }
  bool has(const std::string& name) const override { return inner_->has(hf(name)); }
  // Conv1D families (gpt2) store block Linears (in, out): seen here as (out, in).
  std::vector<int64_t> shape(const std::string& name) const override {
    std::vector<int64_t> s = inner_->shape(hf(name));
    if (transposed(name, s)) std::swap(s[0], s[1]);
    return s;
  }
  std::vector<float> get(const std::string& name) const override {
    std::vector<float> v = inner_->get(hf(name));
    const std::vector<int64_t> s = inner_->shape(hf(name));
    if (!transposed(name, s)) return v;
    std::vector<float> t(v.size());
    for (int64_t i = 0; i < s[0]; ++i)
      for (int64_t o = 0; o < s[1]; ++o) t[static_cast<size_t>(o * s[0] + i)] = v[static_cast<size_t>(i * s[1] + o)];
    return t;
  }
  std::optional<Quantized4bit> get_4bit(const std::string& name) const override { return inner_->get_4bit(hf(name)); }
  bool keeps_gguf_4bit(const std::string& name) const override { return inner_->keeps_gguf_4bit(hf(name)); }
  bool keeps_gguf_blocks(const std::string& name) const override { return inner_->keeps_gguf_blocks(hf(name)); }
  std::optional<GgmlType> gguf_block_type(const std::string& name) const override {
    return inner_->gguf_block_type(hf(name));
  }
  std::optional<std::vector<uint8_t>> get_q8_0_linear(const std::string& name) const override {
    return inner_->get_q8_0_linear(hf(name));
  }
  std::optional<GgufBlocks> get_gguf_blocks(const std::string& name) const override {
    return inner_->get_gguf_blocks(hf(name));
  }
  std::optional<Quantized8bit> get_int8(const std::string& name) const override { return inner_->get_int8(hf(name)); }
  std::optional<ComputeDType> stored_16bit(const std::string& name) const override { return inner_->stored_16bit(hf(name)); }
  bool reads_rows(const std::string& name) const override {
    return inner_->reads_rows(hf(name)) && !transposed(name, inner_->shape(hf(name)));
  }
  void get_rows(const std::string& name, int64_t r0, int64_t r1, float* out) const override {
    if (!reads_rows(name)) return TensorSource::get_rows(name, r0, r1, out);
    inner_->get_rows(hf(name), r0, r1, out);
  }
  std::string describe() const override { return inner_->describe(); }
  std::string stored_name(const std::string& name) const override { return inner_->stored_name(hf(name)); }
  std::vector<std::string> unmapped_names() const override { return inner_->unmapped_names(); }
  std::vector<std::string> other_part_names() const override { return inner_->other_part_names(); }
  std::vector<float> get_slice(const std::string& name, int64_t i) const override { return inner_->get_slice(hf(name), i); }
  bool is_mxfp4(const std::string& name) const override { return inner_->is_mxfp4(hf(name)); }

 private:
  // The stored name of a canonical one: the family's name, or the same without the base
  // model prefix when the checkpoint was saved that way.
  std::string hf(const std::string& canonical) const {
    // (a vision-language model's other parts keep their names: Llama 4's vision tower has an mlp
    // where its language model has a feed_forward)
    if (others_.count(canonical)) return canonical;
    std::string h = canonical_to_hf(renames_, canonical);
    const std::string_view p = fam_.base_prefix;
    if (!p.empty() && h.starts_with(p) && !inner_->has(h) && inner_->has(h.substr(p.size()))) h = h.substr(p.size());
    const HfRename& a = fam_.stored_alias;
    if (!a.hf.empty() && h.starts_with(a.canonical) && !inner_->has(h)) {
      std::string alt = std::string(a.hf) + h.substr(a.canonical.size());
      if (inner_->has(alt)) h = std::move(alt);
    }
    return h;
  }
  std::string with_prefix(const std::string& h) const {
    const HfRename& a = fam_.stored_alias;
    if (!a.hf.empty() && h.starts_with(a.hf)) return std::string(a.canonical) + h.substr(a.hf.size());
    const std::string_view p = fam_.base_prefix;
    if (p.empty() || h.starts_with(p) || h.starts_with("lm_head.")) return h;
    return std::string(p) + h;
  }
  bool transposed(const std::string& canonical, const std::vector<int64_t>& stored_shape) const {
    return fam_.conv1d_linears && stored_shape.size() == 2 && is_block_linear_weight(canonical) &&
           !inner_->get_4bit(hf(canonical)) && !inner_->get_int8(hf(canonical));
  }
  std::set<std::string> others_;  // the other parts' stored names
  std::unique_ptr<TensorSource> inner_;
  const ModelFamily& fam_;
  std::span<const HfRename> renames_;
};

// ---- GGUF ----------------------------------------------------------------------------

// Rotary tensors spec_from_gguf reads (llama3's divisors, phi3's longrope factors).
bool is_rope_tensor(const std::string& name) {
  return name == "rope_freqs.weight" || name == "rope_factors_long.weight" || name == "rope_factors_short.weight";
}

// Q5_0 blocks (d, 5-bit q: x = d * (q - 16)) as Q8_0 blocks of the same values: the same fp16
// d, int8 codes q - 16.
std::vector<uint8_t> q5_0_as_q8_0(std::span<const uint8_t> q5) {
  const size_t nb = q5.size() / sizeof(BlockQ5_0);
  std::vector<uint8_t> out(nb * sizeof(BlockQ8_0));
  for (size_t b = 0; b < nb; ++b) {
    BlockQ5_0 in;
    std::memcpy(&in, q5.data() + b * sizeof in, sizeof in);
    BlockQ8_0 o;
    o.d = in.d;
    uint32_t qh;
    std::memcpy(&qh, in.qh, 4);
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int x0 = ((in.qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - 16;
      const int x1 = ((in.qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
      o.qs[j] = static_cast<int8_t>(x0);
      o.qs[j + kQK5_0 / 2] = static_cast<int8_t>(x1);
    }
    std::memcpy(out.data() + b * sizeof o, &o, sizeof o);
  }
  return out;
}

class GgufSource : public TensorSource {
 public:
  explicit GgufSource(const std::string& path) : file_(path), hp_(read_gguf_llama_hparams(file_)) {
    for (const GgufTensorInfo& t : file_.tensors()) {
      if (hp_.nextn_layers > 0 && mtp_block(t.name)) continue;  // (GLM-4.5's MTP block: not run)
      if (hp_.architecture == "gpt-oss" && index_gpt_oss(t)) continue;
      if (auto hf = gguf_to_hf_tensor_name(t.name, hp_.architecture, hp_.falcon_two_norms)) index_.emplace(*hf, &t);
      else if (!index_experts(t) && !is_rope_tensor(t.name)) unmapped_.push_back(t.name);  // read by spec_from_gguf
    }
    for (const auto& [layer, parts] : gpt_oss_)
      for (int p = 0; p < 4; ++p) fused_.emplace(fused_expert_name(layer, p), std::pair{layer, p});
    if (hp_.architecture == "qwen3next") index_qwen3next_qkvz();
    if (hp_.architecture == "granitehybrid" && !granitehybrid_is_bamba(hp_)) index_granitehybrid_gate_up();
    if (hp_.mla_split) index_deepseek_kv_b();
    if (hp_.architecture == "apertus") index_xielu();
  }
  const GgufFile& file() const { return file_; }
  const GgufLlamaHParams& hparams() const { return hp_; }

 private:
  // apertus: xIELU's per-layer parameters travel as metadata (xielu.alpha_p / alpha_n / beta / eps --
  // without the architecture's prefix, as llama.cpp names them --, one value per layer or one for all,
  // as its get_key_or_arr reads them): presented as transformers' mlp.act_fn.* tensors.
  void index_xielu() {
    static constexpr const char* kKeys[4] = {"xielu.alpha_p", "xielu.alpha_n", "xielu.beta", "xielu.eps"};
    for (int i = 0; i < 4; ++i) {
      const std::string key = kKeys[i];
      const GgufValue* v = file_.find(key);
      if (!v) fail(file_.path(), "metadata key " + gguf_quote(key) + " missing (llama.cpp's apertus requires it)");
      std::vector<float> vals;
      if (v->type == GgufValueType::ARRAY) vals = file_.get_f32_array(key);
      else vals.assign(static_cast<size_t>(hp_.num_layers), file_.get_f32(key));
      if (static_cast<int64_t>(vals.size()) != hp_.num_layers)
        fail(file_.path(), "metadata key " + gguf_quote(key) + " holds " + std::to_string(vals.size()) +
                               " values; block_count is " + std::to_string(hp_.num_layers));
      for (int64_t l = 0; l < hp_.num_layers; ++l) {
        if (!std::isfinite(vals[static_cast<size_t>(l)]))
          fail(file_.path(), "metadata key " + gguf_quote(key) + " holds a non-finite value for layer " + std::to_string(l));
        scalars_.emplace(xielu_tensor_name(l, i), vals[static_cast<size_t>(l)]);
      }
    }
  }
  // Qwen3-Next: its converter splits in_proj_qkvz ((per key head q, k, v, z) rows) into attn_qkv
  // (all q, all k, all v) and attn_gate (z): presented as the one Linear again (PEFT's module),
  // under model.layers.N.linear_attn.in_proj_qkvz.weight.
  void index_qwen3next_qkvz() {
    for (int64_t l = 0; l < hp_.num_layers; ++l) {
      const std::string q = layer_tensor_name(l, "linear_attn.in_proj_qkv"), z = layer_tensor_name(l, "linear_attn.in_proj_z");
      auto qi = index_.find(q), zi = index_.find(z);
      if (qi == index_.end() || zi == index_.end()) continue;
      qkvz_.emplace(layer_tensor_name(l, "linear_attn.in_proj_qkvz"), std::pair{qi->second, zi->second});
      index_.erase(qi);
      index_.erase(zi);
    }
  }
  std::vector<float> qwen3next_qkvz(const GgufTensorInfo& qkv_t, const GgufTensorInfo& z_t) const {
    const std::vector<float> qkv = file_.tensor_to_f32(qkv_t), z = file_.tensor_to_f32(z_t);
    DeltaNetHeads h;
    h.key_heads = hp_.ssm_group_count;
    h.value_heads = hp_.ssm_time_step_rank;
    h.key_dim = hp_.ssm_state_size;
    h.value_dim = hp_.ssm_inner_size / hp_.ssm_time_step_rank;
    const int64_t C = hp_.hidden_size;
    const std::vector<int64_t> qkv_rows = qwen3next_split_rows(h, false), z_rows = qwen3next_split_rows(h, true);
    check(qkv.size() == qkv_rows.size() * static_cast<size_t>(C) && z.size() == z_rows.size() * static_cast<size_t>(C),
          file_.path(), "tensors '" + qkv_t.name + "' / '" + z_t.name + "' do not fit the ssm.* sizes");
    std::vector<float> out(qkv.size() + z.size());  // (each split row back in its place)
    for (size_t i = 0; i < qkv_rows.size(); ++i)
      std::copy(qkv.begin() + static_cast<int64_t>(i) * C, qkv.begin() + static_cast<int64_t>(i + 1) * C, out.begin() + qkv_rows[i] * C);
    for (size_t i = 0; i < z_rows.size(); ++i)
      std::copy(z.begin() + static_cast<int64_t>(i) * C, z.begin() + static_cast<int64_t>(i + 1) * C, out.begin() + z_rows[i] * C);
    return out;
  }
  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> qkvz_;

  // granitehybrid: its converter splits shared_mlp.input_linear (gate rows, then up rows) into
  // ffn_gate / ffn_up (ffn_gate_shexp / ffn_up_shexp beside experts): presented as the one Linear
  // again (transformers' and PEFT's module), mlp.gate_up_proj (mlp.shared_expert.gate_up_proj).
  void index_granitehybrid_gate_up() {
    for (int64_t l = 0; l < hp_.num_layers; ++l)
      for (const char* mlp : {"mlp.", "mlp.shared_expert."}) {
        const std::string p = std::string(mlp);
        auto gi = index_.find(layer_tensor_name(l, p + "gate_proj")), ui = index_.find(layer_tensor_name(l, p + "up_proj"));
        if (gi == index_.end() && ui == index_.end()) continue;
        if (gi == index_.end() || ui == index_.end())
          fail(file_.path(), "layer " + std::to_string(l) + " has only one of its MLP's gate and up tensors");
        if (gi->second->shape() != ui->second->shape())
          fail(file_.path(), "tensors '" + gi->second->name + "' and '" + ui->second->name + "' differ in shape");
        rows_.emplace(layer_tensor_name(l, p + "gate_up_proj"), std::pair{gi->second, ui->second});
        index_.erase(gi);
        index_.erase(ui);
      }
  }
  // Tensors made of two stacked on rows (the first's rows, then the second's).
  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> rows_;

  // deepseek2 (llama.cpp's MLA form): its converter splits kv_b_proj ((heads, nope + v, kv rank):
  // per head the key's nope rows, then the value's) into attn_k_b, each head's key part
  // transposed ((heads, kv rank, nope)), and attn_v_b ((heads, v, kv rank)): presented as the one
  // Linear again (transformers' and PEFT's module), under model.layers.N.self_attn.kv_b_proj.weight.
  void index_deepseek_kv_b() {
    for (int64_t l = 0; l < hp_.num_layers; ++l) {
      const std::string k = layer_tensor_name(l, "self_attn.k_b_proj"), v = layer_tensor_name(l, "self_attn.v_b_proj");
      auto ki = index_.find(k), vi = index_.find(v);
      if (ki == index_.end() && vi == index_.end()) continue;
      if (ki == index_.end() || vi == index_.end())
        fail(file_.path(), "layer " + std::to_string(l) + " has only one of attn_k_b and attn_v_b");
      const GgufTensorInfo &kt = *ki->second, &vt = *vi->second;
      const int64_t H = hp_.num_heads, R = hp_.kv_lora_rank, V = hp_.mla_value_dim, N = hp_.head_dim - hp_.rope_dim;
      check(kt.dims == std::vector<int64_t>{N, R, H} && vt.dims == std::vector<int64_t>{R, V, H}, file_.path(),
            "tensors '" + kt.name + "' / '" + vt.name + "' are not {" + std::to_string(N) + ", " + std::to_string(R) +
                ", " + std::to_string(H) + "} and {" + std::to_string(R) + ", " + std::to_string(V) + ", " +
                std::to_string(H) + "} (key_length_mla - rope dims, kv_lora_rank, heads; value_length_mla)");
      kv_b_.emplace(layer_tensor_name(l, "self_attn.kv_b_proj"), std::pair{&kt, &vt});
      index_.erase(ki);
      index_.erase(vi);
    }
  }
  std::vector<float> deepseek_kv_b(const GgufTensorInfo& kt, const GgufTensorInfo& vt) const {
    const std::vector<float> kb = file_.tensor_to_f32(kt), vb = file_.tensor_to_f32(vt);
    const int64_t H = hp_.num_heads, R = hp_.kv_lora_rank, V = hp_.mla_value_dim, N = hp_.head_dim - hp_.rope_dim;
    std::vector<float> out(static_cast<size_t>(H * (N + V) * R));
    for (int64_t h = 0; h < H; ++h) {
      float* rows = out.data() + h * (N + V) * R;
      for (int64_t c = 0; c < R; ++c)  // (k_b[h][c][i] is row i's column c)
        for (int64_t i = 0; i < N; ++i) rows[i * R + c] = kb[static_cast<size_t>((h * R + c) * N + i)];
      std::copy_n(vb.data() + h * V * R, V * R, rows + N * R);
    }
    return out;
  }
  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> kv_b_;

  // llama.cpp's ssm_a holds -exp(A_log) (its Mamba2 and DeltaNet converters both): back to A_log.
  void a_log_from_llama_cpp(const std::string& name, std::vector<float>& v) const {
    if (name.ends_with(".linear_attn.A_log"))
      for (float& x : v) {
        if (!(x < 0.0f)) fail(file_.path(), "tensor '" + name + "' (ssm_a, -exp(A_log)) holds a value that is not negative");
        x = std::log(-x);
      }
  }

  // qwen35 (convert_hf_to_gguf.py's Qwen3_5TextModel) stores the (1 + w) RMSNorms' weights as
  // 1 + w (not the gated DeltaNet's own norm), A_log as -exp(A_log), and the DeltaNet's value
  // heads tiled over the key heads: back to transformers' form.
  void delta_net_from_llama_cpp(const std::string& name, std::vector<float>& v) const {
    if (name.ends_with("norm.weight") && !name.ends_with(".linear_attn.norm.weight"))
      for (float& x : v) x -= 1.0f;
    a_log_from_llama_cpp(name, v);
    // (qwen3next keeps transformers' grouped value heads: llama.cpp repeats its keys interleaved)
    if (hp_.ssm_group_count <= 0 || hp_.ssm_time_step_rank <= 0 || hp_.architecture == "qwen3next") return;
    DeltaNetHeads h;
    h.key_heads = hp_.ssm_group_count;
    h.value_heads = hp_.ssm_time_step_rank;
    h.key_dim = hp_.ssm_state_size;
    h.value_dim = hp_.ssm_inner_size / hp_.ssm_time_step_rank;
    h.hidden = hp_.hidden_size;
    h.conv_kernel = hp_.ssm_conv_kernel;
    try {
      delta_net_tensor_heads(name, v, h, /*to_tiled=*/false);
    } catch (const Error& e) {
      fail(file_.path(), std::string("tensor '") + name + "': " + e.what());
    }
  }

 public:

  std::vector<std::string> names() const override {
    std::vector<std::string> n;
    for (const auto& [k, t] : index_) n.push_back(k);
    for (const auto& [k, t] : experts_) n.push_back(k);
    for (const auto& [k, t] : fused_) n.push_back(k);
    for (const auto& [k, t] : qkvz_) n.push_back(k);
    for (const auto& [k, t] : kv_b_) n.push_back(k);
    for (const auto& [k, t] : rows_) n.push_back(k);
    for (const auto& [k, v] : scalars_) n.push_back(k);
    return n;
  }
  bool has(const std::string& name) const override {
    return index_.count(name) != 0 || experts_.count(name) != 0 || fused_.count(name) != 0 || qkvz_.count(name) != 0 ||
           kv_b_.count(name) != 0 || rows_.count(name) != 0 || scalars_.count(name) != 0;
  }
  std::vector<int64_t> shape(const std::string& name) const override {
    if (scalars_.count(name))  // (xIELU's alpha_p / alpha_n (1), beta / eps 0-dimensional, as transformers has them)
      return name.ends_with(".beta") || name.ends_with(".eps") ? std::vector<int64_t>{} : std::vector<int64_t>{1};
    if (auto f = fused_.find(name); f != fused_.end()) {  // transformers' fused shapes
      const GgufTensorInfo& g = gpt_oss_part(f->second.first, 0, false);
      const GgufTensorInfo& d = gpt_oss_part(f->second.first, 2, false);
      const int64_t E = g.dims[2], C = g.dims[0], F = g.dims[1];
      check(d.dims.size() == 3 && d.dims[2] == E && d.dims[1] == C && d.dims[0] == F, file_.path(),
            "tensor '" + d.name + "' does not fit '" + g.name + "' (experts, rows, columns)");
      switch (f->second.second) {
        case 0: return {E, C, 2 * F};
        case 1: return {E, 2 * F};
        case 2: return {E, F, C};
        default: return {E, C};
      }
    }
    if (auto e = experts_.find(name); e != experts_.end()) {
      std::vector<int64_t> s = e->second.first->shape();  // (experts, rows, cols)
      return {s[1], s[2]};
    }
    if (auto z = qkvz_.find(name); z != qkvz_.end()) {  // (Qwen3-Next's in_proj_qkvz: q, k, v rows then z rows)
      const std::vector<int64_t> a = z->second.first->shape(), b = z->second.second->shape();
      return {a[0] + b[0], a[1]};
    }
    if (kv_b_.count(name)) return {hp_.num_heads * (hp_.head_dim - hp_.rope_dim + hp_.mla_value_dim), hp_.kv_lora_rank};
    if (auto r = rows_.find(name); r != rows_.end()) {
      const std::vector<int64_t> a = r->second.first->shape(), b = r->second.second->shape();
      return {a[0] + b[0], a[1]};
    }
    std::vector<int64_t> s = info(name).shape();
    // (granitehybrid's ssm_a and ssm_d, (heads, 1), and ssm_norm, (groups, inner / groups), are
    // transformers' vectors)
    if ((hp_.architecture == "granitehybrid" || is_nemotron_h_arch(hp_.architecture) || hp_.architecture == "mamba2") &&
        s.size() == 2 &&
        (name.ends_with(".linear_attn.A_log") || name.ends_with(".linear_attn.D") ||
         name.ends_with(".linear_attn.norm.weight")))
      return {s[0] * s[1]};
    // (qwen35's conv taps, (channels, kernel) in llama.cpp, are transformers' (channels, 1, kernel))
    if (s.size() == 2 && name.ends_with(".linear_attn.conv1d.weight")) s.insert(s.begin() + 1, 1);
    // (Qwen2-MoE's shared_expert_gate, (1, hidden) in transformers, is one row in llama.cpp)
    if (s.size() == 1 && name.ends_with(std::string(kMoeSharedGateModule) + ".weight")) s.insert(s.begin(), 1);
    return s;
  }
  std::vector<float> get(const std::string& name) const override {
    if (auto sc = scalars_.find(name); sc != scalars_.end()) return {sc->second};
    if (auto e = experts_.find(name); e != experts_.end())
      return file_.tensor_slice_to_f32(*e->second.first, e->second.second);
    if (fused_.count(name)) {
      std::vector<float> all;
      for (int64_t e = 0; e < shape(name)[0]; ++e) {
        const std::vector<float> s = get_slice(name, e);
        all.insert(all.end(), s.begin(), s.end());
      }
      return all;
    }
    if (auto z = qkvz_.find(name); z != qkvz_.end()) return qwen3next_qkvz(*z->second.first, *z->second.second);
    if (auto kv = kv_b_.find(name); kv != kv_b_.end()) return deepseek_kv_b(*kv->second.first, *kv->second.second);
    if (auto r = rows_.find(name); r != rows_.end()) {
      std::vector<float> v = gguf_tensor_to_f32_hf(file_, *r->second.first, hp_);
      const std::vector<float> b = gguf_tensor_to_f32_hf(file_, *r->second.second, hp_);
      v.insert(v.end(), b.begin(), b.end());
      return v;
    }
    std::vector<float> v = gguf_tensor_to_f32_hf(file_, info(name), hp_);
    if (hp_.architecture == "granitehybrid" || is_nemotron_h_arch(hp_.architecture) || hp_.architecture == "mamba2" ||
        hp_.architecture == "mamba" || hp_.architecture == "jamba")
      a_log_from_llama_cpp(name, v);
    // llama.cpp's converter stores Gemma's norm weights as 1 + w; the model applies the 1.
    // (and Nemotron's LayerNorm1P weights)
    if ((hp_.architecture == "gemma" || hp_.architecture == "gemma2" || hp_.architecture == "gemma3" ||
         hp_.architecture == "nemotron") &&
        name.ends_with("norm.weight"))
      for (float& x : v) x -= 1.0f;
    if (hp_.architecture == "qwen35" || hp_.architecture == "qwen35moe" || hp_.architecture == "qwen3next")
      delta_net_from_llama_cpp(name, v);
    return v;
  }
  // gpt-oss: expert e of transformers' fused tensors, made from llama.cpp's separate gate, up
  // and down exps (rows (experts, out, in)) and their (experts, out) biases: gate and up
  // interleaved by column, as GptOssExperts keeps them.
  std::vector<float> get_slice(const std::string& name, int64_t e) const override {
    auto f = fused_.find(name);
    if (f == fused_.end()) return TensorSource::get_slice(name, e);
    const int64_t layer = f->second.first;
    const std::vector<int64_t> s = shape(name);
    check(e >= 0 && e < s[0], file_.path(), "tensor '" + name + "' has no expert " + std::to_string(e));
    const int64_t C = shape(fused_expert_name(layer, 3))[1], F = shape(fused_expert_name(layer, 2))[1];
    switch (f->second.second) {
      case 0: {
        const std::vector<float> g = file_.tensor_slice_to_f32(gpt_oss_part(layer, 0, false), e),
                                 u = file_.tensor_slice_to_f32(gpt_oss_part(layer, 1, false), e);
        std::vector<float> out(static_cast<size_t>(C * 2 * F));
        for (int64_t r = 0; r < F; ++r)
          for (int64_t c = 0; c < C; ++c) {
            out[static_cast<size_t>(c * 2 * F + 2 * r)] = g[static_cast<size_t>(r * C + c)];
            out[static_cast<size_t>(c * 2 * F + 2 * r + 1)] = u[static_cast<size_t>(r * C + c)];
          }
        return out;
      }
      case 1: {
        const std::vector<float> g = file_.tensor_slice_to_f32(gpt_oss_part(layer, 0, true), e),
                                 u = file_.tensor_slice_to_f32(gpt_oss_part(layer, 1, true), e);
        std::vector<float> out(static_cast<size_t>(2 * F));
        for (int64_t r = 0; r < F; ++r) {
          out[static_cast<size_t>(2 * r)] = g[static_cast<size_t>(r)];
          out[static_cast<size_t>(2 * r + 1)] = u[static_cast<size_t>(r)];
        }
        return out;
      }
      case 2: {
        const std::vector<float> d = file_.tensor_slice_to_f32(gpt_oss_part(layer, 2, false), e);  // (C, F)
        std::vector<float> out(static_cast<size_t>(F * C));
        for (int64_t r = 0; r < C; ++r)
          for (int64_t c = 0; c < F; ++c) out[static_cast<size_t>(c * C + r)] = d[static_cast<size_t>(r * F + c)];
        return out;
      }
      default: return file_.tensor_slice_to_f32(gpt_oss_part(layer, 2, true), e);
    }
  }
  // A block Linear stored in a 4-bit GGML type with a 4-bit form (formats/ggml_as_4bit.h:
  // Q4_0, Q4_1, Q4_K, IQ4_NL, IQ4_XS, MXFP4) is used as stored, as a bitsandbytes checkpoint's
  // 4-bit weights are: re-quantizing it to NF4 would round every weight a second time. Rows
  // in llama.cpp's rope order are put back in Hugging Face's, as get() does.
  bool keeps_gguf_4bit(const std::string& name) const override {
    auto it = index_.find(name);
    if (it == index_.end()) return false;
    const GgufTensorInfo& t = *it->second;
    return t.dims.size() == 2 && ggml_type_keeps_as_4bit(t.type) && !reordered_by_get(name);
  }
  // For the weights kept as stored (get_4bit, get_q8_0_linear): which GGUF row each Hugging
  // Face row is (llama.cpp's rope order undone, as get() does), or empty when t is in HF order.
  std::vector<int64_t> hf_row_sources(const GgufTensorInfo& t) const {
    const std::optional<int64_t> heads = gguf_rope_permuted_heads(t, hp_);
    if (!heads) return {};
    const int64_t rows = t.shape()[0];
    std::vector<float> gguf_row(static_cast<size_t>(rows)), hf_src(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) gguf_row[static_cast<size_t>(r)] = static_cast<float>(r);
    try {
      unpermute_rope_rows(gguf_row, hf_src, rows, 1, *heads);  // HF row r <- GGUF row hf_src[r]
    } catch (const Error& e) {
      fail(file_.path(), "tensor " + gguf_quote(t.name) + ": " + e.what());
    }
    return {hf_src.begin(), hf_src.end()};
  }
  // qwen35's DeltaNet linears come in llama.cpp's tiled value-head order, which get() puts back
  // by rows and by column blocks: those are quantized from get()'s values, never kept as stored.
  bool reordered_by_get(const std::string& name) const {
    return (hp_.architecture == "qwen35" || hp_.architecture == "qwen35moe") && name.find(".linear_attn.") != std::string::npos;
  }
  std::optional<Quantized4bit> get_4bit(const std::string& name) const override {
    if (!keeps_gguf_4bit(name)) return std::nullopt;
    const GgufTensorInfo& t = info(name);
    const std::vector<int64_t> s = t.shape();
    std::optional<Quantized4bit> q =
        ggml_blocks_as_4bit(t.type, file_.tensor_data(t), s[0], s[1], ComputeDType::F32,
                            file_.path() + ": tensor " + gguf_quote(t.name));
    if (!q) return std::nullopt;
    if (const std::vector<int64_t> src = hf_row_sources(t); !src.empty()) q = permute_4bit_rows(*q, src);
    return q;
  }
  bool keeps_gguf_blocks(const std::string& name) const override {
    auto it = index_.find(name);
    if (it == index_.end() || it->second->dims.size() != 2) return false;
    const GgmlType ty = it->second->type;
    if (ty != GgmlType::Q8_0 && !kernels::block_rows_supported(ty)) return false;
    return !reordered_by_get(name);
  }
  std::optional<std::vector<uint8_t>> get_q8_0_linear(const std::string& name) const override {
    if (!keeps_gguf_blocks(name)) return std::nullopt;
    const GgufTensorInfo& t = info(name);
    if (t.type == GgmlType::Q8_0) return rows_as_stored(t, file_.tensor_data(t));
    if (t.type != GgmlType::Q5_0) return std::nullopt;
    const std::vector<uint8_t> q8 = q5_0_as_q8_0(file_.tensor_data(t));
    return rows_as_stored(t, q8);
  }
  std::optional<GgmlType> gguf_block_type(const std::string& name) const override {
    if (!keeps_gguf_blocks(name)) return std::nullopt;
    return info(name).type;
  }
  std::optional<GgufBlocks> get_gguf_blocks(const std::string& name) const override {
    if (!keeps_gguf_blocks(name) || info(name).type == GgmlType::Q8_0) return std::nullopt;
    const GgufTensorInfo& t = info(name);
    return GgufBlocks{t.type, rows_as_stored(t, file_.tensor_data(t))};
  }
  // `data` (t's rows, whole blocks each, in the file's order) with the rows in Hugging Face's order.
  std::vector<uint8_t> rows_as_stored(const GgufTensorInfo& t, std::span<const uint8_t> data) const {
    std::vector<uint8_t> out(data.begin(), data.end());
    if (const std::vector<int64_t> src = hf_row_sources(t); !src.empty()) {
      const size_t row_bytes = data.size() / src.size();
      for (size_t r = 0; r < src.size(); ++r)
        std::memcpy(out.data() + r * row_bytes, data.data() + static_cast<size_t>(src[r]) * row_bytes, row_bytes);
    }
    return out;
  }
  std::optional<std::span<const uint8_t>> get_q8_0(const std::string& name) const override {
    const GgufTensorInfo& t = info(name);
    if (t.type != GgmlType::Q8_0) return std::nullopt;
    return file_.tensor_data(t);
  }
  bool stored_quantized(const std::string& name) const override {
    if (index_.find(name) == index_.end()) return false;
    const GgmlType t = info(name).type;
    return t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16 && t != GgmlType::Q8_0;
  }
  std::optional<StoredBlocks> get_stored_blocks(const std::string& name) const override {
    const GgufTensorInfo* t = row_table(name);
    if (!t || !stored_quantized(name)) return std::nullopt;
    return StoredBlocks{t->type, file_.tensor_data(*t)};
  }
  std::optional<ComputeDType> stored_16bit(const std::string& name) const override {
    const GgufTensorInfo* t = row_table(name);
    if (!t) return std::nullopt;
    if (t->type == GgmlType::BF16) return ComputeDType::BF16;
    if (t->type == GgmlType::F16) return ComputeDType::F16;
    return std::nullopt;
  }
  bool reads_rows(const std::string& name) const override {
    const GgufTensorInfo* t = row_table(name);
    return t && ggml_traits(t->type).can_dequantize;
  }
  void get_rows(const std::string& name, int64_t r0, int64_t r1, float* out) const override {
    if (!reads_rows(name)) return TensorSource::get_rows(name, r0, r1, out);
    const GgufTensorInfo& t = *row_table(name);
    const std::vector<int64_t> s = t.shape();
    check(0 <= r0 && r0 <= r1 && r1 <= s[0], file_.path(),
          "tensor " + gguf_quote(t.name) + " " + shape_to_string(s) + " has no rows " + std::to_string(r0) + ".." +
              std::to_string(r1));
    const std::span<const uint8_t> all = file_.tensor_data(t);
    const size_t row_bytes = all.size() / static_cast<size_t>(s[0]);
    dequantize(t.type, all.subspan(static_cast<size_t>(r0) * row_bytes, static_cast<size_t>(r1 - r0) * row_bytes),
               std::span<float>(out, static_cast<size_t>((r1 - r0) * s[1])), file_.path() + ": tensor " + gguf_quote(t.name));
  }
  std::string describe() const override { return file_.path(); }
  std::string stored_name(const std::string& name) const override {
    if (auto f = fused_.find(name); f != fused_.end())
      return "blk." + std::to_string(f->second.first) + ".ffn_{gate,up,down}_exps (" + name + ")";
    if (auto e = experts_.find(name); e != experts_.end())
      return e->second.first->name + " [expert " + std::to_string(e->second.second) + "]";
    auto it = index_.find(name);
    return it == index_.end() ? name : it->second->name;
  }
  std::vector<std::string> unmapped_names() const override { return unmapped_; }

 private:
  // blk.<n>.* with n past the model's layers (nextn_predict_layers' blocks).
  bool mtp_block(const std::string& name) const {
    if (!name.starts_with("blk.")) return false;
    const size_t dot = name.find('.', 4);
    const std::string n = name.substr(4, dot == std::string::npos ? std::string::npos : dot - 4);
    if (n.empty() || n.size() > 9 || n.find_first_not_of("0123456789") != std::string::npos) return false;
    return std::stoll(n) >= hp_.num_layers;
  }
  // The tensors get() hands out as the plain dequantization of their rows in the file's
  // order (no family transforms them, their rows are never reordered): the token embedding,
  // Gemma 4's per-layer one and the output head, when 2-D; null for any other.
  const GgufTensorInfo* row_table(const std::string& name) const {
    if (name != "model.embed_tokens.weight" && name != "lm_head.weight" && name != "model.embed_tokens_per_layer.weight")
      return nullptr;
    auto it = index_.find(name);
    if (it == index_.end() || it->second->dims.size() != 2 || !hf_row_sources(*it->second).empty()) return nullptr;
    return it->second;
  }
  const GgufTensorInfo& info(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail(file_.path(), "no tensor named '" + name + "'");
    return *it->second;
  }
  // llama.cpp's 3-D expert tensors, blk.N.ffn_{gate,up,down}_exps.weight ((experts, rows,
  // cols)): each expert's slice under model.layers.N.mlp.experts.E.<part>_proj.weight.
  bool index_experts(const GgufTensorInfo& t) {
    constexpr std::string_view kBlk = "blk.";
    if (!t.name.starts_with(kBlk) || t.dims.size() != 3) return false;
    const size_t dot = t.name.find('.', kBlk.size());
    if (dot == std::string::npos) return false;
    const std::string layer = t.name.substr(kBlk.size(), dot - kBlk.size());
    const std::string rest = t.name.substr(dot + 1);
    if (layer.empty() || layer.find_first_not_of("0123456789") != std::string::npos) return false;
    for (int part = 0; part < 3; ++part) {
      static constexpr const char* kGguf[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"};
      if (rest != kGguf[part]) continue;
      const int64_t l = std::stoll(layer);
      for (int64_t e = 0; e < t.dims[2]; ++e) experts_.emplace(layer_tensor_name(l, expert_module(e, part)), std::pair{&t, e});
      return true;
    }
    return false;
  }
  // gpt-oss: blk.N.attn_sinks.weight (transformers' self_attn.sinks, no suffix) and the
  // 3-D ffn_{gate,up,down}_exps with their biases, kept per layer for get_slice.
  bool index_gpt_oss(const GgufTensorInfo& t) {
    constexpr std::string_view kBlk = "blk.";
    if (!t.name.starts_with(kBlk)) return false;
    const size_t dot = t.name.find('.', kBlk.size());
    if (dot == std::string::npos) return false;
    const std::string layer = t.name.substr(kBlk.size(), dot - kBlk.size()), rest = t.name.substr(dot + 1);
    if (layer.empty() || layer.find_first_not_of("0123456789") != std::string::npos || layer.size() > 6) return false;
    const int64_t l = std::stoll(layer);
    if (rest == "attn_sinks.weight") {
      index_.emplace("model.layers." + layer + ".self_attn.sinks", &t);
      return true;
    }
    static constexpr const char* kParts[3] = {"ffn_gate_exps.", "ffn_up_exps.", "ffn_down_exps."};
    for (int p = 0; p < 3; ++p)
      for (int bias = 0; bias < 2; ++bias)
        if (rest == std::string(kParts[p]) + (bias ? "bias" : "weight")) {
          check(t.dims.size() == (bias ? 2u : 3u), file_.path(), "tensor '" + t.name + "' has an unexpected rank");
          gpt_oss_[l][static_cast<size_t>(p * 2 + bias)] = &t;
          return true;
        }
    return false;
  }
  const GgufTensorInfo& gpt_oss_part(int64_t layer, int part, bool bias) const {
    auto it = gpt_oss_.find(layer);
    const GgufTensorInfo* t = it == gpt_oss_.end() ? nullptr : it->second[static_cast<size_t>(part * 2 + bias)];
    static constexpr const char* kParts[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    if (!t)
      fail(file_.path(), "missing tensor 'blk." + std::to_string(layer) + "." + kParts[part] + (bias ? ".bias'" : ".weight'") +
                             " (a gpt-oss layer's experts)");
    return *t;
  }
  GgufFile file_;
  GgufLlamaHParams hp_;
  std::map<int64_t, std::array<const GgufTensorInfo*, 6>> gpt_oss_;  // layer -> gate, up, down (weight, bias)
  std::map<std::string, std::pair<int64_t, int>> fused_;              // fused name -> (layer, part)
  std::map<std::string, const GgufTensorInfo*> index_;
  std::map<std::string, std::pair<const GgufTensorInfo*, int64_t>> experts_;
  std::map<std::string, float> scalars_;  // (apertus: xIELU's metadata as mlp.act_fn.* values)
  std::vector<std::string> unmapped_;  // GGUF names with no Hugging Face counterpart
};

ModelSpec spec_from_gguf(const GgufSource& src) {
  const GgufLlamaHParams& hp = src.hparams();
  const std::string& where = src.describe();
  // (read_gguf_llama_hparams already refused other architectures: one list, in gguf.h.)
  if (!gguf_architecture_supported(hp.architecture))
    fail(where, "GGUF architecture '" + hp.architecture + "' is not supported (supported: " +
                    gguf_supported_architectures() + ")");
  // The registry's family for this architecture (gguf_architecture_supported() said there is one).
  const ModelFamily* fam = find_family_by_gguf_arch(hp.architecture);
  // (a granitehybrid GGUF made from Bamba rotates half of each head: the family becomes bamba)
  if (hp.rope_dim != hp.head_dim && !(fam && fam->partial_rotary) && hp.kv_lora_rank == 0 &&
      !granitehybrid_is_bamba(hp))
    fail(where, "partial rotary embeddings (rope dimension " + std::to_string(hp.rope_dim) + " of head dimension " +
                    std::to_string(hp.head_dim) + ") are not supported for " + hp.architecture);
  if ((!hp.kv_heads_per_layer.empty() || !hp.ffn_per_layer.empty()) && hp.architecture != "gemma4")
    fail(where, hp.architecture + ".attention.head_count_kv / feed_forward_length differ per layer, which only gemma4 "
                "GGUFs do here");
  ModelSpec s;
  if (hp.rope_dim != hp.head_dim) s.rotary_dim = hp.rope_dim;
  s.family = fam ? std::string(fam->model_type) : hp.architecture;
  s.hidden = hp.hidden_size;
  s.n_layers = hp.num_layers;
  s.n_heads = hp.num_heads;
  s.n_kv_heads = hp.num_kv_heads;
  s.head_dim = hp.head_dim;
  s.ffn = hp.intermediate_size;
  s.vocab = hp.vocab_size;
  s.max_positions = hp.context_length;
  s.rope_theta = hp.rope_theta;
  s.norm_eps = hp.rms_norm_eps;
  s.tied_embeddings = hp.tie_word_embeddings;
  // (any layer's: a hybrid's first layer may have no attention or MLP -- Nemotron-H's)
  for (int64_t l = 0; l < s.n_layers; ++l) {
    s.qkv_bias = s.qkv_bias || src.has(layer_tensor_name(l, "self_attn.q_proj", "bias")) ||
                 src.has(layer_tensor_name(l, "self_attn.qkv_proj", "bias"));
    s.o_bias = s.o_bias || src.has(layer_tensor_name(l, "self_attn.o_proj", "bias"));
    s.mlp_bias = s.mlp_bias || src.has(layer_tensor_name(l, "mlp.gate_proj", "bias")) ||
                 src.has(layer_tensor_name(l, "mlp.up_proj", "bias"));
  }
  s.head_bias = src.has("lm_head.bias");  // (llama.cpp's output.bias: phi2)
  if (hp.rope_scaling_type == "linear") {
    s.rope_scaling.type = RopeScaling::Type::Linear;
    s.rope_scaling.factor = hp.rope_scaling_factor;
  } else if (hp.rope_scaling_type == "yarn") {  // llama.cpp's defaults: beta 32 / 1, mscale 0.1 ln(s) + 1
    s.rope_scaling.type = RopeScaling::Type::Yarn;
    s.rope_scaling.factor = hp.rope_scaling_factor;
    s.rope_scaling.original_max_positions = hp.rope_scaling_original_context;
    s.rope_scaling.attention_factor =
        hp.rope_scaling_factor <= 1.0f ? 1.0f : static_cast<float>(0.1 * std::log(hp.rope_scaling_factor) + 1.0);
    if (hp.yarn_beta_fast > 0.0f) s.rope_scaling.beta_fast = hp.yarn_beta_fast;
    if (hp.yarn_beta_slow > 0.0f) s.rope_scaling.beta_slow = hp.yarn_beta_slow;
  }
  // llama.cpp's llama3 scaling: per-frequency divisors in a tensor.
  if (const GgufTensorInfo* rf = src.file().find_tensor("rope_freqs.weight")) {
    if (s.rope_scaling.type != RopeScaling::Type::None)
      fail(where, "has both rope_freqs.weight and " + hp.rope_scaling_type + " rope scaling metadata");
    std::vector<float> f = src.file().tensor_to_f32(*rf);
    if (static_cast<int64_t>(f.size()) != hp.head_dim / 2)
      fail(where, "rope_freqs.weight has " + std::to_string(f.size()) + " values; the head size " +
                      std::to_string(hp.head_dim) + " needs " + std::to_string(hp.head_dim / 2));
    for (float v : f)
      if (!(v > 0.0f) || !std::isfinite(v)) fail(where, "rope_freqs.weight holds a value that is not positive");
    s.rope_scaling.type = RopeScaling::Type::Factors;
    s.rope_scaling.freq_factors = std::move(f);
  }
  // phi3's LongRope: short and long factors as tensors (convert_hf_to_gguf.py's Phi3MiniModel).
  const GgufTensorInfo* fl = src.file().find_tensor("rope_factors_long.weight");
  const GgufTensorInfo* fs_ = src.file().find_tensor("rope_factors_short.weight");
  if (fl || fs_) {
    if (!fl || !fs_) fail(where, "has only one of rope_factors_long.weight and rope_factors_short.weight");
    if (s.rope_scaling.type != RopeScaling::Type::None)
      fail(where, "has both longrope factor tensors and other rope scaling");
    RopeScaling& rs = s.rope_scaling;
    rs.type = RopeScaling::Type::LongRope;
    rs.long_factor = src.file().tensor_to_f32(*fl);
    rs.short_factor = src.file().tensor_to_f32(*fs_);
    for (const auto* f : {&rs.long_factor, &rs.short_factor})
      for (float v : *f)
        if (!(v > 0.0f) || !std::isfinite(v)) fail(where, "a longrope factor tensor holds a value that is not positive");
    rs.original_max_positions = hp.rope_scaling_original_context;
    if (rs.original_max_positions <= 0)
      fail(where, "longrope factors need " + hp.architecture + ".rope.scaling.original_context_length");
    const double factor = static_cast<double>(hp.context_length) / static_cast<double>(rs.original_max_positions);
    rs.factor = static_cast<float>(factor);
    rs.attention_factor =
        hp.rope_scaling_attn_factor > 0.0f ? hp.rope_scaling_attn_factor
        : factor <= 1.0 ? 1.0f
                        : static_cast<float>(std::sqrt(1.0 + std::log(factor) /
                                                                 std::log(static_cast<double>(rs.original_max_positions))));
  }
  if (hp.expert_count > 0) {  // mixture of experts: the experts' width from their tensors
    s.n_experts = hp.expert_count;
    s.experts_per_token = hp.expert_used_count;
    std::string g0 = layer_tensor_name(0, expert_module(0, 0));
    if (hp.architecture == "gpt-oss" && src.has(fused_expert_name(0, 0))) {  // (presented fused: GgufSource)
      s.expert_ffn = src.shape(fused_expert_name(0, 0))[2] / 2;
      s.ffn = s.expert_ffn;
    } else if (hp.architecture == "nemotron_h_moe") {  // (ungated: ffn_up_exps at the first MLP layer)
      int64_t l0 = 0;
      while (l0 + 1 < hp.num_layers && !(l0 < static_cast<int64_t>(hp.mlp_layers.size()) && hp.mlp_layers[l0])) ++l0;
      const std::string u0 = layer_tensor_name(l0, expert_module(0, 1));
      if (!src.has(u0))
        fail(where, "expert_count is " + std::to_string(hp.expert_count) + " but layer " + std::to_string(l0) +
                        " has no blk." + std::to_string(l0) + ".ffn_up_exps.weight");
      s.expert_ffn = src.shape(u0)[0];
      s.moe_ungated = true;
    } else if (hp.architecture == "gemma4") {  // (ffn_gate_up_exps as transformers' (E, 2F, C); the dense MLP beside)
      if (!src.has(fused_expert_name(0, 0)))
        fail(where, "expert_count is " + std::to_string(hp.expert_count) + " but there is no blk.0.ffn_gate_up_exps.weight");
      s.expert_ffn = src.shape(fused_expert_name(0, 0))[1] / 2;
    } else {
      // (the first MoE layer: GLM-4.5's after its dense lead, Llama 4 Maverick's every second)
      int64_t l0 = hp.leading_dense_blocks > 0 && hp.leading_dense_blocks < hp.num_layers ? hp.leading_dense_blocks : 0;
      if (hp.architecture == "llama4" && hp.moe_layer_step > 1 && hp.moe_layer_step <= hp.num_layers)
        l0 = hp.moe_layer_step - 1;
      if (!hp.moe_layers.empty())  // (jamba: the experts every few layers)
        l0 = std::find(hp.moe_layers.begin(), hp.moe_layers.end(), true) - hp.moe_layers.begin();
      if (l0 >= hp.num_layers) fail(where, "expert_count is " + std::to_string(hp.expert_count) + " but no layer has experts");
      g0 = layer_tensor_name(l0, expert_module(0, 0));
      if (!src.has(g0))
        fail(where, "expert_count is " + std::to_string(hp.expert_count) +
                        " but there are no expert tensors (blk.0.ffn_gate_exps.weight; GGUFs of early 2024 kept "
                        "one tensor per expert, blk.N.ffn_gate.E, which llama.cpp no longer reads either: convert "
                        "the model again with its current convert_hf_to_gguf.py)");
      s.expert_ffn = src.shape(g0)[0];
      s.shared_expert = src.has(layer_tensor_name(l0, "mlp.shared_expert.gate_proj"));
      if (s.shared_expert && hp.expert_shared_ffn > 0) s.ffn = hp.expert_shared_ffn;
      if (!s.shared_expert) s.ffn = s.expert_ffn;
    }
    if (hp.architecture == "llama") s.family = "mixtral";  // (llama.cpp's llama graph with experts)
  }
  if (fam && fam->read_gguf)
    fam->read_gguf(hp, s);  // the family's own metadata (formats/families/)
  // (llama.cpp's jamba never renormalizes, whatever the file says)
  if (s.moe() && hp.expert_weights_norm >= 0 && hp.architecture != "jamba") s.norm_topk = hp.expert_weights_norm == 1;
  const GgufTokenizerInfo tk = read_gguf_tokenizer(src.file());
  if (tk.bos_id) s.bos_id = static_cast<int>(*tk.bos_id);
  if (tk.eos_id) s.eos_ids = {static_cast<int>(*tk.eos_id)};
  if (tk.pad_id) s.pad_id = static_cast<int>(*tk.pad_id);
  s.validate(where);
  return s;
}

std::unique_ptr<Tokenizer> gguf_tokenizer(const GgufFile& f) {
  const GgufTokenizerInfo info = read_gguf_tokenizer(f);
  GgufTokenizerMetadata md;
  md.source = f.path();
  md.model = info.model;
  md.pre = info.pre;
  md.tokens = info.tokens;
  md.scores = info.scores;
  md.token_types = info.token_types;
  md.merges = info.merges;
  md.bos_token_id = info.bos_id;
  md.eos_token_id = info.eos_id;
  md.unknown_token_id = info.unk_id;
  md.padding_token_id = info.pad_id;
  if (f.has("tokenizer.ggml.eot_token_id")) md.eot_token_id = f.get_i64("tokenizer.ggml.eot_token_id");
  if (f.has("tokenizer.ggml.eom_token_id")) md.eom_token_id = f.get_i64("tokenizer.ggml.eom_token_id");
  md.add_bos_token = info.add_bos;
  md.add_eos_token = info.add_eos;
  md.add_space_prefix = info.add_space_prefix;
  if (info.chat_template) md.chat_template = *info.chat_template;
  return std::make_unique<Tokenizer>(tokenizer_spec_from_gguf_metadata(md));
}

std::unique_ptr<Tokenizer> tokenizer_from_path(const std::string& path, int64_t vocab) {
  if (!fs::exists(path)) fail(path, "tokenizer not found (no such file or directory)");
  if (ends_with(path, ".gguf") || first_bytes(path, 4) == "GGUF") {
    GgufFile f(path);
    return gguf_tokenizer(f);
  }
  if (ends_with(path, ".bin"))
    return std::make_unique<Tokenizer>(load_llama2c_tokenizer(path, static_cast<int32_t>(vocab)));
  return std::make_unique<Tokenizer>(Tokenizer::from_file(path));
}

void merge_eos(ModelSpec& spec, const std::vector<int>& ids) {
  for (int id : ids)
    if (id < spec.vocab && std::find(spec.eos_ids.begin(), spec.eos_ids.end(), id) == spec.eos_ids.end())
      spec.eos_ids.push_back(id);
}

}  // namespace

ModelFormat detect_model_format(const std::string& path) {
  if (is_random_model(path)) return ModelFormat::Random;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, "no such file or directory");
  if (fs::is_directory(path, ec)) {
    if (!fs::exists(fs::path(path) / "config.json"))
      fail(path, "not a Hugging Face model directory (no config.json)");
    return ModelFormat::HfDirectory;
  }
  const std::string head = first_bytes(path, 8);
  if (head.size() >= 4 && head.compare(0, 4, "GGUF") == 0) return ModelFormat::Gguf;
  if (ends_with(path, ".gguf")) fail(path, "not a GGUF file (bad magic)");
  if (ends_with(path, ".safetensors")) return ModelFormat::SafeTensors;
  if (head.size() >= 2 && head.compare(0, 2, "PK") == 0)
    fail(path, "PyTorch pickle checkpoints are not supported; use the safetensors version of the model");
  if (ends_with(path, ".bin") || looks_like_llama2c(path)) return ModelFormat::Llama2c;
  fail(path, "unknown model format (expected a Hugging Face directory, .safetensors, .gguf or llama2.c .bin)");
}

ModelFiles open_model_files(const std::string& path, const std::string& tokenizer_path, bool load_tokenizer) {
  ModelFiles m;
  m.path = path;
  m.format = detect_model_format(path);
  std::string tok_path = tokenizer_path;
  switch (m.format) {
    case ModelFormat::HfDirectory:
    case ModelFormat::SafeTensors: {
      const fs::path dir = m.format == ModelFormat::HfDirectory ? fs::path(path) : fs::path(path).parent_path();
      const std::string config = (dir / "config.json").string();
      if (!fs::exists(config)) fail(path, "no config.json next to the weights (needed for the architecture)");
      m.spec = read_hf_config(config);
      const std::optional<Fp8BlockScheme> fp8 = checkpoint_fp8_scheme(read_config_json(config), config);
      std::vector<std::string> files;
      if (m.format == ModelFormat::HfDirectory) {
        if (!fs::exists(dir / "model.safetensors") && !fs::exists(dir / "model.safetensors.index.json")) {
          bool any = false;
          for (const auto& e : fs::directory_iterator(dir)) any = any || e.path().extension() == ".safetensors";
          if (!any) fail(path, "no .safetensors weights in the directory (PyTorch .bin weights are not supported)");
        }
        files = safetensors_files_of(path);
      } else {
        files = {path};
      }
      m.tensors = make_safetensors_source(files, path, fp8);
      if (!m.spec.hf_wrapper.empty()) {
        m.tensors = make_wrapped_source(std::move(m.tensors));
        // transformers ties the wrapper model's lm_head by the outer flag, unless the file
        // holds a head of its own (Mistral Small 3.1: the flag defaults to true, the head is stored).
        if (m.spec.tied_embeddings && m.tensors->has("lm_head.weight")) m.spec.tied_embeddings = false;
      }
      if (const ModelFamily* fam = find_family(m.spec.family);
          fam && (!fam->renames(m.spec).empty() || fam->conv1d_linears))
        m.tensors = std::make_unique<RenamedSource>(std::move(m.tensors), *fam, m.spec);
      const std::string gen = (dir / "generation_config.json").string();
      if (fs::exists(gen)) m.generation = read_generation_config(gen);
      if (tok_path.empty() && (fs::exists(dir / "tokenizer.json") ||
                               (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt"))))
        tok_path = dir.string();  // (GPT-2's original vocab.json + merges.txt: formats/tokenizer_json.h)
      break;
    }
    case ModelFormat::Gguf: {
      auto src = std::make_unique<GgufSource>(path);
      m.spec = spec_from_gguf(*src);
      if (tok_path.empty() && load_tokenizer) m.tokenizer = gguf_tokenizer(src->file());
      m.tensors = std::move(src);
      break;
    }
    case ModelFormat::Llama2c: {
      auto src = std::make_unique<Llama2cModel>(path);
      m.spec = src->spec();
      if (tok_path.empty()) {
        const fs::path dir = fs::path(path).parent_path();
        for (const std::string& name : {std::string("tokenizer.bin"), "tok" + std::to_string(m.spec.vocab) + ".bin"})
          if (fs::exists(dir / name)) {
            tok_path = (dir / name).string();
            break;
          }
      }
      m.tensors = std::move(src);
      break;
    }
    case ModelFormat::Random: {
      // Only the shape is worked out here: the weights are generated by Model::load.
      const RandomModelSpec r = parse_random_model(path);
      m.path = r.canonical;
      m.spec = r.spec;
      m.notice = random_model_notice(r);
      m.tensors = std::make_unique<RandomTensorSource>(r.spec, r.seed, r.canonical);
      if (!load_tokenizer) {
      } else if (tok_path.empty()) {
        m.tokenizer = std::make_unique<Tokenizer>(byte_tokenizer_spec(r.spec.vocab, path));
      } else {
        // The model's specials are the tokenizer's (the spec assumed the byte tokenizer's).
        m.tokenizer = tokenizer_from_path(tok_path, m.spec.vocab);
        m.spec.bos_id = m.tokenizer->bos_id();
        m.spec.eos_ids.clear();
        if (m.tokenizer->eos_id() >= 0) m.spec.eos_ids.push_back(m.tokenizer->eos_id());
        for (int32_t id : m.tokenizer->spec().eog_ids) merge_eos(m.spec, {static_cast<int>(id)});
      }
      break;
    }
  }
  if (!m.tokenizer && !tok_path.empty() && load_tokenizer) m.tokenizer = tokenizer_from_path(tok_path, m.spec.vocab);
  if (m.tokenizer) {
    m.chat_template = m.tokenizer->chat_template();
    if (m.tokenizer->vocab_size() > m.spec.vocab)
      fail(tok_path.empty() ? path : tok_path,
           "the tokenizer has " + std::to_string(m.tokenizer->vocab_size()) + " tokens but the model only " +
               std::to_string(m.spec.vocab));
  }
  merge_eos(m.spec, m.generation.eos_ids);
  if (m.generation.bos_id && m.spec.bos_id < 0) m.spec.bos_id = *m.generation.bos_id;
  return m;
}

}  // namespace qlora
