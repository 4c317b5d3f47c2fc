#include "model/device_runner.h"

#include <charconv>

#include "base/error.h"

namespace qlora {

float DeviceRunner::forward_backward(LoraModel&, std::span<const int>, std::span<const int>, const TrainStepOptions&,
                                     LoraRng*, std::span<const int32_t>) const {
  fail("--device", "training does not run on " + describe() + " yet");
}

float DeviceRunner::forward_loss(const LoraModel&, std::span<const int>, std::span<const int>,
                                 std::span<const int32_t>) const {
  fail("--device", "evaluation does not run on " + describe() + " yet");
}

DeviceChoice parse_device(std::string_view s) {
  DeviceChoice d;
  if (s == "cpu") return d;
  if (s == "cuda") {
    d.cuda = true;
    return d;
  }
  if (s.substr(0, 5) == "cuda:" && s.size() > 5) {
    const char* b = s.data() + 5;
    const char* e = s.data() + s.size();
    int idx = -1;
    const auto r = std::from_chars(b, e, idx);
    if (r.ec == std::errc() && r.ptr == e && idx >= 0) {
      d.cuda = true;
      d.index = idx;
      return d;
    }
  }
  // Appended piece by piece: "'" + std::string(s) trips GCC 12's -Wrestrict false positive.
  std::string msg(1, '\'');
  msg.append(s);
  msg.append("' is not a device: use cpu, cuda or cuda:N (N = 0, 1, ...)");
  fail("--device", msg);
}

#ifndef QLORA_HAVE_CUDA
namespace {
[[noreturn]] void no_cuda() {
  fail("--device", "this qlora was built without the CUDA backend; rebuild with -DQLORA_CUDA=ON "
                   "(needs the CUDA toolkit: nvcc and cuBLAS)");
}
}  // namespace

bool cuda_backend_built() { return false; }

bool device_free_memory(const DeviceChoice&, uint64_t*, uint64_t*) { return false; }

void check_device_available(const DeviceChoice& d) {
  if (d.cuda) no_cuda();
}

std::shared_ptr<const DeviceRunner> make_cuda_runner(const Model&, int) { no_cuda(); }
#endif

}  // namespace qlora
