#pragma once
// Quoting user input in error messages. A message must stay readable and short whatever the
// input was: a 10 MB JSON line, invalid UTF-8 or terminal control bytes must neither flood the
// terminal nor reach it raw. Every message that shows a piece of user input (a dataset line,
// a template, an option value, a config value) shows it through one of these.
//
// Escaping: valid UTF-8 is kept as is (so non-English text stays readable); control
// characters (C0, DEL, C1) and bytes that are not part of valid UTF-8 are written \xNN,
// newline and tab as \n and \t. Cuts never split a UTF-8 character.
#include <cstddef>
#include <string>
#include <string_view>

namespace qlora {

// How many bytes of input an excerpt shows by default: short enough that a message with a
// file name and an explanation still fits on a line or two.
inline constexpr size_t kExcerptBytes = 60;

// The input quoted and escaped: 'abc' when it fits in `max_bytes`, otherwise the first
// max_bytes of it and a marker with the full size: 'abc'... (10485760 bytes).
std::string excerpt(std::string_view text, size_t max_bytes = kExcerptBytes);

// The input around byte `offset` (where a parser stopped), quoted and escaped, with "..."
// inside the quotes on a side that was cut and the full size after them:
// '...{"a": tru...' (10485760 bytes). About a third of the window lies before the offset, so
// the excerpt shows what led up to the point of the error and a little after it.
std::string excerpt_around(std::string_view text, size_t offset, size_t max_bytes = kExcerptBytes);

// An already-composed message (which may embed input nobody excerpted, e.g. a library's
// text) made safe to print: escaped as above except that newlines are kept, and cut to
// `max_bytes` with "... (N bytes)" when longer.
std::string safe_message(std::string_view text, size_t max_bytes = 600);

// The byte offset of the first byte that is not part of well-formed UTF-8 (overlong forms,
// surrogates and code points above U+10FFFF are ill-formed, as in RFC 3629), or npos when
// all of `text` is well-formed.
size_t first_invalid_utf8(std::string_view text);

}  // namespace qlora
