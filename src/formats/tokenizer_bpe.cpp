#include "formats/tokenizer_bpe.h"

#include <cstdio>
#include <queue>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "formats/unicode.h"

namespace qlora::detail {

BpeModel::BpeModel(const TokenizerSpec& spec)
    : byte_fallback_(spec.byte_fallback),
      fuse_unk_(spec.fuse_unk),
      unk_id_(spec.unk_id) {
  const std::string& where = spec.source;
  const auto n = static_cast<int32_t>(spec.vocab.size());
  token_to_id_.reserve(spec.vocab.size());
  for (int32_t id = 0; id < n; ++id) {
    const std::string& t = spec.vocab[static_cast<size_t>(id)];
    if (!t.empty()) token_to_id_.emplace(t, id);  // the first id of a duplicate wins
  }
  byte_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (auto id = find(name)) byte_ids_[static_cast<size_t>(b)] = *id;
  }
  if (unk_id_ >= n) fail(where, "unk token id " + std::to_string(unk_id_) + " is outside the vocabulary");

  if (spec.merge_mode == MergeMode::kRank) {
    merges_.reserve(spec.merges.size());
    for (size_t r = 0; r < spec.merges.size(); ++r) {
      const auto& [a, b] = spec.merges[r];
      auto ia = find(a), ib = find(b), ir = find(a + b);
      if (!ia || !ib || !ir) {
        fail(where, "merge #" + std::to_string(r) + " " + excerpt(a + " " + b) +
                        " uses a token that is not in the vocabulary");
      }
      merges_.emplace(key(*ia, *ib), Merge{static_cast<double>(r), *ir});  // first (best) wins
    }
  } else {
    if (spec.scores.size() != spec.vocab.size()) {
      fail(where, "score-based BPE needs one score per token (" + std::to_string(spec.scores.size()) +
                      " scores for " + std::to_string(spec.vocab.size()) + " tokens)");
    }
    // Every way of cutting a token into two vocabulary tokens is a merge; its priority is
    // the merged token's score (higher first).
    for (int32_t id = 0; id < n; ++id) {
      const std::string& t = spec.vocab[static_cast<size_t>(id)];
      if (t.size() < 2) continue;
      auto self = find(t);
      if (!self || *self != id) continue;  // a duplicate spelling: the first id stands for it
      const double pri = -static_cast<double>(spec.scores[static_cast<size_t>(id)]);
      for (size_t cut = 1; cut < t.size(); ++cut) {
        auto ia = find(std::string_view(t).substr(0, cut));
        if (!ia) continue;
        auto ib = find(std::string_view(t).substr(cut));
        if (!ib) continue;
        auto [it, inserted] = merges_.emplace(key(*ia, *ib), Merge{pri, id});
        if (!inserted && pri < it->second.priority) it->second = Merge{pri, id};
      }
    }
  }

  // A word-start character no token holds after another character.
  for (std::string_view c : {std::string_view("\xE2\x96\x81"), std::string_view(" ")}) {
    if (!find(c)) continue;
    bool safe = true;
    for (const std::string& t : spec.vocab) {
      for (size_t pos = t.find(c, 1); safe && pos != std::string::npos; pos = t.find(c, pos + c.size()))
        safe = pos >= c.size() && t.compare(pos - c.size(), c.size(), c) == 0;
      if (!safe) break;
    }
    if (safe) {
      split_char_ = std::string(c);
      break;
    }
  }
}

void BpeModel::segments(std::string_view piece, std::vector<std::string_view>& out) const {
  const std::string_view c = split_char_;
  if (c.empty() || piece.size() <= c.size()) {
    out.push_back(piece);
    return;
  }
  size_t start = 0;
  for (size_t pos = piece.find(c, 1); pos != std::string_view::npos; pos = piece.find(c, pos + c.size())) {
    if (pos >= c.size() && piece.compare(pos - c.size(), c.size(), c) == 0) continue;  // inside a run
    out.push_back(piece.substr(start, pos - start));
    start = pos;
  }
  out.push_back(piece.substr(start));
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  struct Sym {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(piece.size());
  bool prev_unk = false;
  for (size_t i = 0; i < piece.size();) {
    const unicode::Utf8Char c = unicode::decode_utf8(piece, i);
    const std::string_view ch = piece.substr(i, c.len);
    i += c.len;
    if (auto id = find(ch)) {
      syms.push_back({*id, 0, 0, true});
      prev_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char b : ch) all = all && byte_ids_[static_cast<uint8_t>(b)] >= 0;
      if (all) {
        for (char b : ch) syms.push_back({byte_ids_[static_cast<uint8_t>(b)], 0, 0, true});
        prev_unk = false;
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (!(fuse_unk_ && prev_unk)) syms.push_back({unk_id_, 0, 0, true});
      prev_unk = true;
    }
    // No unk token: the character is dropped, as `tokenizers` does.
  }
  const auto n = static_cast<int32_t>(syms.size());
  for (int32_t k = 0; k < n; ++k) {
    syms[static_cast<size_t>(k)].prev = k - 1;
    syms[static_cast<size_t>(k)].next = k + 1 < n ? k + 1 : -1;
  }

  struct Cand {
    double priority;
    int32_t pos;
    int32_t new_id;
    bool operator<(const Cand& o) const {  // priority_queue pops the "largest": invert
      if (priority != o.priority) return priority > o.priority;
      return pos > o.pos;
    }
  };
  std::priority_queue<Cand> queue;
  auto push_pair = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = syms[static_cast<size_t>(left)].next;
    if (right < 0) return;
    auto it = merges_.find(key(syms[static_cast<size_t>(left)].id, syms[static_cast<size_t>(right)].id));
    if (it != merges_.end()) queue.push({it->second.priority, left, it->second.new_id});
  };
  for (int32_t k = 0; k + 1 < n; ++k) push_pair(k);

  while (!queue.empty()) {
    const Cand top = queue.top();
    queue.pop();
    Sym& left = syms[static_cast<size_t>(top.pos)];
    if (!left.alive || left.next < 0) continue;
    Sym& right = syms[static_cast<size_t>(left.next)];
    auto it = merges_.find(key(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) syms[static_cast<size_t>(right.next)].prev = top.pos;
    push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int32_t k = 0; k >= 0 && k < n; k = syms[static_cast<size_t>(k)].next) {
    out.push_back(syms[static_cast<size_t>(k)].id);
  }
}

}  // namespace qlora::detail
