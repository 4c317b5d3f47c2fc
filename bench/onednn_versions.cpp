// dnnl_sgemm of two oneDNN builds on the training shapes, one library per process: the one
// whose path is argv[1] is loaded with dlopen, so Debian's oneDNN 2.6 (libdnnl.so.2, what
// qlora links) and a newer one from PyPI (onednn-cpu-gomp: libdnnl.so.3) can be compared on
// the same machine without linking either. dnnl_sgemm's C signature is the same in 2.x and
// 3.x. Prints GFLOP/s (best of 7 after a warm-up) per shape. Built and run by
// bench/onednn_versions.sh; issue 14 asked whether a newer oneDNN should replace Debian's.
#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

using sgemm_fn = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                         float, float*, int64_t);

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s LIBDNNL.so\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr, "%s\n", dlerror());
    return 1;
  }
  const auto sgemm = reinterpret_cast<sgemm_fn>(dlsym(lib, "dnnl_sgemm"));
  if (!sgemm) {
    std::fprintf(stderr, "%s: no dnnl_sgemm\n", argv[1]);
    return 1;
  }
  struct Shape {
    int64_t M, N, K;
    char ta, tb;
    const char* what;
  };
  // Llama 1.1B's block products at 256 tokens (forward NT, input gradient NN), SmolLM2's at 512.
  const Shape shapes[] = {{256, 2048, 2048, 'N', 'T', "1.1B q/o fwd"},  {256, 5632, 2048, 'N', 'T', "1.1B gate/up fwd"},
                          {256, 2048, 5632, 'N', 'T', "1.1B down fwd"}, {256, 2048, 2048, 'N', 'N', "1.1B q/o bwd"},
                          {256, 2048, 5632, 'N', 'N', "1.1B gate/up bwd"}, {256, 5632, 2048, 'N', 'N', "1.1B down bwd"},
                          {512, 576, 576, 'N', 'T', "SmolLM2 q/o fwd"}, {512, 1536, 576, 'N', 'T', "SmolLM2 up fwd"},
                          {512, 576, 1536, 'N', 'N', "SmolLM2 up bwd"}};
  std::mt19937 g(1);
  std::uniform_real_distribution<float> d(-0.5f, 0.5f);
  for (const Shape& s : shapes) {
    std::vector<float> a(static_cast<size_t>(s.M * s.K)), b(static_cast<size_t>(s.K * s.N)),
        c(static_cast<size_t>(s.M * s.N));
    for (float& v : a) v = d(g);
    for (float& v : b) v = d(g);
    const int64_t lda = s.ta == 'N' ? s.K : s.M, ldb = s.tb == 'N' ? s.N : s.K;
    sgemm(s.ta, s.tb, s.M, s.N, s.K, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), s.N);
    double best = 1e30;
    for (int r = 0; r < 7; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      sgemm(s.ta, s.tb, s.M, s.N, s.K, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), s.N);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("%-18s %5lld x %5lld x %5lld %c%c  %6.1f GFLOP/s\n", s.what, static_cast<long long>(s.M),
                static_cast<long long>(s.N), static_cast<long long>(s.K), s.ta, s.tb,
                2.0 * static_cast<double>(s.M * s.N * s.K) / best / 1e9);
  }
  return 0;
}
