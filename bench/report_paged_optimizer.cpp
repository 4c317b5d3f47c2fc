// Steps one optimizer over synthetic parameters and reports time per step, state size and
// where the memory went (anonymous vs file-backed resident pages). Used by
// bench/paged_optimizer_demo.sh to show a paged optimizer surviving a memory limit that
// kills the same run with in-memory state, and to time the optimizers.
//
//   build/report_paged_optimizer --optim adamw_torch|adamw_8bit|paged_adamw_32bit|paged_adamw_8bit
//       [--params-m 30] [--tensor-m 1] [--steps 5] [--paged-dir DIR]
//
// Parameters are float32 tensors of --tensor-m million elements each (plus their
// gradients), --params-m million in all; gradients change every step.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "optim/optimizer.h"

using namespace qlora;

namespace {

// "RssAnon:" / "RssFile:" of /proc/self/status, in MiB (-1 when unknown).
double status_mib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + std::strlen(key)) / 1024.0;
  return -1;
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: report_paged_optimizer --optim NAME [--params-m 30] [--tensor-m 1] [--steps 5] "
               "[--paged-dir DIR]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string optim = "adamw_torch", paged_dir;
  double params_m = 30, tensor_m = 1;
  int steps = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage();
    const char* v = argv[++i];
    if (a == "--optim")
      optim = v;
    else if (a == "--params-m")
      params_m = std::atof(v);
    else if (a == "--tensor-m")
      tensor_m = std::atof(v);
    else if (a == "--steps")
      steps = std::atoi(v);
    else if (a == "--paged-dir")
      paged_dir = v;
    else
      usage();
  }
  try {
    const OptimKind kind = optim_kind_from_string(optim);
    const int64_t total = static_cast<int64_t>(params_m * 1e6), per = static_cast<int64_t>(tensor_m * 1e6);
    check(total > 0 && per > 0 && steps > 0, "report_paged_optimizer", "sizes and steps must be positive");
    std::vector<std::vector<float>> values, grads;
    for (int64_t done = 0; done < total; done += per) {
      const int64_t n = std::min(per, total - done);
      values.emplace_back(static_cast<size_t>(n), 0.01f);
      grads.emplace_back(static_cast<size_t>(n), 0.f);
    }
    std::vector<AdamWParam> params;
    for (size_t k = 0; k < values.size(); ++k) {
      std::string name = "p";  // (not "p" + to_string: GCC 12 warns falsely, bug 105329)
      name += std::to_string(k);
      params.push_back({name, values[k], grads[k]});
    }
    AdamWConfig cfg;
    cfg.lr = 1e-3;
    auto opt = make_optimizer(kind, std::move(params), cfg, paged_dir);
    std::printf("%s: %.1fM parameters in %zu tensors, %.1f MiB of optimizer state%s\n", optim_kind_name(kind),
                static_cast<double>(total) / 1e6, values.size(), static_cast<double>(opt->state_bytes()) / (1 << 20),
                optim_is_paged(kind) ? " (file-backed)" : "");
    std::fflush(stdout);
    double best = 1e30, sum = 0;
    for (int s = 1; s <= steps; ++s) {
      for (size_t k = 0; k < grads.size(); ++k)
        for (size_t i = 0; i < grads[k].size(); ++i)
          grads[k][i] = 1e-3f * static_cast<float>((i * 2654435761u + static_cast<size_t>(s) * 97u + k) % 2001) - 1.f;
      const auto t0 = std::chrono::steady_clock::now();
      opt->step(cfg.lr);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, dt);
      sum += dt;
      std::printf("  step %d: %.3f s   resident: anon %.0f MiB, file-backed %.0f MiB\n", s, dt, status_mib("RssAnon:"),
                  status_mib("RssFile:"));
      std::fflush(stdout);
    }
    double checksum = 0;
    for (const auto& v : values)
      for (float x : v) checksum += x;
    std::printf("done: %d steps, best %.3f s/step, mean %.3f s/step (%.1f ns/parameter), checksum %.6f\n", steps,
                best, sum / steps, best / static_cast<double>(total) * 1e9, checksum);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
