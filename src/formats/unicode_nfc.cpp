#include "formats/unicode_nfc.h"

#include <algorithm>
#include <vector>

#include "formats/unicode.h"

namespace qlora::unicode {

namespace {

// Hangul syllables decompose and compose by arithmetic (Unicode 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

const detail::Decomposition* find_decomposition(uint32_t cp) {
  const auto* b = detail::kDecompositions;
  const auto* e = b + detail::kDecompositionCount;
  const auto* it = std::lower_bound(b, e, cp, [](const detail::Decomposition& d, uint32_t c) { return d.cp < c; });
  return it != e && it->cp == cp ? it : nullptr;
}

// Appends the full canonical decomposition of cp.
void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const detail::Decomposition* d = cp < 0xC0 ? nullptr : find_decomposition(cp);
  if (!d) {
    out.push_back(cp);
    return;
  }
  decompose(d->first, out);
  if (d->second) decompose(d->second, out);
}

// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* beg = detail::kCompositions;
  const auto* end = beg + detail::kCompositionCount;
  const auto* it = std::lower_bound(beg, end, std::pair{a, b}, [](const detail::Composition& c, std::pair<uint32_t, uint32_t> k) {
    return c.first < k.first || (c.first == k.first && c.second < k.second);
  });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

// NFC of a run of code points, in place: decompose, order the marks, compose.
void normalize(std::vector<uint32_t>& cps) {
  std::vector<uint32_t> d;
  d.reserve(cps.size() + 4);
  for (uint32_t c : cps) decompose(c, d);
  // Canonical ordering: each run of non-starters stably sorted by combining class.
  for (size_t i = 0; i < d.size();) {
    if (combining_class(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && combining_class(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i), d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition: a character combines with the last starter unless a character
  // between them has a class that blocks it (the same or higher, or a starter).
  cps.clear();
  size_t starter = SIZE_MAX;
  uint8_t last_ccc = 0;
  for (uint32_t c : d) {
    const uint8_t ccc = combining_class(c);
    if (starter != SIZE_MAX && (cps.size() == starter + 1 ? true : (last_ccc != 0 && last_ccc < ccc))) {
      if (const uint32_t comp = compose(cps[starter], c)) {
        cps[starter] = comp;
        continue;
      }
    }
    if (ccc == 0) {
      starter = cps.size();
      last_ccc = 0;
    } else {
      last_ccc = ccc;
    }
    cps.push_back(c);
  }
}

}  // namespace

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto* b = detail::kCccRuns;
  const auto* e = b + detail::kCccRunCount;
  const auto* it = std::upper_bound(b, e, cp, [](uint32_t c, const detail::CccRun& r) { return c < r.first; });
  if (it == b) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

std::string nfc(std::string_view text) {
  // ASCII is already NFC (and nothing composes with it from the left).
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(text);
  std::string out;
  out.reserve(text.size());
  std::vector<uint32_t> run;
  auto flush = [&] {
    normalize(run);
    for (uint32_t c : run) append_utf8(out, c);
    run.clear();
  };
  for (size_t i = 0; i < text.size();) {
    const Utf8Char u = decode_utf8(text, i);
    if (!u.valid) {  // keep the malformed byte where it is
      flush();
      out.push_back(text[i]);
      i += 1;
      continue;
    }
    run.push_back(u.cp);
    i += u.len;
  }
  flush();
  return out;
}

}  // namespace qlora::unicode
