// Vision-language checkpoints' language models (formats/hf_wrapper.h).
#include "formats/hf_wrapper.h"

#include <array>
#include <map>
#include <set>

#include "model/tensor_source.h"

namespace qlora {

namespace {

// transformers' classes: Gemma3Config (tie_word_embeddings True), Mistral3Config (True),
// LlavaConfig (False, text_config a LlamaConfig by default).
constexpr std::array<HfWrapper, 10> kWrappers = {{
    {"gemma3", "gemma3_text", true},
    {"mistral3", "mistral", true},
    {"llava", "llama", false},
    // Qwen2_5_VLConfig / Qwen3VLConfig (tie_word_embeddings false)
    {"qwen2_5_vl", "qwen2_5_vl_text", false, "qwen2_5_vl_text", "qwen2", true},
    {"qwen3_vl", "qwen3_vl_text", false, "qwen3_vl_text", "qwen3", false},
    // Qwen3_5Config (tie_word_embeddings false; the small ones' files say true)
    {"qwen3_5", "qwen3_5_text", false},
    {"qwen3_5_moe", "qwen3_5_moe_text", false},
    // Gemma4Config (tie_word_embeddings True)
    {"gemma4", "gemma4_text", true},
    // Llama4Config (tie_word_embeddings False): Llama 4 Scout / Maverick as released
    {"llama4", "llama4_text", false, {}, {}, false, true},
    // Lfm2VlConfig (tie_word_embeddings True): LFM2-VL 450M / 1.6B / 3B, LFM2.5-VL
    {"lfm2_vl", "lfm2", true},
}};

// The other parts' prefixes (with or without "model."): never the language model's.
constexpr std::string_view kOtherParts[] = {"visual.",       "vision_tower.", "multi_modal_projector.", "vision_model.",
                                            "image_newline", "embed_vision.", "audio_tower.",           "embed_audio."};

constexpr std::string_view kHubModel = "language_model.model.";  // the files' form
constexpr std::string_view kModuleModel = "model.language_model.";  // transformers' module paths
constexpr std::string_view kHubHead = "language_model.lm_head";

// "model.X" -> X, or nullopt.
std::optional<std::string_view> after_model(std::string_view text) {
  constexpr std::string_view m = "model.";
  if (!text.starts_with(m)) return std::nullopt;
  return text.substr(m.size());
}

}  // namespace

const HfWrapper* find_hf_wrapper(std::string_view model_type) {
  for (const HfWrapper& w : kWrappers)
    if (w.model_type == model_type) return &w;
  return nullptr;
}

std::string hf_wrapper_types() {
  std::string s;
  for (const HfWrapper& w : kWrappers) s += (s.empty() ? "" : ", ") + std::string(w.model_type);
  return s;
}

std::optional<std::string> wrapped_path_to_text(std::string_view p) {
  if (p.starts_with(kHubModel)) return "model." + std::string(p.substr(kHubModel.size()));
  if (p.starts_with(kModuleModel)) return "model." + std::string(p.substr(kModuleModel.size()));
  if (p == kHubHead || p.starts_with(std::string(kHubHead) + ".")) return std::string(p.substr(std::string_view("language_model.").size()));
  if (p == "lm_head" || p.starts_with("lm_head.")) return std::string(p);
  // Qwen2.5-VL's files: the language model under plain "model.", the vision tower beside it
  if (p.starts_with("model.")) {
    const std::string_view rest = p.substr(6);
    for (std::string_view o : kOtherParts)
      if (rest.starts_with(o)) return std::nullopt;
    return std::string(p);
  }
  return std::nullopt;
}

std::optional<std::string> wrapped_to_text_name(std::string_view stored) { return wrapped_path_to_text(stored); }

std::string text_to_wrapped_path(const std::string& text_name) {
  if (auto rest = after_model(text_name)) return std::string(kModuleModel) + std::string(*rest);
  return text_name;
}

std::string text_to_wrapped_path(const std::string& text_name, std::string_view wrapper_type) {
  const HfWrapper* w = find_hf_wrapper(wrapper_type);
  if (!w || !w->hub_module_paths) return text_to_wrapped_path(text_name);
  if (auto rest = after_model(text_name)) return std::string(kHubModel) + std::string(*rest);
  if (text_name.starts_with("lm_head")) return "language_model." + text_name;
  return text_name;
}

std::string text_to_wrapped_file_name(const std::string& text_name, const std::string& stored_embed) {
  if (stored_embed.starts_with(kHubModel)) {  // gemma3 / mistral3 / llava as saved
    if (auto rest = after_model(text_name)) return std::string(kHubModel) + std::string(*rest);
    if (text_name.starts_with("lm_head")) return "language_model." + text_name;
    return text_name;
  }
  if (stored_embed.starts_with(kModuleModel)) return text_to_wrapped_path(text_name);  // (lm_head stays)
  return text_name;  // Qwen2.5-VL's plain names
}

namespace {

class WrappedSource : public TensorSource {
 public:
  explicit WrappedSource(std::unique_ptr<TensorSource> inner) : inner_(std::move(inner)) {
    for (const std::string& n : inner_->names()) {
      if (auto t = wrapped_to_text_name(n)) text_[*t] = n;
      else other_.insert(n);
    }
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> n;
    for (const auto& [t, stored] : text_) n.push_back(t);
    return n;
  }
  bool has(const std::string& name) const override { return text_.count(name) != 0 || is_other(name); }
  std::vector<int64_t> shape(const std::string& name) const override { return inner_->shape(stored(name)); }
  std::vector<float> get(const std::string& name) const override { return inner_->get(stored(name)); }
  std::optional<Quantized4bit> get_4bit(const std::string& name) const override { return inner_->get_4bit(stored(name)); }
  bool keeps_gguf_4bit(const std::string& name) const override { return inner_->keeps_gguf_4bit(stored(name)); }
  bool keeps_gguf_blocks(const std::string& name) const override { return inner_->keeps_gguf_blocks(stored(name)); }
  std::optional<GgmlType> gguf_block_type(const std::string& name) const override {
    return inner_->gguf_block_type(stored(name));
  }
  std::optional<std::vector<uint8_t>> get_q8_0_linear(const std::string& name) const override {
    return inner_->get_q8_0_linear(stored(name));
  }
  std::optional<GgufBlocks> get_gguf_blocks(const std::string& name) const override {
    return inner_->get_gguf_blocks(stored(name));
  }
  std::optional<Quantized8bit> get_int8(const std::string& name) const override { return inner_->get_int8(stored(name)); }
  std::optional<std::span<const uint8_t>> get_q8_0(const std::string& name) const override {
    return inner_->get_q8_0(stored(name));
  }
  std::optional<ComputeDType> stored_16bit(const std::string& name) const override { return inner_->stored_16bit(stored(name)); }
  bool reads_rows(const std::string& name) const override { return inner_->reads_rows(stored(name)); }
  void get_rows(const std::string& name, int64_t r0, int64_t r1, float* out) const override {
    inner_->get_rows(stored(name), r0, r1, out);
  }
  std::string describe() const override { return inner_->describe(); }
  std::string stored_name(const std::string& name) const override { return stored(name); }
  std::vector<std::string> unmapped_names() const override { return inner_->unmapped_names(); }
  std::vector<std::string> other_part_names() const override { return {other_.begin(), other_.end()}; }
  std::vector<float> get_slice(const std::string& name, int64_t i) const override { return inner_->get_slice(stored(name), i); }
  bool is_mxfp4(const std::string& name) const override { return inner_->is_mxfp4(stored(name)); }

 private:
  bool is_other(const std::string& name) const { return other_.count(name) != 0; }
  // The stored name of a language-model name (or of another part's tensor, as it is).
  std::string stored(const std::string& name) const {
    auto it = text_.find(name);
    if (it != text_.end()) return it->second;
    // (absent: the inner source's error names the file form of the tensor asked for)
    return is_other(name) ? name : text_to_wrapped_file_name(name, std::string(kHubModel));
  }
  std::unique_ptr<TensorSource> inner_;
  std::map<std::string, std::string> text_;  // language-model name -> stored name
  std::set<std::string> other_;  // the other parts' stored names
};

}  // namespace

std::unique_ptr<TensorSource> make_wrapped_source(std::unique_ptr<TensorSource> inner) {
  return std::make_unique<WrappedSource>(std::move(inner));
}

}  // namespace qlora
