#include "export/tokenizer_json_writer.h"

#include <algorithm>
#include <tuple>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace qlora {

namespace {

using ojson = nlohmann::ordered_json;

ojson pattern_json(const std::string& p, bool regex) { return ojson{{regex ? "Regex" : "String", p}}; }

const char* behavior_name(SplitBehavior b) {
  switch (b) {
    case SplitBehavior::kIsolated: return "Isolated";
    case SplitBehavior::kRemoved: return "Removed";
    case SplitBehavior::kMergedWithPrevious: return "MergedWithPrevious";
    case SplitBehavior::kMergedWithNext: return "MergedWithNext";
    case SplitBehavior::kContiguous: return "Contiguous";
  }
  return "Isolated";
}

const char* prepend_name(PrependScheme p) {
  switch (p) {
    case PrependScheme::kAlways: return "always";
    case PrependScheme::kFirst: return "first";
    case PrependScheme::kNever: return "never";
  }
  return "always";
}

ojson normalizer_json(const NormalizerStep& s) {
  using K = NormalizerStep::Kind;
  switch (s.kind) {
    case K::kPrepend: return {{"type", "Prepend"}, {"prepend", s.content}};
    case K::kReplace: return {{"type", "Replace"}, {"pattern", pattern_json(s.pattern, false)}, {"content", s.content}};
    case K::kReplaceRegex: return {{"type", "Replace"}, {"pattern", pattern_json(s.pattern, true)}, {"content", s.content}};
    case K::kStrip: return {{"type", "Strip"}, {"strip_left", s.strip_left}, {"strip_right", s.strip_right}};
    case K::kNfc: return {{"type", "NFC"}};
  }
  return nullptr;
}

ojson pre_tokenizer_json(const PreTokenizerStep& s) {
  using K = PreTokenizerStep::Kind;
  switch (s.kind) {
    case K::kSplit:
      return {{"type", "Split"}, {"pattern", pattern_json(s.pattern, s.pattern_is_regex)},
              {"behavior", behavior_name(s.behavior)}, {"invert", s.invert}};
    case K::kByteLevel:
      return {{"type", "ByteLevel"}, {"add_prefix_space", s.add_prefix_space}, {"trim_offsets", true},
              {"use_regex", s.use_regex}};
    case K::kMetaspace:
      return {{"type", "Metaspace"}, {"replacement", s.replacement}, {"prepend_scheme", prepend_name(s.prepend_scheme)},
              {"split", s.split}};
    case K::kDigits: return {{"type", "Digits"}, {"individual_digits", s.individual_digits}};
    case K::kWhitespace: return {{"type", "Whitespace"}};
    case K::kWhitespaceSplit: return {{"type", "WhitespaceSplit"}};
    case K::kPunctuation: return {{"type", "Punctuation"}, {"behavior", behavior_name(s.behavior)}};
  }
  return nullptr;
}

ojson decoder_json(const DecoderStep& s) {
  using K = DecoderStep::Kind;
  switch (s.kind) {
    case K::kByteLevel:
      return {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    case K::kReplace: return {{"type", "Replace"}, {"pattern", pattern_json(s.pattern, false)}, {"content", s.content}};
    case K::kByteFallback: return {{"type", "ByteFallback"}};
    case K::kFuse: return {{"type", "Fuse"}};
    case K::kStrip: return {{"type", "Strip"}, {"content", s.content}, {"start", s.start}, {"stop", s.stop}};
    case K::kMetaspace:
      return {{"type", "Metaspace"}, {"replacement", s.replacement}, {"prepend_scheme", prepend_name(s.prepend_scheme)},
              {"split", true}};
  }
  return nullptr;
}

template <class Step, class F>
ojson sequence_json(const std::vector<Step>& steps, const char* list_key, F one) {
  if (steps.empty()) return nullptr;
  if (steps.size() == 1) return one(steps[0]);
  ojson list = ojson::array();
  for (const Step& s : steps) list.push_back(one(s));
  return {{"type", "Sequence"}, {list_key, list}};
}

const std::string& token_of(const TokenizerSpec& s, int32_t id) {
  if (id < 0 || static_cast<size_t>(id) >= s.vocab.size()) fail(s.source, "special token id out of range");
  return s.vocab[static_cast<size_t>(id)];
}

// BOS/EOS around every encoded text, as `tokenizers` spells it.
ojson post_processor_json(const TokenizerSpec& s) {
  if (s.prefix_ids.empty() && s.suffix_ids.empty()) return nullptr;
  ojson single = ojson::array(), specials = ojson::object();
  auto special = [&](int32_t id) {
    const std::string& t = token_of(s, id);
    single.push_back({{"SpecialToken", {{"id", t}, {"type_id", 0}}}});
    specials[t] = {{"id", t}, {"ids", {id}}, {"tokens", {t}}};
  };
  for (int32_t id : s.prefix_ids) special(id);
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  for (int32_t id : s.suffix_ids) special(id);
  ojson pair = single;
  pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
}

}  // namespace

namespace {

constexpr const char* kMeta = "\xE2\x96\x81";  // "▁"

// UTF-8 character boundaries of `s` (byte offsets of each character after the first).
std::vector<size_t> char_cuts(const std::string& s) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) cuts.push_back(i);
  return cuts;
}

// A SentencePiece-style tokenizer that merges by score (llama2.c, GGUF "llama") as the
// merge-list BPE that `tokenizers` runs, the way transformers' converter derives it
// (SentencePieceExtractor): every split of a token into two tokens is a merge ranked by
// the token's score, best first (ties: the shorter left part, then the shorter right
// part, then vocabulary order), and spaces spelled "▁" with the Llama normalizer.
TokenizerSpec scored_as_merge_list(const TokenizerSpec& src) {
  TokenizerSpec s = src;
  bool meta = false;  // the vocabulary already spells spaces "▁"
  for (const NormalizerStep& n : src.normalizer)
    if (n.kind == NormalizerStep::Kind::kReplace && n.content == kMeta) meta = true;
  bool prepend = false;
  for (const NormalizerStep& n : src.normalizer)
    if (n.kind == NormalizerStep::Kind::kPrepend) prepend = true;
  if (!meta)
    for (std::string& t : s.vocab) {
      std::string m;
      for (char c : t) m += c == ' ' ? std::string(kMeta) : std::string(1, c);
      t = std::move(m);
    }
  for (AddedToken& a : s.added_tokens)
    if (a.id >= 0 && static_cast<size_t>(a.id) < s.vocab.size()) a.content = s.vocab[static_cast<size_t>(a.id)];
  std::unordered_map<std::string, int32_t> id;
  for (size_t i = 0; i < s.vocab.size(); ++i) id.emplace(s.vocab[i], static_cast<int32_t>(i));
  struct M {
    std::string a, b;
    float score;
    int32_t ia, ib;
  };
  std::vector<M> ms;
  for (size_t t = 0; t < s.vocab.size(); ++t) {
    const std::string& tok = s.vocab[t];
    std::vector<M> local;
    for (size_t cut : char_cuts(tok)) {
      const std::string a = tok.substr(0, cut), b = tok.substr(cut);
      const auto ia = id.find(a), ib = id.find(b);
      if (ia != id.end() && ib != id.end()) local.push_back({a, b, src.scores[t], ia->second, ib->second});
    }
    std::sort(local.begin(), local.end(), [](const M& x, const M& y) { return std::pair(x.ia, x.ib) < std::pair(y.ia, y.ib); });
    ms.insert(ms.end(), local.begin(), local.end());
  }
  // Python's sorted(..., key=(score, len(a), len(b)), reverse=True): stable, descending.
  std::stable_sort(ms.begin(), ms.end(), [](const M& x, const M& y) {
    const auto kx = std::tuple(x.score, x.a.size(), x.b.size()), ky = std::tuple(y.score, y.a.size(), y.b.size());
    return ky < kx;
  });
  s.merge_mode = MergeMode::kRank;
  s.merges.clear();
  for (const M& m : ms) s.merges.emplace_back(m.a, m.b);
  s.scores.clear();
  s.byte_fallback = true;
  s.fuse_unk = true;
  s.normalizer.clear();
  if (prepend) s.normalizer.push_back({NormalizerStep::Kind::kPrepend, "", kMeta});
  s.normalizer.push_back({NormalizerStep::Kind::kReplace, " ", kMeta});
  s.pre_tokenizer.clear();
  DecoderStep rep;
  rep.kind = DecoderStep::Kind::kReplace;
  rep.pattern = kMeta;
  rep.content.assign(1, ' ');  // (not = " ": GCC 12 -Wrestrict false positive)
  DecoderStep bf;
  bf.kind = DecoderStep::Kind::kByteFallback;
  DecoderStep fuse;
  fuse.kind = DecoderStep::Kind::kFuse;
  s.decoder = {rep, bf, fuse};
  if (prepend) {
    DecoderStep strip;
    strip.kind = DecoderStep::Kind::kStrip;
    strip.content.assign(1, ' ');
    strip.start = 1;
    s.decoder.push_back(strip);
  }
  return s;
}

}  // namespace

std::string tokenizer_json_text(const TokenizerSpec& spec) {
  if (spec.merge_mode != MergeMode::kRank && spec.scores.size() != spec.vocab.size())
    fail(spec.source, "this tokenizer merges by scores but has none for every token");
  const TokenizerSpec s = spec.merge_mode == MergeMode::kRank ? spec : scored_as_merge_list(spec);
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ojson added = ojson::array();
  for (const AddedToken& a : s.added_tokens)
    added.push_back({{"id", a.id},           {"content", a.content},       {"single_word", a.single_word},
                     {"lstrip", a.lstrip},   {"rstrip", a.rstrip},         {"normalized", a.normalized},
                     {"special", a.special}});
  j["added_tokens"] = added;
  j["normalizer"] = sequence_json(s.normalizer, "normalizers", normalizer_json);
  j["pre_tokenizer"] = sequence_json(s.pre_tokenizer, "pretokenizers", pre_tokenizer_json);
  j["post_processor"] = post_processor_json(s);
  j["decoder"] = sequence_json(s.decoder, "decoders", decoder_json);
  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = s.unk_id >= 0 ? ojson(token_of(s, s.unk_id)) : ojson(nullptr);
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = s.fuse_unk;
  model["byte_fallback"] = s.byte_fallback;
  model["ignore_merges"] = s.ignore_merges;
  ojson vocab = ojson::object();
  for (size_t i = 0; i < s.vocab.size(); ++i) {
    if (vocab.contains(s.vocab[i])) continue;  // a duplicate spelling keeps its first id, as tokenizers does
    vocab[s.vocab[i]] = i;
  }
  model["vocab"] = vocab;
  ojson merges = ojson::array();
  for (const auto& [a, b] : s.merges) merges.push_back({a, b});
  model["merges"] = merges;
  j["model"] = model;
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::strict) + "\n";
}

std::string tokenizer_config_json_text(const TokenizerSpec& s, int64_t model_max_length) {
  ojson j;
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  if (s.bos_id >= 0) j["bos_token"] = token_of(s, s.bos_id);
  if (s.eos_id >= 0) j["eos_token"] = token_of(s, s.eos_id);
  if (s.pad_id >= 0) j["pad_token"] = token_of(s, s.pad_id);
  if (s.unk_id >= 0) j["unk_token"] = token_of(s, s.unk_id);
  j["model_max_length"] = model_max_length;
  j["clean_up_tokenization_spaces"] = false;
  if (!s.chat_template.empty()) j["chat_template"] = s.chat_template;
  return j.dump(2) + "\n";
}

}  // namespace qlora
