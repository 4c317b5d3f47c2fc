#pragma once
// nlohmann::json's exception texts quote the offending input raw and whole ("last read:
// '<the entire 10 MB string>'", invalid UTF-8 included) and count positions within the string
// they were given. These turn one into a short message that shows an escaped excerpt of the
// input instead (base/text_excerpt.h).
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace qlora {

// What is wrong, without the exception's id, position or quoted input: "syntax error while
// parsing object - unexpected end of input; expected '}'".
std::string json_error_reason(const nlohmann::json::exception& e);

// " at line L, column C: REASON, near '...'" for an error while parsing `text` (the input
// given to parse), meant to follow "invalid JSON" or the like; just ": REASON" for errors
// that are not parse errors. Line and column are 1-based, the column in bytes.
std::string json_error_at(const nlohmann::json::exception& e, std::string_view text);

}  // namespace qlora
