// Every SIMD blockwise kernel against the scalar references, bit for bit: packed codes,
// absmax, and dequantized f32 / bf16 / f16, on awkward sizes, every blocksize, both 4-bit
// types, with planted ties, zeros, all-zero blocks, denormals and extremes. Also the
// threaded dispatch (the public functions) on a large tensor.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/error.h"
#include "quant/blockwise.h"
#include "quant/blockwise_kernels.h"
#include "quant/codebook.h"

namespace qlora {
namespace {

using kernels::BlockwiseKernels;

const int kBlocksizes[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
const int64_t kSizes[] = {1, 2, 3, 31, 32, 33, 63, 64, 65, 127, 1000, 4097, 100003};
const QuantType kTypes[] = {QuantType::NF4, QuantType::FP4};

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Index of the first difference between two arrays compared bytewise as T, or -1.
template <class T>
int64_t first_diff(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<int64_t>(i);
  return -1;
}

std::string describe(int64_t n, int bs, QuantType t) {
  return "n=" + std::to_string(n) + " blocksize=" + std::to_string(bs) + " " + std::string(quant_type_name(t));
}

const float kInf = std::numeric_limits<float>::infinity();

// Quiet NaNs of both signs and varied payloads: which NaN a max keeps is then visible.
float nan_with_payload(int64_t i) {
  const uint32_t payload = static_cast<uint32_t>(i * 2654435761u) & 0x003FFFFFu;
  return from_bits((i % 2 ? 0xFFC00000u : 0x7FC00000u) | payload);
}

// Input for quantization: N(0, sigma) with planted hard cases. Ties are planted in blocks
// whose absmax is a power of two (so 1/absmax and the products are exact): every 4-bit
// midpoint, its float neighbours, every code value, and the values where "nearest by
// float32 distance" and "midpoint bucket" disagree, all times that absmax. Other blocks:
// all zeros, denormals, huge values, -0, NaN and inf mixed in, all NaN.
std::vector<float> make_input(int64_t n, int bs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 15);
  std::vector<float> special;
  for (QuantType t : kTypes) {
    const auto& q = kernels::quant4_search(t);
    for (int i = 0; i < 15; ++i) {
      special.push_back(q.mid[i]);
      special.push_back(std::nextafter(q.mid[i], 2.0f));
      special.push_back(std::nextafter(q.mid[i], -2.0f));
    }
    for (float c : codebook_4bit(t)) special.push_back(c);
  }
  for (uint32_t u : {0x3f006d04u, 0x3f5c89dau, 0xbe703cecu, 0xbeadea76u, 0xbf1c5270u, 0xbf591cd8u})
    special.push_back(from_bits(u));
  special.push_back(0.0f);
  special.push_back(-0.0f);

  std::vector<float> x(static_cast<size_t>(n));
  const int64_t nb = num_blocks(n, bs);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t s = b * bs, e = std::min<int64_t>(n, s + bs);
    const int kind = static_cast<int>(b % 9);
    const float pow2 = std::ldexp(1.0f, static_cast<int>(b % 5) * 3 - 6);
    for (int64_t i = s; i < e; ++i) {
      float v = nd(rng);
      switch (kind) {
        case 0: v *= 0.02f; break;                                                   // weight-like
        case 1: v = 0.0f; break;                                                     // all-zero block
        case 2: v = special[static_cast<size_t>(i) % special.size()] * pow2; break;  // ties
        case 3: v *= 1e-41f; break;                                                  // denormals
        case 4: v = (i % 3 == 0) ? 0.0f : v * 1e30f; break;                          // huge, zeros
        case 5: v = (i % 2) ? -0.0f : v * 1e-39f; break;                             // tiny, -0
        case 6: v = special[static_cast<size_t>(pick(rng))] * 3.0f; break;          // absmax not pow2
        case 7: v = (i % 5 == 1) ? nan_with_payload(i) : (i % 7 == 2) ? -kInf : v; break;  // NaN, inf
        default: v = nan_with_payload(i); break;                                             // all NaN
      }
      x[static_cast<size_t>(i)] = v;
    }
    // Blocks of planted ties get an element of exactly pow2 so absmax is pow2.
    if (kind == 2 && e > s) x[static_cast<size_t>(s)] = (b % 2) ? pow2 : -pow2;
  }
  return x;
}

// absmax values for dequantization: typical, zero, denormal, tiny normal, huge, inf, NaN.
std::vector<float> make_absmax(int64_t nb, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.001f, 0.2f);
  const float specials[] = {0.0f, 1e-40f, 3e-39f, 1.5e-36f, 2.0f, 3e38f, -0.5f,
                            std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::denorm_min(), std::ldexp(1.0f, -118), std::ldexp(1.0f, -119)};
  std::vector<float> a(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b)
    a[static_cast<size_t>(b)] = (b % 3 == 2) ? specials[(b / 3) % std::size(specials)] : u(rng);
  return a;
}

std::vector<uint8_t> random_bytes(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(static_cast<size_t>(n));
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

class QuantSimd : public ::testing::TestWithParam<SimdLevel> {
 protected:
  void SetUp() override {
    if (static_cast<int>(GetParam()) > static_cast<int>(cpu_simd_level()))
      GTEST_SKIP() << "this CPU has no " << simd_level_name(GetParam()) << " (it has "
                   << simd_level_name(cpu_simd_level()) << "); that level is not tested here";
  }
  const BlockwiseKernels& k() const { return kernels::kernels_for(GetParam()); }
};

TEST_P(QuantSimd, Quantize4bitMatchesRef) {
  uint32_t seed = 1;
  for (QuantType t : kTypes)
    for (int bs : kBlocksizes)
      for (int64_t n : kSizes) {
        const auto x = make_input(n, bs, seed++);
        const int64_t nb = num_blocks(n, bs), np = packed_4bit_bytes(n);
        std::vector<uint8_t> p_ref(static_cast<size_t>(np), 0xAA), p(static_cast<size_t>(np), 0x55);
        std::vector<float> a_ref(static_cast<size_t>(nb), -1.0f), a(static_cast<size_t>(nb), -2.0f);
        quantize_4bit_ref(x.data(), n, bs, t, p_ref.data(), a_ref.data());
        k().quantize_4bit(x.data(), n, bs, t, p.data(), a.data());
        const int64_t da = first_diff(a, a_ref);
        ASSERT_EQ(da, -1) << describe(n, bs, t) << " absmax[" << da << "] " << a[da] << " vs ref " << a_ref[da];
        const int64_t dp = first_diff(p, p_ref);
        ASSERT_EQ(dp, -1) << describe(n, bs, t) << " packed[" << dp << "] = " << int(p[dp]) << " vs ref "
                          << int(p_ref[dp]) << " (x = " << x[2 * dp] << ", "
                          << (2 * dp + 1 < n ? x[2 * dp + 1] : 0.0f) << ")";
      }
}

TEST_P(QuantSimd, Dequantize4bitMatchesRef) {
  uint32_t seed = 100;
  for (QuantType t : kTypes)
    for (int bs : kBlocksizes)
      for (int64_t n : kSizes) {
        const int64_t nb = num_blocks(n, bs), np = packed_4bit_bytes(n);
        auto packed = random_bytes(np, seed++);
        if (n % 2) packed.back() &= 0xF0;  // the pad nibble is 0
        const auto absmax = make_absmax(nb, seed++);
        const size_t un = static_cast<size_t>(n);

        std::vector<float> f_ref(un), f(un);
        dequantize_4bit_f32_ref(packed.data(), absmax.data(), n, bs, t, f_ref.data());
        k().dequantize_4bit_f32(packed.data(), absmax.data(), n, bs, t, f.data());
        int64_t d = first_diff(f, f_ref);
        ASSERT_EQ(d, -1) << describe(n, bs, t) << " f32 out[" << d << "] " << std::hex << bits(f[d]) << " vs ref "
                         << bits(f_ref[d]);

        std::vector<uint16_t> h_ref(un), h(un);
        dequantize_4bit_bf16_ref(packed.data(), absmax.data(), n, bs, t, h_ref.data());
        k().dequantize_4bit_bf16(packed.data(), absmax.data(), n, bs, t, h.data());
        d = first_diff(h, h_ref);
        ASSERT_EQ(d, -1) << describe(n, bs, t) << " bf16 out[" << d << "] " << std::hex << h[d] << " vs ref "
                         << h_ref[d] << " (absmax " << absmax[d / bs] << ")";

        dequantize_4bit_f16_ref(packed.data(), absmax.data(), n, bs, t, h_ref.data());
        k().dequantize_4bit_f16(packed.data(), absmax.data(), n, bs, t, h.data());
        d = first_diff(h, h_ref);
        ASSERT_EQ(d, -1) << describe(n, bs, t) << " f16 out[" << d << "] " << std::hex << h[d] << " vs ref "
                         << h_ref[d] << " (absmax " << absmax[d / bs] << ")";
      }
}

// Quantize then dequantize weight-like data: the path real models take.
TEST_P(QuantSimd, RoundTripMatchesRef) {
  const int64_t n = 65537;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> x(n);
  for (float& v : x) v = nd(rng);
  for (QuantType t : kTypes)
    for (int bs : {64, 4096}) {
      std::vector<uint8_t> p(static_cast<size_t>(packed_4bit_bytes(n)));
      std::vector<float> a(static_cast<size_t>(num_blocks(n, bs)));
      k().quantize_4bit(x.data(), n, bs, t, p.data(), a.data());
      std::vector<float> y(n), y_ref(n);
      k().dequantize_4bit_f32(p.data(), a.data(), n, bs, t, y.data());
      dequantize_4bit_f32_ref(p.data(), a.data(), n, bs, t, y_ref.data());
      ASSERT_EQ(first_diff(y, y_ref), -1) << describe(n, bs, t);
      double err = 0;
      for (int64_t i = 0; i < n; ++i) err = std::max(err, double(std::fabs(y[i] - x[i])) / a[i / bs]);
      EXPECT_LT(err, 0.21) << "max error relative to absmax, " << describe(n, bs, t);
    }
}

TEST_P(QuantSimd, Blockwise8bitMatchesRef) {
  uint32_t seed = 500;
  for (bool is_signed : {true, false}) {
    const float* code = dynamic_map_8bit(is_signed).data();
    for (int bs : kBlocksizes)
      for (int64_t n : kSizes) {
        auto x = make_input(n, bs, seed++);
        if (!is_signed)
          for (float& v : x) v = std::fabs(v);
        const int64_t nb = num_blocks(n, bs);
        std::vector<uint8_t> q_ref(static_cast<size_t>(n), 0xAA), q(static_cast<size_t>(n), 0x55);
        std::vector<float> a_ref(static_cast<size_t>(nb)), a(static_cast<size_t>(nb));
        quantize_8bit_blockwise_ref(x.data(), n, bs, code, q_ref.data(), a_ref.data());
        k().quantize_8bit_blockwise(x.data(), n, bs, code, q.data(), a.data());
        ASSERT_EQ(first_diff(a, a_ref), -1) << "8-bit absmax, n=" << n << " blocksize=" << bs;
        const int64_t dq = first_diff(q, q_ref);
        ASSERT_EQ(dq, -1) << "8-bit q[" << dq << "] " << int(q[dq]) << " vs ref " << int(q_ref[dq]) << ", n=" << n
                          << " blocksize=" << bs;

        const auto qr = random_bytes(n, seed++);
        const auto absmax = make_absmax(nb, seed++);
        std::vector<float> f_ref(static_cast<size_t>(n)), f(static_cast<size_t>(n));
        dequantize_8bit_blockwise_ref(qr.data(), absmax.data(), n, bs, code, f_ref.data());
        k().dequantize_8bit_blockwise(qr.data(), absmax.data(), n, bs, code, f.data());
        const int64_t df = first_diff(f, f_ref);
        ASSERT_EQ(df, -1) << "8-bit out[" << df << "] " << std::hex << bits(f[df]) << " vs ref " << bits(f_ref[df])
                          << std::dec << ", n=" << n << " blocksize=" << bs;
      }
  }
}

// The threaded path of this level (run_* splits on block boundaries across 2 threads).
TEST_P(QuantSimd, ThreadedMatchesRef) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(2);
  const int64_t n = 3'000'001;
  for (int bs : {32, 64, 4096}) {
    const auto x = make_input(n, bs, 900 + bs);
    const int64_t nb = num_blocks(n, bs), np = packed_4bit_bytes(n);
    std::vector<uint8_t> p_ref(np), p(np);
    std::vector<float> a_ref(nb), a(nb);
    quantize_4bit_ref(x.data(), n, bs, QuantType::NF4, p_ref.data(), a_ref.data());
    kernels::run_quantize_4bit(k(), x.data(), n, bs, QuantType::NF4, p.data(), a.data());
    ASSERT_EQ(first_diff(p, p_ref), -1) << "blocksize " << bs;
    ASSERT_EQ(first_diff(a, a_ref), -1) << "blocksize " << bs;
    std::vector<float> f_ref(n), f(n);
    dequantize_4bit_f32_ref(p_ref.data(), a_ref.data(), n, bs, QuantType::NF4, f_ref.data());
    kernels::run_dequantize_4bit_f32(k(), p_ref.data(), a_ref.data(), n, bs, QuantType::NF4, f.data());
    ASSERT_EQ(first_diff(f, f_ref), -1) << "blocksize " << bs;
    std::vector<uint16_t> h_ref(n), h(n);
    dequantize_4bit_bf16_ref(p_ref.data(), a_ref.data(), n, bs, QuantType::NF4, h_ref.data());
    kernels::run_dequantize_4bit_bf16(k(), p_ref.data(), a_ref.data(), n, bs, QuantType::NF4, h.data());
    ASSERT_EQ(first_diff(h, h_ref), -1) << "blocksize " << bs;
  }
  omp_set_num_threads(saved);
}

INSTANTIATE_TEST_SUITE_P(Levels, QuantSimd, ::testing::Values(SimdLevel::Scalar, SimdLevel::AVX2, SimdLevel::AVX512),
                         [](const auto& info) { return std::string(simd_level_name(info.param)); });

// The public (dispatched, multithreaded) functions on a large tensor, at whatever level
// this CPU and QLORA_SIMD select.
TEST(QuantSimdDispatch, LargeTensorMatchesRef) {
  const int64_t n = 4'194'305;  // 2^22 + 1: odd, a partial last block
  const int bs = 64;
  const auto x = make_input(n, bs, 4242);
  for (QuantType t : kTypes) {
    const int64_t nb = num_blocks(n, bs), np = packed_4bit_bytes(n);
    std::vector<uint8_t> p_ref(np), p(np);
    std::vector<float> a_ref(nb), a(nb);
    quantize_4bit_ref(x.data(), n, bs, t, p_ref.data(), a_ref.data());
    quantize_4bit(x.data(), n, bs, t, p.data(), a.data());
    ASSERT_EQ(first_diff(p, p_ref), -1) << simd_level_name(simd_level());
    ASSERT_EQ(first_diff(a, a_ref), -1);

    std::vector<float> f_ref(n), f(n);
    dequantize_4bit_f32_ref(p_ref.data(), a_ref.data(), n, bs, t, f_ref.data());
    dequantize_4bit_f32(p_ref.data(), a_ref.data(), n, bs, t, f.data());
    ASSERT_EQ(first_diff(f, f_ref), -1);
    std::vector<uint16_t> h_ref(n), h(n);
    dequantize_4bit_bf16_ref(p_ref.data(), a_ref.data(), n, bs, t, h_ref.data());
    dequantize_4bit_bf16(p_ref.data(), a_ref.data(), n, bs, t, h.data());
    ASSERT_EQ(first_diff(h, h_ref), -1);
    dequantize_4bit_f16_ref(p_ref.data(), a_ref.data(), n, bs, t, h_ref.data());
    dequantize_4bit_f16(p_ref.data(), a_ref.data(), n, bs, t, h.data());
    ASSERT_EQ(first_diff(h, h_ref), -1);
  }
  const float* code = dynamic_map_8bit(true).data();
  const int64_t nb = num_blocks(n, 256);
  std::vector<uint8_t> q_ref(n), q(n);
  std::vector<float> a_ref(nb), a(nb);
  quantize_8bit_blockwise_ref(x.data(), n, 256, code, q_ref.data(), a_ref.data());
  quantize_8bit_blockwise(x.data(), n, 256, code, q.data(), a.data());
  ASSERT_EQ(first_diff(q, q_ref), -1);
  ASSERT_EQ(first_diff(a, a_ref), -1);
  std::vector<float> f_ref(n), f(n);
  dequantize_8bit_blockwise_ref(q_ref.data(), a_ref.data(), n, 256, code, f_ref.data());
  dequantize_8bit_blockwise(q_ref.data(), a_ref.data(), n, 256, code, f.data());
  ASSERT_EQ(first_diff(f, f_ref), -1);
}

TEST(QuantSimdDispatch, RejectsBadArguments) {
  float x[4] = {1, 2, 3, 4};
  uint8_t p[2];
  float a[1];
  EXPECT_THROW(quantize_4bit(x, 4, 48, QuantType::NF4, p, a), Error);
  EXPECT_THROW(quantize_4bit(x, 4, 8192, QuantType::NF4, p, a), Error);
  EXPECT_THROW(dequantize_4bit_f32(p, a, -1, 64, QuantType::NF4, x), Error);
  EXPECT_NO_THROW(dequantize_4bit_f32(p, a, 0, 64, QuantType::NF4, x));
}

}  // namespace
}  // namespace qlora
