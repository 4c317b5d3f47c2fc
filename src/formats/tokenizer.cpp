#include "formats/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <array>
#include <unordered_map>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "base/mapped_file.h"
#include "formats/llama2c_tokenizer.h"
#include "formats/tokenizer_bpe.h"
#include "formats/tokenizer_gguf.h"
#include "formats/tokenizer_json.h"
#include "formats/unicode.h"
#include "formats/unicode_nfc.h"
#include "formats/unicode_regex.h"

namespace qlora {
namespace {

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's reversible map from bytes to printable characters.
struct ByteLevelMap {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> to_byte{};  // code point -> byte, -1 when not a byte char
  ByteLevelMap() {
    to_byte.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? b : 256 + extra++;
      to_byte[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteLevelMap& byte_level_map() {
  static const ByteLevelMap m;
  return m;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

bool parse_byte_token(std::string_view t, uint8_t* b) {
  if (t.size() != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return false;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  if (hi < 0 || lo < 0) return false;
  *b = static_cast<uint8_t>(hi * 16 + lo);
  return true;
}

// Trie over the bytes of added tokens; finds the longest token at a position.
class AddedMatcher {
 public:
  void add(std::string_view content, size_t index) {
    if (content.empty()) return;
    if (nodes_.empty()) nodes_.emplace_back();
    first_[static_cast<uint8_t>(content[0])] = true;
    size_t node = 0;
    for (char c : content) {
      auto& kids = nodes_[node].kids;
      auto it = kids.find(c);
      if (it == kids.end()) {
        nodes_.emplace_back();
        it = nodes_[node].kids.emplace(c, nodes_.size() - 1).first;
      }
      node = it->second;
    }
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<int64_t>(index);
  }
  bool empty() const { return nodes_.empty(); }
  // Longest token starting at text[pos]; returns its index or -1, and its length.
  int64_t longest(std::string_view text, size_t pos, size_t* len) const {
    if (nodes_.empty() || !first_[static_cast<uint8_t>(text[pos])]) return -1;
    size_t node = 0;
    int64_t best = -1;
    for (size_t i = pos; i < text.size(); ++i) {
      auto it = nodes_[node].kids.find(text[i]);
      if (it == nodes_[node].kids.end()) break;
      node = it->second;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        *len = i + 1 - pos;
      }
    }
    return best;
  }

 private:
  struct Node {
    std::unordered_map<char, size_t> kids;
    int64_t token = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
};

struct Piece {
  std::string text;
  bool at_origin;  // starts at offset 0 of the original input
};

}  // namespace

struct Tokenizer::Impl {
  TokenizerSpec spec;
  detail::BpeModel model;
  std::vector<std::string> id_text;  // id -> token text (added tokens: content)
  std::vector<uint8_t> special;      // id -> is special
  std::vector<uint8_t> eog;
  AddedMatcher raw_matcher, norm_matcher;
  // Compiled regexes, indexed like spec.pre_tokenizer / spec.normalizer (null where unused).
  std::vector<std::unique_ptr<unicode::Regex>> pre_regex;
  std::vector<std::unique_ptr<unicode::Regex>> norm_regex;
  std::unique_ptr<unicode::Regex> gpt2_regex;

  explicit Impl(TokenizerSpec s) : spec(std::move(s)), model(spec) {}

  // ---- encode pipeline ----
  using WordCache = std::unordered_map<std::string, std::vector<int32_t>, detail::StringHash, std::equal_to<>>;

  struct Segment {
    size_t begin, end;  // byte range in the text it was cut from
    int32_t id;         // >= 0: an added token
  };

  std::vector<Segment> split_added(std::string_view text, const AddedMatcher& m, bool parse_special) const {
    std::vector<Segment> out;
    if (m.empty()) {
      out.push_back({0, text.size(), -1});
      return out;
    }
    size_t start_offset = 0;
    size_t i = 0;
    while (i < text.size()) {
      size_t len = 0;
      const int64_t k = m.longest(text, i, &len);
      if (k < 0) {
        ++i;
        continue;
      }
      const AddedToken& tok = spec.added_tokens[static_cast<size_t>(k)];
      size_t start = i, stop = i + len;
      bool accept = parse_special || !tok.special;
      if (accept && tok.single_word) {
        bool start_space = true, stop_space = true;
        if (start > 0) {
          size_t b = start - 1;
          while (b > 0 && (static_cast<uint8_t>(text[b]) & 0xC0) == 0x80) --b;
          start_space = !unicode::is_word(unicode::decode_utf8(text, b).cp);
        }
        if (stop < text.size()) stop_space = !unicode::is_word(unicode::decode_utf8(text, stop).cp);
        accept = start_space && stop_space;
      }
      if (!accept) {
        i = stop;  // as `tokenizers`: the text of a rejected match is not searched again
        continue;
      }
      if (tok.lstrip) {
        size_t b = start;
        while (b > start_offset) {
          size_t c = b - 1;
          while (c > start_offset && (static_cast<uint8_t>(text[c]) & 0xC0) == 0x80) --c;
          if (!unicode::is_whitespace(unicode::decode_utf8(text, c).cp)) break;
          b = c;
        }
        start = b;
      }
      if (tok.rstrip) {
        while (stop < text.size()) {
          const unicode::Utf8Char c = unicode::decode_utf8(text, stop);
          if (!unicode::is_whitespace(c.cp)) break;
          stop += c.len;
        }
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, tok.id});
      start_offset = stop;
      i = stop;
    }
    if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
    return out;
  }

  std::string normalize(std::string_view text) const {
    std::string s(text);
    for (size_t k = 0; k < spec.normalizer.size(); ++k) {
      const NormalizerStep& st = spec.normalizer[k];
      switch (st.kind) {
        case NormalizerStep::Kind::kPrepend:
          if (!s.empty()) s.insert(0, st.content);
          break;
        case NormalizerStep::Kind::kReplace:
          replace_all(s, st.pattern, st.content);
          break;
        case NormalizerStep::Kind::kReplaceRegex: {
          auto matches = norm_regex[k]->find_all(s);
          if (matches.empty()) break;
          std::string out;
          size_t pos = 0;
          for (auto [b, e] : matches) {
            out.append(s, pos, b - pos);
            out.append(st.content);
            pos = e;
          }
          out.append(s, pos, std::string::npos);
          s = std::move(out);
          break;
        }
        case NormalizerStep::Kind::kStrip: {
          size_t b = 0, e = s.size();
          if (st.strip_left) {
            while (b < e) {
              auto c = unicode::decode_utf8(s, b);
              if (!unicode::is_whitespace(c.cp)) break;
              b += c.len;
            }
          }
          if (st.strip_right) {
            while (e > b) {
              size_t c = e - 1;
              while (c > b && (static_cast<uint8_t>(s[c]) & 0xC0) == 0x80) --c;
              if (!unicode::is_whitespace(unicode::decode_utf8(s, c).cp)) break;
              e = c;
            }
          }
          s = s.substr(b, e - b);
          break;
        }
        case NormalizerStep::Kind::kNfc:
          s = unicode::nfc(s);
          break;
      }
    }
    return s;
  }

  // Cuts each piece by the ranges `matches` (delimiters where is_delim) per behavior.
  static void apply_split(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches, bool invert,
                          SplitBehavior behavior, std::vector<Piece>& out) {
    // (range, is_delimiter) covering the whole text
    struct Part {
      size_t b, e;
      bool delim;
    };
    std::vector<Part> parts;
    size_t pos = 0;
    for (auto [b, e] : matches) {
      if (b > pos) parts.push_back({pos, b, invert});
      parts.push_back({b, e, !invert});
      pos = e;
    }
    if (pos < p.text.size()) parts.push_back({pos, p.text.size(), invert});

    std::vector<std::pair<size_t, size_t>> ranges;
    switch (behavior) {
      case SplitBehavior::kIsolated:
        for (auto& q : parts) ranges.push_back({q.b, q.e});
        break;
      case SplitBehavior::kRemoved:
        for (auto& q : parts)
          if (!q.delim) ranges.push_back({q.b, q.e});
        break;
      case SplitBehavior::kMergedWithPrevious: {
        bool prev_delim = false;
        for (auto& q : parts) {
          if (q.delim && !ranges.empty() && !prev_delim) ranges.back().second = q.e;
          else ranges.push_back({q.b, q.e});
          prev_delim = q.delim;
        }
        break;
      }
      case SplitBehavior::kMergedWithNext: {
        bool prev_delim = false;
        for (auto& q : parts) {
          if (!q.delim && prev_delim && !ranges.empty()) ranges.back().second = q.e;
          else ranges.push_back({q.b, q.e});
          prev_delim = q.delim;
        }
        break;
      }
      case SplitBehavior::kContiguous: {
        bool prev_delim = false;
        for (auto& q : parts) {
          if (q.delim && prev_delim && !ranges.empty()) ranges.back().second = q.e;
          else ranges.push_back({q.b, q.e});
          prev_delim = q.delim;
        }
        break;
      }
    }
    for (auto [b, e] : ranges) {
      if (e > b) out.push_back({p.text.substr(b, e - b), p.at_origin && b == 0});
    }
  }

  static std::vector<std::pair<size_t, size_t>> literal_matches(std::string_view text, std::string_view pat) {
    std::vector<std::pair<size_t, size_t>> m;
    if (pat.empty()) return m;
    size_t pos = 0;
    while ((pos = text.find(pat, pos)) != std::string_view::npos) {
      m.push_back({pos, pos + pat.size()});
      pos += pat.size();
    }
    return m;
  }

  // Ranges of each character run where pred holds (each character alone when `single`).
  template <class Pred>
  static std::vector<std::pair<size_t, size_t>> char_runs(std::string_view text, Pred pred, bool single) {
    std::vector<std::pair<size_t, size_t>> m;
    for (size_t i = 0; i < text.size();) {
      auto c = unicode::decode_utf8(text, i);
      if (pred(c.cp)) {
        if (!single && !m.empty() && m.back().second == i) m.back().second = i + c.len;
        else m.push_back({i, i + c.len});
      }
      i += c.len;
    }
    return m;
  }

  std::vector<Piece> pre_tokenize(std::vector<Piece> pieces) const {
    const auto& blm = byte_level_map();
    for (size_t k = 0; k < spec.pre_tokenizer.size(); ++k) {
      const PreTokenizerStep& st = spec.pre_tokenizer[k];
      std::vector<Piece> next;
      next.reserve(pieces.size());
      for (Piece& p : pieces) {
        switch (st.kind) {
          case PreTokenizerStep::Kind::kSplit: {
            auto m = st.pattern_is_regex ? pre_regex[k]->find_all(p.text) : literal_matches(p.text, st.pattern);
            apply_split(p, m, st.invert, st.behavior, next);
            break;
          }
          case PreTokenizerStep::Kind::kByteLevel: {
            Piece q = std::move(p);
            if (st.add_prefix_space && (q.text.empty() || q.text[0] != ' ')) q.text = std::string(1, ' ') + q.text;
            std::vector<Piece> parts;
            if (st.use_regex) apply_split(q, gpt2_regex->find_all(q.text), false, SplitBehavior::kIsolated, parts);
            else parts.push_back(std::move(q));
            for (Piece& part : parts) {
              std::string mapped;
              mapped.reserve(part.text.size() * 2);
              for (char c : part.text) unicode::append_utf8(mapped, blm.to_cp[static_cast<uint8_t>(c)]);
              next.push_back({std::move(mapped), part.at_origin});
            }
            break;
          }
          case PreTokenizerStep::Kind::kMetaspace: {
            Piece q = std::move(p);
            replace_all(q.text, " ", st.replacement);
            const bool starts = q.text.compare(0, st.replacement.size(), st.replacement) == 0;
            if (!starts && (st.prepend_scheme == PrependScheme::kAlways ||
                            (st.prepend_scheme == PrependScheme::kFirst && q.at_origin))) {
              q.text.insert(0, st.replacement);
            }
            if (st.split) {
              apply_split(q, literal_matches(q.text, st.replacement), false, SplitBehavior::kMergedWithNext, next);
            } else {
              next.push_back(std::move(q));
            }
            break;
          }
          case PreTokenizerStep::Kind::kDigits: {
            auto m = char_runs(
                p.text, [](uint32_t cp) { return (unicode::mask_of(unicode::category(cp)) & unicode::kMaskN) != 0; },
                st.individual_digits);
            apply_split(p, m, false, SplitBehavior::kIsolated, next);
            break;
          }
          case PreTokenizerStep::Kind::kWhitespace:
            apply_split(p, pre_regex[k]->find_all(p.text), true, SplitBehavior::kRemoved, next);
            break;
          case PreTokenizerStep::Kind::kPunctuation: {
            auto m = char_runs(
                p.text,
                [](uint32_t cp) {
                  const bool ascii = cp < 0x80 && std::ispunct(static_cast<int>(cp)) != 0;
                  return ascii || (unicode::mask_of(unicode::category(cp)) & unicode::kMaskP) != 0;
                },
                /*individual=*/true);
            apply_split(p, m, false, st.behavior, next);
            break;
          }
          case PreTokenizerStep::Kind::kWhitespaceSplit: {
            auto m = char_runs(p.text, unicode::is_whitespace, false);
            apply_split(p, m, false, SplitBehavior::kRemoved, next);
            break;
          }
        }
      }
      pieces = std::move(next);
    }
    return pieces;
  }

  void encode_text(std::string_view raw, bool at_origin, bool parse_special, std::vector<int32_t>& out,
                   WordCache& cache) const {
    std::string norm = normalize(raw);
    for (const Segment& seg : split_added(norm, norm_matcher, parse_special)) {
      if (seg.id >= 0) {
        out.push_back(seg.id);
        continue;
      }
      std::vector<Piece> pieces;
      pieces.push_back({norm.substr(seg.begin, seg.end - seg.begin), at_origin && seg.begin == 0});
      std::vector<std::string_view> parts;
      for (const Piece& p : pre_tokenize(std::move(pieces))) {
        if (spec.ignore_merges) {
          if (auto id = model.find(p.text)) {
            out.push_back(*id);
            continue;
          }
        }
        parts.clear();
        model.segments(p.text, parts);
        for (std::string_view part : parts) {
          if (part.size() > 64) {
            model.encode_piece(part, out);
            continue;
          }
          auto it = cache.find(part);
          if (it == cache.end()) {
            std::vector<int32_t> ids;
            model.encode_piece(part, ids);
            if (cache.size() > 200000) cache.clear();
            it = cache.emplace(std::string(part), std::move(ids)).first;
          }
          out.insert(out.end(), it->second.begin(), it->second.end());
        }
      }
    }
  }

  // ---- decode ----
  std::vector<std::string> run_decoder(std::vector<std::string> toks, bool strip) const {
    if (spec.decoder.empty()) {
      std::string joined;
      for (size_t i = 0; i < toks.size(); ++i) {
        if (i) joined.push_back(' ');
        joined += toks[i];
      }
      return {joined};
    }
    const auto& blm = byte_level_map();
    for (const DecoderStep& st : spec.decoder) {
      switch (st.kind) {
        case DecoderStep::Kind::kByteLevel:
          for (std::string& t : toks) {
            std::string bytes;
            bool ok = true;
            for (size_t i = 0; i < t.size() && ok;) {
              auto c = unicode::decode_utf8(t, i);
              if (!c.valid || c.cp >= blm.to_byte.size() || blm.to_byte[c.cp] < 0) ok = false;
              else bytes.push_back(static_cast<char>(blm.to_byte[c.cp]));
              i += c.len;
            }
            if (ok) t = std::move(bytes);
          }
          break;
        case DecoderStep::Kind::kReplace:
          for (std::string& t : toks) replace_all(t, st.pattern, st.content);
          break;
        case DecoderStep::Kind::kByteFallback:
          for (std::string& t : toks) {
            uint8_t b;
            if (parse_byte_token(t, &b)) t = std::string(1, static_cast<char>(b));
          }
          break;
        case DecoderStep::Kind::kFuse: {
          std::string all;
          for (const std::string& t : toks) all += t;
          toks.assign(1, std::move(all));
          break;
        }
        case DecoderStep::Kind::kStrip:
          if (!strip) break;
          for (std::string& t : toks) {
            size_t b = 0, e = t.size();
            for (int k = 0; k < st.start && b < e && t.compare(b, st.content.size(), st.content) == 0; ++k)
              b += st.content.size();
            for (int k = 0; k < st.stop && e >= b + st.content.size() &&
                            t.compare(e - st.content.size(), st.content.size(), st.content) == 0;
                 ++k)
              e -= st.content.size();
            t = t.substr(b, e - b);
          }
          break;
        case DecoderStep::Kind::kMetaspace:
          for (size_t i = 0; i < toks.size(); ++i) {
            replace_all(toks[i], st.replacement, " ");
            if (strip && i == 0 && st.prepend_scheme != PrependScheme::kNever && !toks[i].empty() &&
                toks[i][0] == ' ')
              toks[i].erase(0, 1);
          }
          break;
      }
    }
    return toks;
  }

  void check_id(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= id_text.size()) {
      fail(spec.source, "token id " + std::to_string(id) + " is outside the vocabulary (size " +
                            std::to_string(id_text.size()) + ")");
    }
  }
};

Tokenizer::Tokenizer(TokenizerSpec spec) {
  const std::string where = spec.source.empty() ? std::string("tokenizer") : spec.source;
  spec.source = where;
  if (spec.vocab.empty() && spec.added_tokens.empty()) fail(where, "empty vocabulary");
  impl_ = std::make_unique<Impl>(std::move(spec));
  Impl& m = *impl_;
  const TokenizerSpec& s = m.spec;

  size_t n = s.vocab.size();
  for (const AddedToken& t : s.added_tokens) {
    if (t.id < 0 || t.id > (1 << 26)) fail(where, "added token " + excerpt(t.content) + " has a bad id " + std::to_string(t.id));
    if (t.content.empty()) fail(where, "added token " + std::to_string(t.id) + " has no content");
    n = std::max(n, static_cast<size_t>(t.id) + 1);
  }
  m.id_text.assign(n, std::string());
  for (size_t i = 0; i < s.vocab.size(); ++i) m.id_text[i] = s.vocab[i];
  m.special.assign(n, 0);
  m.eog.assign(n, 0);
  for (size_t k = 0; k < s.added_tokens.size(); ++k) {
    const AddedToken& t = s.added_tokens[k];
    m.id_text[static_cast<size_t>(t.id)] = t.content;
    m.special[static_cast<size_t>(t.id)] = t.special;
    (t.normalized ? m.norm_matcher : m.raw_matcher).add(t.content, k);
  }
  auto check_opt_id = [&](int32_t id, const char* what) {
    if (id < -1 || id >= static_cast<int32_t>(n))
      fail(where, std::string(what) + " id " + std::to_string(id) + " is outside the vocabulary");
  };
  check_opt_id(s.bos_id, "bos");
  check_opt_id(s.eos_id, "eos");
  check_opt_id(s.pad_id, "pad");
  for (int32_t id : s.prefix_ids) {
    if (id < 0) fail(where, "post-processor token id " + std::to_string(id) + " is invalid");
    check_opt_id(id, "post-processor token");
  }
  for (int32_t id : s.suffix_ids) {
    if (id < 0) fail(where, "post-processor token id " + std::to_string(id) + " is invalid");
    check_opt_id(id, "post-processor token");
  }
  if (s.eos_id >= 0) m.eog[static_cast<size_t>(s.eos_id)] = 1;
  for (int32_t id : s.eog_ids) {
    check_opt_id(id, "end-of-generation");
    if (id >= 0) m.eog[static_cast<size_t>(id)] = 1;
  }

  m.pre_regex.resize(s.pre_tokenizer.size());
  for (size_t k = 0; k < s.pre_tokenizer.size(); ++k) {
    const auto& st = s.pre_tokenizer[k];
    if (st.kind == PreTokenizerStep::Kind::kSplit && st.pattern_is_regex) {
      m.pre_regex[k] = std::make_unique<unicode::Regex>(st.pattern, where);
    } else if (st.kind == PreTokenizerStep::Kind::kWhitespace) {
      m.pre_regex[k] = std::make_unique<unicode::Regex>(R"(\w+|[^\w\s]+)", where);
    } else if (st.kind == PreTokenizerStep::Kind::kByteLevel && st.use_regex && !m.gpt2_regex) {
      m.gpt2_regex = std::make_unique<unicode::Regex>(kGpt2Regex, where);
    } else if (st.kind == PreTokenizerStep::Kind::kMetaspace && st.replacement.empty()) {
      fail(where, "Metaspace with an empty replacement");
    }
  }
  m.norm_regex.resize(s.normalizer.size());
  for (size_t k = 0; k < s.normalizer.size(); ++k) {
    if (s.normalizer[k].kind == NormalizerStep::Kind::kReplaceRegex)
      m.norm_regex[k] = std::make_unique<unicode::Regex>(s.normalizer[k].pattern, where);
  }
  for (const auto& st : s.decoder) {
    if (st.kind == DecoderStep::Kind::kMetaspace && st.replacement.empty())
      fail(where, "Metaspace decoder with an empty replacement");
  }
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  auto ends_with = [&](std::string_view suf) {
    return path.size() >= suf.size() && path.compare(path.size() - suf.size(), suf.size(), suf) == 0;
  };
  if (ends_with(".bin")) return Tokenizer(load_llama2c_tokenizer(path));
  if (ends_with(".gguf")) return Tokenizer(load_gguf_tokenizer(path));
  return Tokenizer(load_hf_tokenizer(path));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& opt) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (opt.add_special_tokens) out.insert(out.end(), m.spec.prefix_ids.begin(), m.spec.prefix_ids.end());
  Impl::WordCache cache;
  for (const Impl::Segment& seg : m.split_added(text, m.raw_matcher, opt.parse_special)) {
    if (seg.id >= 0) out.push_back(seg.id);
    else m.encode_text(text.substr(seg.begin, seg.end - seg.begin), seg.begin == 0, opt.parse_special, out, cache);
  }
  if (opt.add_special_tokens) out.insert(out.end(), m.spec.suffix_ids.begin(), m.spec.suffix_ids.end());
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, const DecodeOptions& opt) const {
  const Impl& m = *impl_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    m.check_id(id);
    if (opt.skip_special_tokens && m.special[static_cast<size_t>(id)]) continue;
    toks.push_back(m.id_text[static_cast<size_t>(id)]);
  }
  std::string out;
  for (const std::string& t : m.run_decoder(std::move(toks), true)) out += t;
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id) const {
  const Impl& m = *impl_;
  m.check_id(id);
  std::string out;
  for (const std::string& t : m.run_decoder({m.id_text[static_cast<size_t>(id)]}, false)) out += t;
  return out;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_text.size()); }

const std::string& Tokenizer::token_text(int32_t id) const {
  impl_->check_id(id);
  return impl_->id_text[static_cast<size_t>(id)];
}

std::optional<int32_t> Tokenizer::token_id(std::string_view text) const {
  for (const AddedToken& t : impl_->spec.added_tokens)
    if (t.content == text) return t.id;
  return impl_->model.find(text);
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[static_cast<size_t>(id)];
}
bool Tokenizer::is_end_of_generation(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->eog.size() && impl_->eog[static_cast<size_t>(id)];
}
int32_t Tokenizer::bos_id() const { return impl_->spec.bos_id; }
int32_t Tokenizer::eos_id() const { return impl_->spec.eos_id; }
int32_t Tokenizer::pad_id() const { return impl_->spec.pad_id; }
int32_t Tokenizer::unk_id() const { return impl_->spec.unk_id; }
const std::string& Tokenizer::chat_template() const { return impl_->spec.chat_template; }
const TokenizerSpec& Tokenizer::spec() const { return impl_->spec; }

// ---------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tok, DecodeOptions opt) : tok_(&tok), opt_(opt) {}

std::string StreamDecoder::push(int32_t id) {
  ids_.push_back(id);
  std::string full = tok_->decode(ids_, opt_);
  if (full.size() <= prefix_text_.size() || full.compare(0, prefix_text_.size(), prefix_text_) != 0) return {};
  if (unicode::complete_utf8_prefix(full) != full.size()) return {};
  std::string out = full.substr(prefix_text_.size());
  // Keep only the tokens of the last emitted chunk as context for the next one, so that
  // decoders that look at the first token (the dummy-prefix strip) see the same start.
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(read_));
  read_ = ids_.size();
  prefix_text_ = tok_->decode(ids_, opt_);
  return out;
}

std::string StreamDecoder::flush() {
  std::string full = tok_->decode(ids_, opt_);
  std::string out;
  if (full.size() > prefix_text_.size() && full.compare(0, prefix_text_.size(), prefix_text_) == 0)
    out = full.substr(prefix_text_.size());
  ids_.clear();
  read_ = 0;
  prefix_text_.clear();
  return out;
}

}  // namespace qlora
