#pragma once
// Errors in qlora.cpp are exceptions of one type carrying a message a user can act
// on: it names the file (or option) and what is wrong with it. Library code throws;
// the CLI catches at the top, prints the message and exits non-zero.
#include <stdexcept>
#include <string>
#include <string_view>

namespace qlora {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws Error("<where>: <what>"). `where` is usually a file path or an option name.
[[noreturn]] void fail(std::string_view where, std::string_view what);

// Throws Error(what) when `cond` is false. Use for validating input, not for
// programming errors (those are asserts).
inline void check(bool cond, std::string_view where, std::string_view what) {
  if (!cond) fail(where, what);
}

}  // namespace qlora
