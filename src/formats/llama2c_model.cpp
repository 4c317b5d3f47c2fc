#include "formats/llama2c_model.h"

#include <cstring>
#include <span>

#include "base/error.h"
#include "formats/gguf.h"

namespace qlora {

namespace {

constexpr uint32_t kMagicV1 = 0x616b3432;  // "ak42"
constexpr uint64_t kHeaderV0 = 7 * 4;
constexpr uint64_t kHeaderV1 = 256;

int32_t read_i32(std::span<const uint8_t> b, size_t off) {
  int32_t v;
  std::memcpy(&v, b.data() + off, 4);
  return v;
}

std::string config_string(const Llama2cConfig& c) {
  return "dim " + std::to_string(c.dim) + ", hidden_dim " + std::to_string(c.hidden_dim) + ", n_layers " +
         std::to_string(c.n_layers) + ", n_heads " + std::to_string(c.n_heads) + ", n_kv_heads " +
         std::to_string(c.n_kv_heads) + ", vocab_size " + std::to_string(c.vocab_size) + ", seq_len " +
         std::to_string(c.seq_len);
}

}  // namespace

Llama2cModel::Llama2cModel(const std::string& path) : file_(path) {
  const auto bytes = file_.bytes();
  const std::string& where = path;
  if (bytes.size() < kHeaderV0)
    fail(where, "not a llama2.c checkpoint: " + std::to_string(bytes.size()) +
                    " bytes, shorter than the 28-byte header");
  uint64_t header = kHeaderV0;
  Llama2cConfig& c = config_;
  size_t p = 0;
  uint32_t magic;
  std::memcpy(&magic, bytes.data(), 4);
  if (magic == kMagicV1) {
    if (bytes.size() < kHeaderV1)
      fail(where, "truncated llama2.c header: " + std::to_string(bytes.size()) + " bytes, need 256");
    c.version = read_i32(bytes, 4);
    if (c.version != 1)
      fail(where, "llama2.c export version " + std::to_string(c.version) +
                      " is not supported (only the legacy format and version 1, float32)");
    header = kHeaderV1;
    p = 8;
  }
  c.dim = read_i32(bytes, p);
  c.hidden_dim = read_i32(bytes, p + 4);
  c.n_layers = read_i32(bytes, p + 8);
  c.n_heads = read_i32(bytes, p + 12);
  c.n_kv_heads = read_i32(bytes, p + 16);
  c.vocab_size = read_i32(bytes, p + 20);
  c.seq_len = read_i32(bytes, p + 24);
  if (c.version == 0) {
    c.shared_classifier = c.vocab_size > 0;
    if (c.vocab_size < 0) c.vocab_size = -c.vocab_size;
  } else {
    c.shared_classifier = bytes[p + 28] != 0;
  }
  if (c.dim <= 0 || c.hidden_dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 ||
      c.vocab_size <= 0 || c.seq_len <= 0)
    fail(where, "not a valid llama2.c checkpoint: header has a non-positive size (" + config_string(c) + ")");
  if (c.dim % c.n_heads != 0)
    fail(where, "llama2.c header: dim " + std::to_string(c.dim) + " is not a multiple of n_heads " +
                    std::to_string(c.n_heads));
  if (c.n_kv_heads > c.n_heads)
    fail(where, "llama2.c header: n_kv_heads " + std::to_string(c.n_kv_heads) + " exceeds n_heads " +
                    std::to_string(c.n_heads));

  ModelSpec& s = spec_;
  s.family = "llama";
  s.hidden = c.dim;
  s.n_layers = c.n_layers;
  s.n_heads = c.n_heads;
  s.n_kv_heads = c.n_kv_heads;
  s.head_dim = c.dim / c.n_heads;
  s.ffn = c.hidden_dim;
  s.vocab = c.vocab_size;
  s.max_positions = c.seq_len;
  s.rope_theta = 10000.0f;
  s.norm_eps = 1e-5f;
  s.tied_embeddings = c.shared_classifier;
  s.bos_id = 1;
  s.eos_ids = {2};
  s.validate(where);  // bounds every dimension, so the sizes below cannot overflow

  const int64_t D = c.dim, H = c.hidden_dim, L = c.n_layers, V = c.vocab_size, HS = s.head_dim,
                KV = s.kv_dim();
  // Lay out every array, in file order.
  uint64_t off = header;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, int64_t rope_heads = 0) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    entries_[name] = Entry{off, std::move(shape), rope_heads};
    off += n * 4;
  };
  auto per_layer = [&](const char* module, std::vector<int64_t> shape, int64_t rope_heads = 0) {
    for (int64_t l = 0; l < L; ++l) add(layer_tensor_name(l, module), shape, rope_heads);
  };
  if (c.version == 0) {
    add("model.embed_tokens.weight", {V, D});
    per_layer("input_layernorm", {D});
    per_layer("self_attn.q_proj", {D, D}, c.n_heads);
    per_layer("self_attn.k_proj", {KV, D}, c.n_kv_heads);
    per_layer("self_attn.v_proj", {KV, D});
    per_layer("self_attn.o_proj", {D, D});
    per_layer("post_attention_layernorm", {D});
    per_layer("mlp.gate_proj", {H, D});
    per_layer("mlp.down_proj", {D, H});
    per_layer("mlp.up_proj", {H, D});
    add("model.norm.weight", {D});
    off += static_cast<uint64_t>(c.seq_len) * static_cast<uint64_t>(HS / 2) * 2 * 4;  // legacy rope tables
    if (!c.shared_classifier) add("lm_head.weight", {V, D});
  } else {
    per_layer("input_layernorm", {D});
    per_layer("post_attention_layernorm", {D});
    add("model.norm.weight", {D});
    add("model.embed_tokens.weight", {V, D});
    per_layer("self_attn.q_proj", {D, D}, c.n_heads);
    per_layer("self_attn.k_proj", {KV, D}, c.n_kv_heads);
    per_layer("self_attn.v_proj", {KV, D});
    per_layer("self_attn.o_proj", {D, D});
    per_layer("mlp.gate_proj", {H, D});
    per_layer("mlp.down_proj", {D, H});
    per_layer("mlp.up_proj", {H, D});
    if (!c.shared_classifier) add("lm_head.weight", {V, D});
  }
  if (off != bytes.size()) {
    const std::string sizes = "the header (" + config_string(c) + (c.shared_classifier ? ", shared" : ", unshared") +
                              " classifier) needs " + std::to_string(off) + " bytes but the file has " +
                              std::to_string(bytes.size());
    if (off > bytes.size()) fail(where, "truncated llama2.c checkpoint: " + sizes);
    fail(where, "llama2.c checkpoint size mismatch: " + sizes + " (not a llama2.c float32 checkpoint?)");
  }
}

const Llama2cModel::Entry& Llama2cModel::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(file_.path(), "no tensor named '" + name + "'");
  return it->second;
}

std::vector<std::string> Llama2cModel::names() const {
  std::vector<std::string> n;
  for (const auto& [k, e] : entries_) n.push_back(k);
  return n;
}

bool Llama2cModel::has(const std::string& name) const { return entries_.count(name) != 0; }

std::vector<int64_t> Llama2cModel::shape(const std::string& name) const { return entry(name).shape; }

std::vector<float> Llama2cModel::get(const std::string& name) const {
  const Entry& e = entry(name);
  int64_t n = 1;
  for (int64_t d : e.shape) n *= d;
  std::vector<float> out(static_cast<size_t>(n));
  std::memcpy(out.data(), file_.bytes().data() + e.offset, static_cast<size_t>(n) * 4);
  if (e.rope_heads > 0) {
    std::vector<float> hf(out.size());
    unpermute_rope_rows(out, hf, e.shape[0], e.shape[1], e.rope_heads);
    out.swap(hf);
  }
  return out;
}

bool looks_like_llama2c(const std::string& path) {
  try {
    Llama2cModel m(path);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace qlora
