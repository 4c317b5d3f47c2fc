// Quantization error of NF4 vs FP4 vs plain symmetric int4 (blocksize 64), on N(0,1)
// samples and on the real weights of stories260K, and bits per parameter with and
// without double quantization. This reproduces the reason NF4 exists: trained weights
// are roughly normal, and NF4's levels are the normal distribution's quantiles.
//
//   build/report_quant_error [path/to/stories260K.bin]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "base/mapped_file.h"
#include "quant/quant_state.h"

using namespace qlora;

namespace {

struct Err {
  double mae = 0, rmse = 0;
};

Err error_of(const std::vector<float>& x, const std::vector<float>& y) {
  double a = 0, s = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double d = static_cast<double>(x[i]) - static_cast<double>(y[i]);
    a += std::fabs(d);
    s += d * d;
  }
  return {a / static_cast<double>(x.size()), std::sqrt(s / static_cast<double>(x.size()))};
}

// Plain symmetric int4 with the same blockwise absmax: 15 levels k/7, k = -7..7,
// round to nearest. The baseline NF4 and FP4 are compared against.
std::vector<float> int4_roundtrip(const std::vector<float>& x, int bs) {
  std::vector<float> y(x.size());
  for (size_t b = 0; b < x.size(); b += static_cast<size_t>(bs)) {
    size_t e = std::min(x.size(), b + static_cast<size_t>(bs));
    float m = 0;
    for (size_t i = b; i < e; ++i) m = std::max(m, std::fabs(x[i]));
    for (size_t i = b; i < e; ++i) {
      float q = m > 0 ? std::nearbyint(x[i] / m * 7.0f) : 0.0f;
      y[i] = q / 7.0f * m;
    }
  }
  return y;
}

std::vector<float> roundtrip_4bit(const std::vector<float>& x, QuantType t, int bs, bool dq) {
  auto q = quantize_tensor_4bit(x.data(), {static_cast<int64_t>(x.size())}, t, bs, dq, ComputeDType::F32);
  std::vector<float> y(x.size());
  dequantize_tensor_4bit(q, y.data());
  return y;
}

void report(const char* name, const std::vector<float>& x) {
  const int bs = 64;
  std::printf("\n%s (%zu values, blocksize %d)\n", name, x.size(), bs);
  std::printf("| format | mean abs error | RMS error | bits/param |\n|---|---|---|---|\n");
  struct Variant {
    const char* label;
    QuantType t;
    bool dq;
  };
  const Variant variants[] = {{"NF4", QuantType::NF4, false},
                              {"NF4 + double quant", QuantType::NF4, true},
                              {"FP4", QuantType::FP4, false},
                              {"FP4 + double quant", QuantType::FP4, true}};
  for (const auto& [label, t, dq] : variants) {
    auto q = quantize_tensor_4bit(x.data(), {static_cast<int64_t>(x.size())}, t, bs, dq, ComputeDType::F32);
    Err e = error_of(x, roundtrip_4bit(x, t, bs, dq));
    std::printf("| %s | %.6f | %.6f | %.4f |\n", label, e.mae, e.rmse, q.bits_per_param());
  }
  Err e = error_of(x, int4_roundtrip(x, bs));
  std::printf("| int4 symmetric (absmax) | %.6f | %.6f | %.4f |\n", e.mae, e.rmse, 4.0 + 32.0 / bs);
}

}  // namespace

int main(int argc, char** argv) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> gauss(1 << 22);
  for (auto& v : gauss) v = nd(rng);
  report("N(0,1) samples", gauss);

  const char* env = std::getenv("QLORA_DATA_DIR");
  std::string path = argc > 1 ? argv[1] : std::string(env ? env : QLORA_DEFAULT_DATA_DIR) + "/stories260K/stories260K.bin";
  MappedFile f(path);
  int32_t h[7];
  std::memcpy(h, f.bytes().data(), sizeof h);
  const int64_t dim = h[0], hidden = h[1], L = h[2], heads = h[3], kv = h[4], vocab = std::abs(h[5]);
  const int64_t kvdim = dim / heads * kv;
  // Linear weights of the blocks, in file order after the embedding and attention norms.
  const float* p = reinterpret_cast<const float*>(f.bytes().data() + sizeof h);
  p += vocab * dim + L * dim;
  std::vector<float> w;
  auto take = [&](int64_t n) { w.insert(w.end(), p, p + n); p += n; };
  take(L * dim * dim);        // wq
  take(L * kvdim * dim);      // wk
  take(L * kvdim * dim);      // wv
  take(L * dim * dim);        // wo
  p += L * dim;               // ffn norms (not Linear)
  take(L * hidden * dim * 3); // w1, w2, w3
  report(("stories260K Linear weights (" + path + ")").c_str(), w);
  return 0;
}
