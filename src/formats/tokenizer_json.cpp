#include "formats/tokenizer_json.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "base/error.h"
#include "base/json_error.h"
#include "base/mapped_file.h"

namespace qlora {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxTokenId = 1 << 24;

class Reader {
 public:
  explicit Reader(std::string where) : where_(std::move(where)) {}
  [[noreturn]] void error(const std::string& what) const { fail(where_, what); }

  const json* find(const json& obj, const char* key) const {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
  }
  std::string str(const json& obj, const char* key, const std::string& ctx, const char* dflt = nullptr) const {
    const json* v = find(obj, key);
    if (!v) {
      if (dflt) return dflt;
      error(ctx + ": missing \"" + key + "\"");
    }
    if (!v->is_string()) error(ctx + ": \"" + key + "\" must be a string");
    return v->get<std::string>();
  }
  bool boolean(const json& obj, const char* key, const std::string& ctx, bool dflt) const {
    const json* v = find(obj, key);
    if (!v) return dflt;
    if (!v->is_boolean()) error(ctx + ": \"" + key + "\" must be true or false");
    return v->get<bool>();
  }
  int64_t integer(const json& v, const std::string& ctx) const {
    if (!v.is_number_integer()) error(ctx + " must be an integer");
    const int64_t x = v.get<int64_t>();
    if (x < 0 || x >= kMaxTokenId) error(ctx + " is out of range (" + std::to_string(x) + ")");
    return x;
  }
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

json parse_json(std::string_view text, const std::string& where) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail(where, "invalid JSON" + json_error_at(e, text));
  }
}

// Pattern of a Split/Replace: {"String": "..."} or {"Regex": "..."}.
std::string pattern_of(const Reader& r, const json& obj, const std::string& ctx, bool* is_regex) {
  const json* p = r.find(obj, "pattern");
  if (!p || !p->is_object()) r.error(ctx + ": \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
  if (const json* s = r.find(*p, "String")) {
    if (!s->is_string()) r.error(ctx + ": pattern String must be a string");
    *is_regex = false;
    return s->get<std::string>();
  }
  if (const json* s = r.find(*p, "Regex")) {
    if (!s->is_string()) r.error(ctx + ": pattern Regex must be a string");
    *is_regex = true;
    return s->get<std::string>();
  }
  r.error(ctx + ": \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
}

PrependScheme prepend_scheme_of(const Reader& r, const json& obj, const std::string& ctx) {
  if (const json* v = r.find(obj, "prepend_scheme")) {
    if (!v->is_string()) r.error(ctx + ": prepend_scheme must be a string");
    const auto s = v->get<std::string>();
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    r.error(ctx + ": unknown prepend_scheme \"" + s + "\"");
  }
  // Older files: add_prefix_space true/false.
  return r.boolean(obj, "add_prefix_space", ctx, true) ? PrependScheme::kAlways : PrependScheme::kNever;
}

std::string metaspace_replacement(const Reader& r, const json& obj, const std::string& ctx) {
  std::string rep = r.str(obj, "replacement", ctx, "\xE2\x96\x81");
  if (rep.empty()) r.error(ctx + ": empty replacement");
  return rep;
}

void parse_normalizer(const Reader& r, const json& n, std::vector<NormalizerStep>& out, int depth) {
  if (depth > 16) r.error("normalizer: nested too deep");
  if (!n.is_object()) r.error("normalizer must be an object");
  const std::string type = r.str(n, "type", "normalizer");
  const std::string ctx = "normalizer " + type;
  NormalizerStep st;
  if (type == "Sequence") {
    const json* list = r.find(n, "normalizers");
    if (!list || !list->is_array()) r.error(ctx + ": \"normalizers\" must be an array");
    for (const json& x : *list) parse_normalizer(r, x, out, depth + 1);
    return;
  } else if (type == "Prepend") {
    st.kind = NormalizerStep::Kind::kPrepend;
    st.content = r.str(n, "prepend", ctx);
  } else if (type == "Replace") {
    bool is_regex = false;
    st.pattern = pattern_of(r, n, ctx, &is_regex);
    st.kind = is_regex ? NormalizerStep::Kind::kReplaceRegex : NormalizerStep::Kind::kReplace;
    st.content = r.str(n, "content", ctx);
  } else if (type == "Strip") {
    st.kind = NormalizerStep::Kind::kStrip;
    st.strip_left = r.boolean(n, "strip_left", ctx, true);
    st.strip_right = r.boolean(n, "strip_right", ctx, true);
  } else if (type == "NFC") {
    st.kind = NormalizerStep::Kind::kNfc;
  } else {
    r.error("unsupported normalizer type \"" + type + "\"");
  }
  out.push_back(std::move(st));
}

// A Split or Punctuation pre-tokenizer's "behavior".
SplitBehavior split_behavior_of(const Reader& r, const std::string& b, const std::string& ctx) {
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  r.error(ctx + ": unknown behavior \"" + b + "\"");
}

void parse_pre_tokenizer(const Reader& r, const json& n, std::vector<PreTokenizerStep>& out, int depth) {
  if (depth > 16) r.error("pre_tokenizer: nested too deep");
  if (!n.is_object()) r.error("pre_tokenizer must be an object");
  const std::string type = r.str(n, "type", "pre_tokenizer");
  const std::string ctx = "pre_tokenizer " + type;
  PreTokenizerStep st;
  if (type == "Sequence") {
    const json* list = r.find(n, "pretokenizers");
    if (!list || !list->is_array()) r.error(ctx + ": \"pretokenizers\" must be an array");
    for (const json& x : *list) parse_pre_tokenizer(r, x, out, depth + 1);
    return;
  } else if (type == "ByteLevel") {
    st.kind = PreTokenizerStep::Kind::kByteLevel;
    st.add_prefix_space = r.boolean(n, "add_prefix_space", ctx, true);
    st.use_regex = r.boolean(n, "use_regex", ctx, true);
  } else if (type == "Split") {
    st.kind = PreTokenizerStep::Kind::kSplit;
    st.pattern = pattern_of(r, n, ctx, &st.pattern_is_regex);
    st.invert = r.boolean(n, "invert", ctx, false);
    st.behavior = split_behavior_of(r, r.str(n, "behavior", ctx), ctx);
  } else if (type == "Metaspace") {
    st.kind = PreTokenizerStep::Kind::kMetaspace;
    st.replacement = metaspace_replacement(r, n, ctx);
    st.prepend_scheme = prepend_scheme_of(r, n, ctx);
    st.split = r.boolean(n, "split", ctx, true);
  } else if (type == "Digits") {
    st.kind = PreTokenizerStep::Kind::kDigits;
    st.individual_digits = r.boolean(n, "individual_digits", ctx, false);
  } else if (type == "Whitespace") {
    st.kind = PreTokenizerStep::Kind::kWhitespace;
  } else if (type == "WhitespaceSplit") {
    st.kind = PreTokenizerStep::Kind::kWhitespaceSplit;
  } else if (type == "Punctuation") {
    st.kind = PreTokenizerStep::Kind::kPunctuation;
    const json* b = r.find(n, "behavior");
    st.behavior = split_behavior_of(r, b && b->is_string() ? b->get<std::string>() : "Isolated", ctx);  // (its default)
  } else {
    r.error("unsupported pre_tokenizer type \"" + type + "\"");
  }
  out.push_back(std::move(st));
}

void parse_decoder(const Reader& r, const json& n, std::vector<DecoderStep>& out, int depth) {
  if (depth > 16) r.error("decoder: nested too deep");
  if (!n.is_object()) r.error("decoder must be an object");
  const std::string type = r.str(n, "type", "decoder");
  const std::string ctx = "decoder " + type;
  DecoderStep st;
  if (type == "Sequence") {
    const json* list = r.find(n, "decoders");
    if (!list || !list->is_array()) r.error(ctx + ": \"decoders\" must be an array");
    for (const json& x : *list) parse_decoder(r, x, out, depth + 1);
    return;
  } else if (type == "ByteLevel") {
    st.kind = DecoderStep::Kind::kByteLevel;
  } else if (type == "Replace") {
    bool is_regex = false;
    st.kind = DecoderStep::Kind::kReplace;
    st.pattern = pattern_of(r, n, ctx, &is_regex);
    if (is_regex) r.error(ctx + ": regex patterns are not supported in decoders");
    st.content = r.str(n, "content", ctx);
  } else if (type == "ByteFallback") {
    st.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    st.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Strip") {
    st.kind = DecoderStep::Kind::kStrip;
    st.content = r.str(n, "content", ctx);
    if (st.content.empty()) r.error(ctx + ": empty content");
    auto count = [&](const char* key) {
      const json* v = r.find(n, key);
      if (!v) return 0;
      if (!v->is_number_integer() || v->get<int64_t>() < 0 || v->get<int64_t>() > 1000)
        r.error(ctx + ": \"" + key + "\" must be a small non-negative integer");
      return static_cast<int>(v->get<int64_t>());
    };
    st.start = count("start");
    st.stop = count("stop");
  } else if (type == "Metaspace") {
    st.kind = DecoderStep::Kind::kMetaspace;
    st.replacement = metaspace_replacement(r, n, ctx);
    st.prepend_scheme = prepend_scheme_of(r, n, ctx);
  } else {
    r.error("unsupported decoder type \"" + type + "\"");
  }
  out.push_back(std::move(st));
}

// Special token name (as the post-processor spells it) -> ids.
struct PostProcessor {
  std::vector<int32_t> prefix, suffix;
};

void parse_post_processor(const Reader& r, const json& n, PostProcessor& pp, int depth) {
  if (depth > 16) r.error("post_processor: nested too deep");
  if (!n.is_object()) r.error("post_processor must be an object");
  const std::string type = r.str(n, "type", "post_processor");
  const std::string ctx = "post_processor " + type;
  if (type == "Sequence") {
    const json* list = r.find(n, "processors");
    if (!list || !list->is_array()) r.error(ctx + ": \"processors\" must be an array");
    for (const json& x : *list) parse_post_processor(r, x, pp, depth + 1);
  } else if (type == "ByteLevel") {
    // offsets only
  } else if (type == "TemplateProcessing") {
    const json* single = r.find(n, "single");
    if (!single || !single->is_array()) r.error(ctx + ": \"single\" must be an array");
    const json* specials = r.find(n, "special_tokens");
    if (specials && !specials->is_object()) r.error(ctx + ": \"special_tokens\" must be an object");
    PostProcessor out;
    bool seen_sequence = false;
    for (const json& piece : *single) {
      if (const json* seq = r.find(piece, "Sequence")) {
        (void)seq;
        if (seen_sequence) r.error(ctx + ": \"single\" has more than one sequence");
        seen_sequence = true;
        continue;
      }
      const json* sp = r.find(piece, "SpecialToken");
      if (!sp) r.error(ctx + ": items of \"single\" must be Sequence or SpecialToken");
      const std::string name = r.str(*sp, "id", ctx + " SpecialToken");
      const json* entry = specials ? r.find(*specials, name.c_str()) : nullptr;
      if (!entry) r.error(ctx + ": special token \"" + name + "\" is not in special_tokens");
      const json* ids = r.find(*entry, "ids");
      if (!ids || !ids->is_array()) r.error(ctx + ": special_tokens[\"" + name + "\"].ids must be an array");
      for (const json& id : *ids) {
        auto v = static_cast<int32_t>(r.integer(id, ctx + ": special token id"));
        (seen_sequence ? out.suffix : out.prefix).push_back(v);
      }
    }
    if (!seen_sequence) r.error(ctx + ": \"single\" has no $A sequence");
    pp = std::move(out);
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto pair_id = [&](const char* key) {
      const json* v = r.find(n, key);
      if (!v || !v->is_array() || v->size() != 2) r.error(ctx + ": \"" + key + "\" must be [token, id]");
      return static_cast<int32_t>(r.integer((*v)[1], ctx + " " + key + " id"));
    };
    pp.prefix = {pair_id("cls")};
    pp.suffix = {pair_id("sep")};
  } else {
    r.error("unsupported post_processor type \"" + type + "\"");
  }
}

AddedToken parse_added_token(const Reader& r, const json& t, int64_t id, const std::string& ctx) {
  if (!t.is_object()) r.error(ctx + " must be an object");
  AddedToken a;
  a.id = static_cast<int32_t>(id);
  a.content = r.str(t, "content", ctx);
  if (a.content.empty()) r.error(ctx + ": empty content");
  a.special = r.boolean(t, "special", ctx, false);
  a.lstrip = r.boolean(t, "lstrip", ctx, false);
  a.rstrip = r.boolean(t, "rstrip", ctx, false);
  a.single_word = r.boolean(t, "single_word", ctx, false);
  a.normalized = r.boolean(t, "normalized", ctx, !a.special);
  return a;
}

// A token named in tokenizer_config.json: "text" or {"content": "text", ...}.
std::optional<std::string> config_token(const Reader& r, const json& cfg, const char* key) {
  const json* v = r.find(cfg, key);
  if (!v) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  if (v->is_object()) return r.str(*v, "content", std::string("tokenizer_config ") + key);
  r.error(std::string("tokenizer_config: \"") + key + "\" must be a string or an object");
}

const std::vector<std::string_view>& end_of_generation_names() {
  static const std::vector<std::string_view> names = {
      "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<end_of_turn>",
      "<|end_of_text|>", "</s>", "<|END_OF_TURN_TOKEN|>", "<|return|>", "<|call|>"};
  return names;
}

}  // namespace

TokenizerSpec tokenizer_spec_from_json(std::string_view tokenizer_json, std::string_view config_json,
                                       std::string_view where_sv) {
  const std::string where(where_sv);
  Reader r(where);
  const json root = parse_json(tokenizer_json, where);
  if (!root.is_object()) r.error("tokenizer.json must be a JSON object");
  TokenizerSpec spec;
  spec.source = where;

  // ---- model ----
  const json* model = r.find(root, "model");
  if (!model || !model->is_object()) r.error("missing \"model\" object");
  const std::string mtype = r.str(*model, "type", "model", "BPE");
  if (mtype != "BPE") r.error("unsupported model type \"" + mtype + "\" (only BPE is implemented)");
  const json* vocab = r.find(*model, "vocab");
  if (!vocab || !vocab->is_object()) r.error("model: \"vocab\" must be an object {token: id}");
  int64_t max_id = -1;
  std::vector<std::pair<std::string, int64_t>> entries;
  entries.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const int64_t id = r.integer(it.value(), "model.vocab[\"" + it.key().substr(0, 64) + "\"]");
    entries.emplace_back(it.key(), id);
    max_id = std::max(max_id, id);
  }
  const json* added = r.find(root, "added_tokens");
  if (added && !added->is_array()) r.error("\"added_tokens\" must be an array");
  const size_t n_added = added ? added->size() : 0;
  if (max_id >= static_cast<int64_t>(2 * (entries.size() + n_added) + 1024))
    r.error("model.vocab ids are too sparse (largest id " + std::to_string(max_id) + " for " +
            std::to_string(entries.size()) + " tokens)");
  spec.vocab.assign(static_cast<size_t>(max_id + 1), std::string());
  for (auto& [tok, id] : entries) {
    if (!spec.vocab[static_cast<size_t>(id)].empty())
      r.error("model.vocab: id " + std::to_string(id) + " is used twice");
    spec.vocab[static_cast<size_t>(id)] = std::move(tok);
  }
  std::unordered_map<std::string, int32_t> vocab_ids;
  for (size_t i = 0; i < spec.vocab.size(); ++i)
    if (!spec.vocab[i].empty()) vocab_ids.emplace(spec.vocab[i], static_cast<int32_t>(i));

  if (const json* merges = r.find(*model, "merges")) {
    if (!merges->is_array()) r.error("model: \"merges\" must be an array");
    spec.merges.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const json& m = (*merges)[i];
      const std::string ctx = "model.merges[" + std::to_string(i) + "]";
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);  // a token never is "", so search from 1
        if (sp == std::string::npos || sp + 1 >= s.size()) r.error(ctx + ": expected \"a b\"");
        spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        r.error(ctx + ": expected \"a b\" or [a, b]");
      }
    }
  }
  spec.merge_mode = MergeMode::kRank;
  spec.byte_fallback = r.boolean(*model, "byte_fallback", "model", false);
  spec.fuse_unk = r.boolean(*model, "fuse_unk", "model", false);
  spec.ignore_merges = r.boolean(*model, "ignore_merges", "model", false);
  if (!r.str(*model, "continuing_subword_prefix", "model", "").empty() ||
      !r.str(*model, "end_of_word_suffix", "model", "").empty())
    r.error("model: continuing_subword_prefix / end_of_word_suffix are not supported");
  const std::string unk = r.str(*model, "unk_token", "model", "");
  if (!unk.empty()) {
    auto it = vocab_ids.find(unk);
    if (it == vocab_ids.end()) r.error("model: unk_token \"" + unk + "\" is not in the vocabulary");
    spec.unk_id = it->second;
  }

  // ---- added tokens ----
  std::unordered_map<std::string, int32_t> added_ids;
  if (added) {
    for (size_t i = 0; i < added->size(); ++i) {
      const json& t = (*added)[i];
      const std::string ctx = "added_tokens[" + std::to_string(i) + "]";
      const json* idv = r.find(t, "id");
      if (!idv) r.error(ctx + ": missing \"id\"");
      AddedToken a = parse_added_token(r, t, r.integer(*idv, ctx + ".id"), ctx);
      added_ids[a.content] = a.id;
      spec.added_tokens.push_back(std::move(a));
    }
  }

  if (const json* n = r.find(root, "normalizer")) parse_normalizer(r, *n, spec.normalizer, 0);
  if (const json* n = r.find(root, "pre_tokenizer")) parse_pre_tokenizer(r, *n, spec.pre_tokenizer, 0);
  if (const json* n = r.find(root, "decoder")) parse_decoder(r, *n, spec.decoder, 0);
  PostProcessor pp;
  if (const json* n = r.find(root, "post_processor")) parse_post_processor(r, *n, pp, 0);
  spec.prefix_ids = pp.prefix;
  spec.suffix_ids = pp.suffix;

  auto id_of = [&](const std::string& text) -> int32_t {
    if (auto it = added_ids.find(text); it != added_ids.end()) return it->second;
    if (auto it = vocab_ids.find(text); it != vocab_ids.end()) return it->second;
    return -1;
  };

  // ---- tokenizer_config.json ----
  std::optional<std::string> bos_tok, eos_tok, pad_tok;
  if (!config_json.empty()) {
    Reader rc(where + " (tokenizer_config.json)");
    const json cfg = parse_json(config_json, where + " (tokenizer_config.json)");
    if (!cfg.is_object()) rc.error("tokenizer_config.json must be a JSON object");
    if (const json* dec = rc.find(cfg, "added_tokens_decoder")) {
      if (!dec->is_object()) rc.error("\"added_tokens_decoder\" must be an object");
      for (auto it = dec->begin(); it != dec->end(); ++it) {
        int64_t id = -1;
        try {
          size_t used = 0;
          id = std::stoll(it.key(), &used);
          if (used != it.key().size()) id = -1;
        } catch (const std::exception&) {
          id = -1;
        }
        if (id < 0 || id >= kMaxTokenId) rc.error("added_tokens_decoder: bad id \"" + it.key().substr(0, 32) + "\"");
        AddedToken a = parse_added_token(rc, it.value(), id, "added_tokens_decoder[" + it.key() + "]");
        auto found = std::find_if(spec.added_tokens.begin(), spec.added_tokens.end(),
                                  [&](const AddedToken& t) { return t.id == a.id; });
        if (found == spec.added_tokens.end()) {
          if (a.id >= static_cast<int32_t>(2 * (spec.vocab.size() + spec.added_tokens.size()) + 1024))
            rc.error("added_tokens_decoder: id " + std::to_string(a.id) + " is far outside the vocabulary");
          added_ids[a.content] = a.id;
          spec.added_tokens.push_back(std::move(a));
        }
      }
    }
    bos_tok = config_token(rc, cfg, "bos_token");
    eos_tok = config_token(rc, cfg, "eos_token");
    pad_tok = config_token(rc, cfg, "pad_token");
    const json* add_bos = rc.find(cfg, "add_bos_token");
    const json* add_eos = rc.find(cfg, "add_eos_token");
    if ((add_bos && !add_bos->is_boolean()) || (add_eos && !add_eos->is_boolean()))
      rc.error("add_bos_token / add_eos_token must be true or false");
    if (add_bos || add_eos) {
      // transformers rebuilds the post-processor from these flags.
      const bool want_bos = add_bos && add_bos->get<bool>();
      const bool want_eos = add_eos && add_eos->get<bool>();
      spec.prefix_ids.clear();
      spec.suffix_ids.clear();
      if (want_bos) {
        const int32_t id = bos_tok ? id_of(*bos_tok) : -1;
        if (id < 0) rc.error("add_bos_token is true but bos_token is missing or unknown");
        spec.prefix_ids.push_back(id);
      }
      if (want_eos) {
        const int32_t id = eos_tok ? id_of(*eos_tok) : -1;
        if (id < 0) rc.error("add_eos_token is true but eos_token is missing or unknown");
        spec.suffix_ids.push_back(id);
      }
    }
    if (const json* ct = rc.find(cfg, "chat_template")) {
      if (ct->is_string()) {
        spec.chat_template = ct->get<std::string>();
      } else if (ct->is_array()) {
        for (const json& t : *ct) {
          const std::string name = rc.str(t, "name", "chat_template[]");
          const std::string text = rc.str(t, "template", "chat_template[]");
          if (spec.chat_template.empty() || name == "default") spec.chat_template = text;
        }
      } else {
        rc.error("\"chat_template\" must be a string or a list of {name, template}");
      }
    }
  }

  if (bos_tok) spec.bos_id = id_of(*bos_tok);
  else if (!spec.prefix_ids.empty()) spec.bos_id = spec.prefix_ids.front();
  if (eos_tok) spec.eos_id = id_of(*eos_tok);
  else if (!spec.suffix_ids.empty()) spec.eos_id = spec.suffix_ids.back();
  if (pad_tok) spec.pad_id = id_of(*pad_tok);
  for (const AddedToken& a : spec.added_tokens) {
    if (!a.special) continue;
    for (std::string_view name : end_of_generation_names())
      if (a.content == name && a.id != spec.eos_id) spec.eog_ids.push_back(a.id);
  }
  return spec;
}

namespace {

// The tokenizer.json that transformers builds from GPT-2's original files (GPT2Tokenizer:
// vocab.json + merges.txt, as facebook/opt-* and other older checkpoints ship them): a
// byte-level BPE, ByteLevel pre-tokenizer with the config's add_prefix_space (default
// false) and decoder, and the config's special tokens (default <|endoftext|>) matched in
// text as added tokens. tokenizer_config.json's add_bos_token / add_eos_token are applied
// afterwards like for any tokenizer.json (OPT prepends </s>).
std::string gpt2_files_as_tokenizer_json(const std::string& dir, const std::string& cfg_text) {
  const std::string vocab_path = dir + "/vocab.json", merges_path = dir + "/merges.txt";
  const std::string vocab_text = read_text_file(vocab_path);
  json vocab;
  try {
    vocab = json::parse(vocab_text);
  } catch (const json::exception& e) {
    fail(vocab_path, "invalid JSON" + json_error_at(e, vocab_text));
  }
  if (!vocab.is_object()) fail(vocab_path, "must be a JSON object of token -> id");
  json merges = json::array();
  {
    const std::string m = read_text_file(merges_path);
    size_t pos = 0, line_no = 0;
    while (pos < m.size()) {
      size_t e = m.find('\n', pos);
      if (e == std::string::npos) e = m.size();
      std::string line = m.substr(pos, e - pos);
      pos = e + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size() || line.find(' ', sp + 1) != std::string::npos)
        fail(merges_path, "line " + std::to_string(line_no) + " is not two tokens separated by one space");
      merges.push_back(line);
    }
  }
  json cfg = json::object();
  if (!cfg_text.empty()) {
    try {
      cfg = json::parse(cfg_text);
    } catch (const json::exception& e) {
      fail(dir + "/tokenizer_config.json", "invalid JSON" + json_error_at(e, cfg_text));
    }
  }
  bool add_prefix_space = false;
  if (cfg.is_object() && cfg.contains("add_prefix_space") && cfg["add_prefix_space"].is_boolean())
    add_prefix_space = cfg["add_prefix_space"].get<bool>();
  json added = json::array();
  std::vector<std::string> seen;
  for (const char* key : {"unk_token", "bos_token", "eos_token", "pad_token"}) {
    std::string content = std::string(key) == "pad_token" ? "" : "<|endoftext|>";  // GPT2Tokenizer's defaults
    if (cfg.is_object() && cfg.contains(key)) {
      const json& v = cfg[key];
      if (v.is_string()) content = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v["content"].is_string()) content = v["content"].get<std::string>();
      else if (v.is_null()) content.clear();
    }
    if (content.empty() || !vocab.contains(content) || !vocab[content].is_number_integer()) continue;
    if (std::find(seen.begin(), seen.end(), content) != seen.end()) continue;
    seen.push_back(content);
    added.push_back({{"id", vocab[content]}, {"content", content}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  json t = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", true},
                         {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                 {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", vocab}, {"merges", merges}}},
  };
  return t.dump();
}

}  // namespace

TokenizerSpec load_hf_tokenizer(const std::string& path) {
  std::string dir = path, file = path;
  const bool is_json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  if (is_json) {
    const size_t slash = path.find_last_of('/');
    dir = slash == std::string::npos ? "." : path.substr(0, slash);
  } else {
    file = path + "/tokenizer.json";
  }
  const std::string cfg_path = dir + "/tokenizer_config.json";
  const std::string cfg = file_exists(cfg_path) ? read_text_file(cfg_path) : std::string();
  std::string tok;
  if (file_exists(file)) {
    tok = read_text_file(file);
  } else if (!is_json && file_exists(dir + "/vocab.json") && file_exists(dir + "/merges.txt")) {
    tok = gpt2_files_as_tokenizer_json(dir, cfg);
    file = dir + "/vocab.json";
  } else {
    fail(path, "no tokenizer.json found (nor GPT-2's vocab.json and merges.txt)");
  }
  TokenizerSpec spec = tokenizer_spec_from_json(tok, cfg, file);
  if (!spec.chat_template.empty()) spec.chat_template_source = cfg_path + ":chat_template";
  if (spec.chat_template.empty() && file_exists(dir + "/chat_template.jinja")) {
    spec.chat_template = read_text_file(dir + "/chat_template.jinja");
    spec.chat_template_source = dir + "/chat_template.jinja";
  }
  // generation_config.json may list more end-of-generation ids.
  const std::string gen_path = dir + "/generation_config.json";
  if (file_exists(gen_path)) {
    json g;
    const std::string gen_text = read_text_file(gen_path);
    try {
      g = json::parse(gen_text);
    } catch (const json::exception& e) {
      fail(gen_path, "invalid JSON" + json_error_at(e, gen_text));
    }
    if (g.is_object() && g.contains("eos_token_id")) {
      const json& e = g["eos_token_id"];
      std::vector<json> ids = e.is_array() ? std::vector<json>(e.begin(), e.end()) : std::vector<json>{e};
      for (const json& v : ids) {
        if (!v.is_number_integer()) continue;
        const int64_t id = v.get<int64_t>();
        if (id >= 0 && id < kMaxTokenId && id != spec.eos_id) spec.eog_ids.push_back(static_cast<int32_t>(id));
      }
    }
  }
  return spec;
}

}  // namespace qlora
