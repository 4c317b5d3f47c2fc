#include "export/tokenizer_json_writer.h"

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

std::string tokenizer_json_text(const TokenizerSpec& s) {
  if (s.merge_mode != MergeMode::kRank)
    fail(s.source, "this tokenizer merges by SentencePiece scores; writing it as tokenizer.json is not supported "
                   "yet (only merge-list BPE)");
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
