#include "base/error.h"

namespace qlora {

void fail(std::string_view where, std::string_view what) {
  std::string msg;
  if (!where.empty()) {
    msg.append(where);
    msg.append(": ");
  }
  msg.append(what);
  throw Error(msg);
}

}  // namespace qlora
