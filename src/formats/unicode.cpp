#include "formats/unicode.h"

#include <algorithm>
#include <array>
#include <memory>

namespace qlora::unicode {
namespace {

Category lookup_runs(uint32_t cp) {
  const auto* begin = detail::kCategoryRuns;
  const auto* end = detail::kCategoryRuns + detail::kCategoryRunCount;
  // Last run whose start <= cp.
  const auto* it = std::upper_bound(begin, end, cp, [](uint32_t v, const detail::CategoryRun& r) {
    return v < r.start;
  });
  if (it == begin) return Cn;
  return static_cast<Category>((it - 1)->category);
}

// Dense table for the Basic Multilingual Plane, built once (thread-safe static init).
const std::array<uint8_t, 0x10000>& bmp_table() {
  static const auto table = [] {
    auto t = std::make_unique<std::array<uint8_t, 0x10000>>();
    for (size_t r = 0; r < detail::kCategoryRunCount; ++r) {
      uint32_t start = detail::kCategoryRuns[r].start;
      if (start >= 0x10000) break;
      uint32_t stop = r + 1 < detail::kCategoryRunCount ? detail::kCategoryRuns[r + 1].start : 0x110000;
      stop = std::min<uint32_t>(stop, 0x10000);
      for (uint32_t c = start; c < stop; ++c) (*t)[c] = detail::kCategoryRuns[r].category;
    }
    return t;
  }();
  return *table;
}

}  // namespace

Category category(uint32_t cp) {
  if (cp < 0x10000) return static_cast<Category>(bmp_table()[cp]);
  if (cp > 0x10FFFF) return Cn;
  return lookup_runs(cp);
}

uint32_t category_mask_by_name(std::string_view name) {
  struct Entry {
    std::string_view name;
    uint32_t mask;
  };
  static const Entry kEntries[] = {
      {"L", kMaskL}, {"Letter", kMaskL}, {"M", kMaskM}, {"Mark", kMaskM}, {"Combining_Mark", kMaskM},
      {"N", kMaskN}, {"Number", kMaskN}, {"P", kMaskP}, {"Punctuation", kMaskP}, {"S", kMaskS},
      {"Symbol", kMaskS}, {"Z", kMaskZ}, {"Separator", kMaskZ}, {"C", kMaskC}, {"Other", kMaskC},
      {"Lu", mask_of(Lu)}, {"Uppercase_Letter", mask_of(Lu)}, {"Ll", mask_of(Ll)},
      {"Lowercase_Letter", mask_of(Ll)}, {"Lt", mask_of(Lt)}, {"Titlecase_Letter", mask_of(Lt)},
      {"Lm", mask_of(Lm)}, {"Modifier_Letter", mask_of(Lm)}, {"Lo", mask_of(Lo)},
      {"Other_Letter", mask_of(Lo)}, {"LC", mask_of(Lu) | mask_of(Ll) | mask_of(Lt)},
      {"Cased_Letter", mask_of(Lu) | mask_of(Ll) | mask_of(Lt)},
      {"Mn", mask_of(Mn)}, {"Nonspacing_Mark", mask_of(Mn)}, {"Mc", mask_of(Mc)},
      {"Spacing_Mark", mask_of(Mc)}, {"Me", mask_of(Me)}, {"Enclosing_Mark", mask_of(Me)},
      {"Nd", mask_of(Nd)}, {"Decimal_Number", mask_of(Nd)}, {"Nl", mask_of(Nl)},
      {"Letter_Number", mask_of(Nl)}, {"No", mask_of(No)}, {"Other_Number", mask_of(No)},
      {"Pc", mask_of(Pc)}, {"Connector_Punctuation", mask_of(Pc)}, {"Pd", mask_of(Pd)},
      {"Dash_Punctuation", mask_of(Pd)}, {"Ps", mask_of(Ps)}, {"Open_Punctuation", mask_of(Ps)},
      {"Pe", mask_of(Pe)}, {"Close_Punctuation", mask_of(Pe)}, {"Pi", mask_of(Pi)},
      {"Initial_Punctuation", mask_of(Pi)}, {"Pf", mask_of(Pf)}, {"Final_Punctuation", mask_of(Pf)},
      {"Po", mask_of(Po)}, {"Other_Punctuation", mask_of(Po)}, {"Sm", mask_of(Sm)},
      {"Math_Symbol", mask_of(Sm)}, {"Sc", mask_of(Sc)}, {"Currency_Symbol", mask_of(Sc)},
      {"Sk", mask_of(Sk)}, {"Modifier_Symbol", mask_of(Sk)}, {"So", mask_of(So)},
      {"Other_Symbol", mask_of(So)}, {"Zs", mask_of(Zs)}, {"Space_Separator", mask_of(Zs)},
      {"Zl", mask_of(Zl)}, {"Line_Separator", mask_of(Zl)}, {"Zp", mask_of(Zp)},
      {"Paragraph_Separator", mask_of(Zp)}, {"Cc", mask_of(Cc)}, {"Control", mask_of(Cc)},
      {"Cf", mask_of(Cf)}, {"Format", mask_of(Cf)}, {"Cs", mask_of(Cs)}, {"Surrogate", mask_of(Cs)},
      {"Co", mask_of(Co)}, {"Private_Use", mask_of(Co)}, {"Cn", mask_of(Cn)},
      {"Unassigned", mask_of(Cn)},
  };
  for (const auto& e : kEntries)
    if (e.name == name) return e.mask;
  return 0;
}

bool is_whitespace(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_word(uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') || cp == '_';
  }
  uint32_t m = mask_of(category(cp));
  return (m & (kMaskL | kMaskM | kMaskN | mask_of(Pc))) != 0;
}

uint32_t simple_fold(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  if (cp == 0x17F) return 's';
  if (cp == 0x212A) return 'k';
  if (cp == 0x212B) return 0xE5;
  if ((cp >= 0xC0 && cp <= 0xDE && cp != 0xD7)) return cp + 32;
  if (cp >= 0x391 && cp <= 0x3AB && cp != 0x3A2) return cp + 32;  // Greek capitals
  if (cp >= 0x410 && cp <= 0x42F) return cp + 32;                 // Cyrillic capitals
  if (cp >= 0x400 && cp <= 0x40F) return cp + 80;
  return cp;
}

Utf8Char decode_utf8(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  const unsigned c0 = p[i];
  const Utf8Char bad{0xFFFD, 1, false};
  if (c0 < 0x80) return {c0, 1, true};
  auto cont = [&](size_t k) { return i + k < n && (p[i + k] & 0xC0) == 0x80; };
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    if (!cont(1)) return bad;
    return {((c0 & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu), 2, true};
  }
  if (c0 >= 0xE0 && c0 <= 0xEF) {
    if (!cont(1) || !cont(2)) return bad;
    uint32_t cp = ((c0 & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu);
    if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return bad;
    return {cp, 3, true};
  }
  if (c0 >= 0xF0 && c0 <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return bad;
    uint32_t cp = ((c0 & 0x07u) << 18) | ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) |
                  (p[i + 3] & 0x3Fu);
    if (cp < 0x10000 || cp > 0x10FFFF) return bad;
    return {cp, 4, true};
  }
  return bad;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t complete_utf8_prefix(std::string_view s) {
  const size_t n = s.size();
  // Look at the last up-to-3 bytes for the start of a sequence that runs past the end.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = 0;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) need = 3;
    else if (c >= 0xF0 && c <= 0xF4) need = 4;
    if (need > back) {
      // An incomplete sequence -- but only if what is there so far could still become
      // valid: check the second byte's range for E0/ED/F0/F4.
      if (back >= 2) {
        const unsigned c1 = static_cast<unsigned char>(s[n - back + 1]);
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) ||
            (c == 0xF4 && c1 > 0x8F))
          return n;
      }
      return n - back;
    }
    return n;
  }
  return n;
}

}  // namespace qlora::unicode
