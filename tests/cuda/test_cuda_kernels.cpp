// Every CUDA kernel against the CPU backend's own op on random inputs of awkward sizes
// (odd lengths, rows that are not a multiple of the warp width, partial quant blocks).
// Tolerances are named per test: exact bits where the CPU's result is exact and the
// kernel performs the same float operations (dequantization, rotary, residual, embedding);
// float32 summation-order tolerances for dot products. Without a GPU every test skips,
// saying so.
#include <gtest/gtest.h>
#include "cuda_test_util.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "base/float_formats.h"
#include "cuda/blas.h"
#include "cuda/cuda_error.h"
#include "cuda/device_buffer.h"
#include "cuda/device_weights.h"
#include "cuda/kernels.h"
#include "model/ops.h"
#include "model/quant_linear.h"
#include "quant/quant_state.h"

using namespace qlora;
using namespace qlora::cuda;
using namespace qlora::test;

namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// |a - b| <= tol * scale[i] + 1e-30, reporting the first few misses.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& scale,
                  double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= tol * scale[i] + 1e-30)) {
      if (++bad <= 5)
        ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << " want " << want[i] << " (allowed "
                      << tol * scale[i] << ")";
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

// ---- 4-bit dequantization: exact bits -------------------------------------------------

struct DequantCase {
  QuantType type;
  int blocksize;
  int64_t n;
  bool nested;
};

TEST(CudaKernels, DequantizeQ4MatchesCpuBitForBit) {
  REQUIRE_GPU();
  const DequantCase cases[] = {
      {QuantType::NF4, 64, 1, false},         {QuantType::NF4, 64, 7, true},
      {QuantType::FP4, 32, 1000001, false},   {QuantType::NF4, 64, 64 * 1234 + 5, true},
      {QuantType::NF4, 4096, 3 * 4096 + 8, true}, {QuantType::FP4, 128, 256 * 130 + 1, true},
      {QuantType::NF4, 64, 4096 * 300, true},
  };
  for (const DequantCase& c : cases) {
    const std::string what = std::string(c.type == QuantType::NF4 ? "nf4" : "fp4") + " bs " +
                             std::to_string(c.blocksize) + " n " + std::to_string(c.n) + (c.nested ? " nested" : "");
    const std::vector<float> x = randn(static_cast<size_t>(c.n), static_cast<uint32_t>(c.n), 0.02f);
    const Quantized4bit q = quantize_tensor_4bit(x.data(), {c.n}, c.type, c.blocksize, c.nested, ComputeDType::F32);
    DeviceQ4 d = upload_q4(q, 1, c.n, ComputeDType::F32);
    std::vector<float> want(static_cast<size_t>(c.n));
    dequantize_tensor_4bit(q, want.data());
    DeviceBuffer<float> out32(static_cast<size_t>(c.n));
    dequantize_q4(d.view, DenseType::F32, out32.data(), nullptr);
    const std::vector<float> got = out32.to_host();
    int bad = 0;
    for (int64_t i = 0; i < c.n; ++i) bad += bits(got[i]) != bits(want[i]);
    EXPECT_EQ(bad, 0) << what << " f32";
    for (DenseType t : {DenseType::BF16, DenseType::F16}) {
      std::vector<uint16_t> want16(static_cast<size_t>(c.n));
      dequantize_tensor_4bit(q, want16.data(), t == DenseType::BF16 ? DType::BF16 : DType::F16);
      DeviceBuffer<uint16_t> out16(static_cast<size_t>(c.n));
      dequantize_q4(d.view, t, out16.data(), nullptr);
      EXPECT_EQ(out16.to_host(), want16) << what << (t == DenseType::BF16 ? " bf16" : " f16");
    }
  }
}

// ---- matrix-vector products -------------------------------------------------------------

// The reference: the CPU's dequantized rows (rounded to the compute dtype, exactly what
// its kernels multiply with) times x, summed in double. Tolerance: 1e-5 of sum |w x|.
void check_gemv_q4(int64_t rows, int64_t cols, int T, ComputeDType dt, bool nested,
                   GemvQ4Kernel kernel = GemvQ4Kernel::Auto) {
  const std::string what = "gemv_q4 " + std::to_string(rows) + "x" + std::to_string(cols) + " T " +
                           std::to_string(T) + " dt " + std::to_string(static_cast<int>(dt)) +
                           (nested ? " nested" : "") + " kernel " + std::to_string(static_cast<int>(kernel));
  const std::vector<float> w = randn(static_cast<size_t>(rows * cols), 7, 0.05f);
  QuantOptions qo;
  qo.double_quant = nested;
  const QuantLinear lin(w.data(), rows, cols, qo, dt);
  std::vector<float> wd(static_cast<size_t>(rows * cols));
  lin.dequantize_rows(0, rows, wd.data());
  std::vector<float> x = randn(static_cast<size_t>(T * cols), 9);
  std::vector<float> want(static_cast<size_t>(T * rows));
  std::vector<double> scale(want.size());
  for (int t = 0; t < T; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0, mag = 0;
      for (int64_t c = 0; c < cols; ++c) {
        acc += static_cast<double>(wd[r * cols + c]) * x[t * cols + c];
        mag += std::fabs(static_cast<double>(wd[r * cols + c]) * x[t * cols + c]);
      }
      want[t * rows + r] = static_cast<float>(acc);
      scale[t * rows + r] = mag;
    }
  DeviceQ4 d = upload_q4(*lin.q4(), rows, cols, dt);
  DeviceBuffer<float> dx(x), dy(static_cast<size_t>(T * rows));
  gemv_q4(d.view, dx.data(), T, dy.data(), rows, nullptr, kernel);
  expect_close(dy.to_host(), want, scale, 1e-5, what);
}

TEST(CudaKernels, GemvQ4MatchesCpuDequantizedProduct) {
  REQUIRE_GPU();
  check_gemv_q4(37, 96, 1, ComputeDType::F32, false);
  check_gemv_q4(1000, 4128, 1, ComputeDType::F32, true);
  check_gemv_q4(515, 2048, 3, ComputeDType::BF16, true);
  check_gemv_q4(64, 1024, 8, ComputeDType::F16, false);
  check_gemv_q4(33, 100, 2, ComputeDType::F32, true);   // cols % 32 != 0: the generic kernel
  check_gemv_q4(7, 33, 5, ComputeDType::BF16, false);   // odd element count
  check_gemv_q4(40, 11008, 8, ComputeDType::F32, true);  // x too big for shared memory: x read from global
  check_gemv_q4(40, 11008, 8, ComputeDType::BF16, false);
  check_gemv_q4(300, 11008, 1, ComputeDType::BF16, true);  // shared x past the 48 KB default limit
}

// Each kernel by name on the shapes that stress it: rows not a multiple of the tiled
// kernel's rows per block, rows split over several warps with the last warp partly idle
// (4128 = 129 chunks), fewer rows than one tile, every rounding mode, both absmax layouts.
TEST(CudaKernels, EveryGemvQ4KernelMatchesCpu) {
  REQUIRE_GPU();
  for (const GemvQ4Kernel k : {GemvQ4Kernel::Tiled, GemvQ4Kernel::Staged, GemvQ4Kernel::Direct}) {
    check_gemv_q4(1, 64, 1, ComputeDType::F32, false, k);
    check_gemv_q4(37, 96, 1, ComputeDType::BF16, true, k);
    check_gemv_q4(1001, 4128, 1, ComputeDType::BF16, true, k);
    check_gemv_q4(515, 4128, 2, ComputeDType::F16, false, k);
    check_gemv_q4(300, 2048, 2, ComputeDType::F32, true, k);
    check_gemv_q4(67, 11008, 1, ComputeDType::BF16, true, k);
    check_gemv_q4(4099, 576, 1, ComputeDType::F32, false, k);
  }
  check_gemv_q4(70, 1536, 1, ComputeDType::BF16, true, GemvQ4Kernel::Generic);
  // Asking for a kernel that cannot run the shape is an error, not a wrong answer.
  const std::vector<float> w = randn(3 * 100, 7, 0.05f);
  const QuantLinear lin(w.data(), 3, 100, QuantOptions{}, ComputeDType::F32);
  DeviceQ4 d = upload_q4(*lin.q4(), 3, 100, ComputeDType::F32);
  DeviceBuffer<float> dx(std::vector<float>(300, 1.0f)), dy(24);
  EXPECT_THROW(gemv_q4(d.view, dx.data(), 1, dy.data(), 3, nullptr, GemvQ4Kernel::Tiled), Error);
  EXPECT_THROW(gemv_q4(d.view, dx.data(), 3, dy.data(), 3, nullptr, GemvQ4Kernel::Tiled), Error);
  EXPECT_EQ(gemv_q4_auto(d.view, 1), GemvQ4Kernel::Generic);
}

TEST(CudaKernels, GemvDenseMatchesCpu) {
  REQUIRE_GPU();
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16})
    for (int64_t cols : {4096, 100, 37})
      for (int T : {1, 4, 8}) {
        const int64_t rows = 131;
        const std::vector<float> w = randn(static_cast<size_t>(rows * cols), 3, 0.05f);
        const DenseWeight dw(w.data(), rows, cols, dt);
        std::vector<float> wf(w.size());
        dw.rows_to_f32(0, rows, wf.data());
        const std::vector<float> x = randn(static_cast<size_t>(T * cols), 4);
        std::vector<float> want(static_cast<size_t>(T * rows));
        std::vector<double> scale(want.size());
        for (int t = 0; t < T; ++t)
          for (int64_t r = 0; r < rows; ++r) {
            double acc = 0, mag = 0;
            for (int64_t c = 0; c < cols; ++c) {
              acc += static_cast<double>(wf[r * cols + c]) * x[t * cols + c];
              mag += std::fabs(static_cast<double>(wf[r * cols + c]) * x[t * cols + c]);
            }
            want[t * rows + r] = static_cast<float>(acc);
            scale[t * rows + r] = mag;
          }
        DeviceDense d = upload_dense(dw);
        DeviceBuffer<float> dx(x), dy(static_cast<size_t>(T * rows));
        gemv_dense(d.data(), d.type, rows, cols, dx.data(), T, dy.data(), rows, nullptr);
        expect_close(dy.to_host(), want, scale, 1e-5,
                     "gemv_dense cols " + std::to_string(cols) + " T " + std::to_string(T));
      }
}

TEST(CudaKernels, GemmMatchesDoubleReference) {
  REQUIRE_GPU();
  Blas blas;
  const int64_t M = 77, N = 301, K = 519;
  std::vector<float> x = randn(static_cast<size_t>(M * K), 1), w = randn(static_cast<size_t>(N * K), 2);
  for (DenseType t : {DenseType::F32, DenseType::BF16, DenseType::F16}) {
    // 16-bit: the reference multiplies the rounded inputs (what the GEMM sees).
    std::vector<float> xr = x, wr = w;
    std::vector<uint16_t> x16(x.size()), w16(w.size());
    if (t != DenseType::F32) {
      for (size_t i = 0; i < x.size(); ++i) {
        x16[i] = t == DenseType::BF16 ? f32_to_bf16(x[i]) : f32_to_fp16(x[i]);
        xr[i] = t == DenseType::BF16 ? bf16_to_f32(x16[i]) : fp16_to_f32(x16[i]);
      }
      for (size_t i = 0; i < w.size(); ++i) {
        w16[i] = t == DenseType::BF16 ? f32_to_bf16(w[i]) : f32_to_fp16(w[i]);
        wr[i] = t == DenseType::BF16 ? bf16_to_f32(w16[i]) : fp16_to_f32(w16[i]);
      }
    }
    std::vector<float> want(static_cast<size_t>(M * N));
    std::vector<double> scale(want.size());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          acc += static_cast<double>(xr[m * K + k]) * wr[n * K + k];
          mag += std::fabs(static_cast<double>(xr[m * K + k]) * wr[n * K + k]);
        }
        want[m * N + n] = static_cast<float>(acc);
        scale[m * N + n] = mag;
      }
    DeviceBuffer<float> dy(want.size());
    if (t == DenseType::F32) {
      DeviceBuffer<float> dx(x), dw(w);
      blas.sgemm_nt(M, N, K, 1.0f, dx.data(), K, dw.data(), K, 0.0f, dy.data(), N);
    } else {
      DeviceBuffer<uint16_t> dx(x16), dw(w16);
      blas.gemm16_nt(t, M, N, K, 1.0f, dx.data(), K, dw.data(), K, 0.0f, dy.data(), N);
    }
    expect_close(dy.to_host(), want, scale, 1e-5, "gemm type " + std::to_string(static_cast<int>(t)));
  }
}

// ---- block ops ------------------------------------------------------------------------

TEST(CudaKernels, EmbeddingRopeResidualAreExact) {
  REQUIRE_GPU();
  const int64_t V = 97, C = 130, T = 9, NH = 5, HS = 26;
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16}) {
    const std::vector<float> table = randn(static_cast<size_t>(V * C), 5);
    const DenseWeight wte(table.data(), V, C, dt);
    const std::vector<int> tok = {0, 96, 5, 5, 17, 40, 1, 2, 95};
    std::vector<float> want(static_cast<size_t>(T * C));
    qlora::embedding_forward(want.data(), tok.data(), T, wte);
    DeviceDense d = upload_dense(wte);
    DeviceBuffer<int32_t> dt_tok(std::vector<int32_t>(tok.begin(), tok.end()));
    DeviceBuffer<float> out(want.size());
    cuda::embedding_forward(out.data(), dt_tok.data(), T, d.data(), d.type, C, nullptr);
    EXPECT_EQ(out.to_host(), want);
  }
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(1000 + 3 * t);
  std::vector<float> cs(static_cast<size_t>(T * HS / 2)), sn(cs.size());
  rope_tables(cs.data(), sn.data(), pos.data(), T, HS, 10000.0f);
  std::vector<float> x = randn(static_cast<size_t>(T * NH * HS), 6), want = x;
  qlora::rope_forward(want.data(), cs.data(), sn.data(), T, NH, HS);
  DeviceBuffer<float> dx(x), dc(cs), ds(sn);
  cuda::rope_forward(dx.data(), dc.data(), ds.data(), T, NH, HS, nullptr);
  EXPECT_EQ(dx.to_host(), want) << "rope";
  const std::vector<float> a = randn(1001, 7), b = randn(1001, 8);
  std::vector<float> sum(1001);
  qlora::residual_forward(sum.data(), a.data(), b.data(), 1001);
  DeviceBuffer<float> da(a), db(b), dsum(1001);
  cuda::residual_forward(dsum.data(), da.data(), db.data(), 1001, nullptr);
  EXPECT_EQ(dsum.to_host(), sum) << "residual";
}

TEST(CudaKernels, RmsnormAndSwigluMatchCpu) {
  REQUIRE_GPU();
  const int64_t T = 7, C = 577;
  const std::vector<float> x = randn(static_cast<size_t>(T * C), 11), w = randn(static_cast<size_t>(C), 12);
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16}) {
    std::vector<float> want(x.size()), rstd(T);
    qlora::rmsnorm_forward(want.data(), rstd.data(), x.data(), w.data(), T, C, 1e-5f, dt);
    DeviceBuffer<float> dx(x), dw(w), out(x.size()), drstd(static_cast<size_t>(T));
    cuda::rmsnorm_forward(out.data(), drstd.data(), dx.data(), dw.data(), T, C, 1e-5f, dt, nullptr);
    // The sum of squares is reduced in another order: rstd within 2 float32 ulps, and the
    // output within that plus, after rounding to bf16/fp16, one step of the compute dtype.
    const double step = dt == ComputeDType::F32 ? 3e-6 : dt == ComputeDType::BF16 ? 1.0 / 128 : 1.0 / 1024;
    std::vector<double> scale(want.size());
    for (size_t i = 0; i < want.size(); ++i) scale[i] = std::fabs(want[i]) + 1e-6;
    expect_close(out.to_host(), want, scale, step, "rmsnorm dt " + std::to_string(static_cast<int>(dt)));
    std::vector<double> rscale(rstd.begin(), rstd.end());
    expect_close(drstd.to_host(), rstd, rscale, 2e-6, "rstd");
  }
  const std::vector<float> g = randn(5003, 13, 3.0f), u = randn(5003, 14);
  std::vector<float> want(5003);
  qlora::swiglu_forward(want.data(), g.data(), u.data(), 5003);
  DeviceBuffer<float> dg(g), du(u), out(5003);
  cuda::swiglu_forward(out.data(), dg.data(), du.data(), 5003, nullptr);
  std::vector<double> scale(want.size());
  for (size_t i = 0; i < want.size(); ++i) scale[i] = std::fabs(want[i]) + 1e-30;
  expect_close(out.to_host(), want, scale, 1e-6, "swiglu (expf vs glibc exp: a few ulps)");
}

void check_attention(int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HS, bool windowed) {
  const int64_t Tk = pos0 + T;
  const std::vector<float> q = randn(static_cast<size_t>(T * NH * HS), 21), k = randn(static_cast<size_t>(Tk * NKV * HS), 22),
                           v = randn(static_cast<size_t>(Tk * NKV * HS), 23);
  std::vector<int32_t> ks;
  if (windowed)
    for (int64_t t = 0; t < T; ++t) ks.push_back(static_cast<int32_t>(std::min<int64_t>(pos0 + t, (t / 3) * 3)));
  std::vector<float> want(q.size());
  std::vector<float> scores(static_cast<size_t>(qlora::attention_scratch_floats(T, Tk, NH)));
  qlora::attention_forward(want.data(), nullptr, scores.data(), q.data(), k.data(), v.data(), T, Tk, pos0, NH, NKV, HS,
                           windowed ? ks.data() : nullptr);
  DeviceBuffer<float> dq(q), dk(k), dv(v), out(q.size());
  DeviceBuffer<int32_t> dks;
  if (windowed) dks = DeviceBuffer<int32_t>(ks);
  cuda::attention_forward(out.data(), dq.data(), dk.data(), dv.data(), T, pos0, NH, NKV, HS,
                          windowed ? dks.data() : nullptr, nullptr);
  // Outputs are convex combinations of v rows (|v| ~ 1): an absolute tolerance.
  expect_close(out.to_host(), want, std::vector<double>(want.size(), 1.0), 2e-5,
               "attention T " + std::to_string(T) + " pos0 " + std::to_string(pos0));
}

TEST(CudaKernels, AttentionMatchesCpu) {
  REQUIRE_GPU();
  check_attention(1, 0, 4, 4, 64, false);
  check_attention(1, 300, 6, 2, 40, false);  // decode, GQA
  check_attention(5, 7, 6, 3, 26, false);
  check_attention(40, 0, 8, 1, 64, false);   // prefill (the CPU's GEMM path), MQA
  check_attention(33, 4, 4, 2, 32, true);    // packed-sequence windows
}

TEST(CudaKernels, RoundAndHalfConversionMatchCpu) {
  REQUIRE_GPU();
  std::vector<float> x = randn(4099, 31, 100.0f);
  x[0] = 65519.0f;  // fp16's last finite rounding step
  x[1] = 1e-8f;     // a bf16 subnormal region value
  for (ComputeDType dt : {ComputeDType::BF16, ComputeDType::F16}) {
    std::vector<float> want = x;
    qlora::round_activations(want.data(), static_cast<int64_t>(want.size()), dt);
    DeviceBuffer<float> dx(x);
    cuda::round_activations(dx.data(), static_cast<int64_t>(x.size()), dt, nullptr);
    EXPECT_EQ(dx.to_host(), want);
    DeviceBuffer<float> src(x);
    DeviceBuffer<uint16_t> h(x.size());
    cuda::f32_to_half(h.data(), src.data(), static_cast<int64_t>(x.size()), dense_type_of(dt), nullptr);
    std::vector<uint16_t> want16(x.size());
    for (size_t i = 0; i < x.size(); ++i) want16[i] = dt == ComputeDType::BF16 ? f32_to_bf16(x[i]) : f32_to_fp16(x[i]);
    EXPECT_EQ(h.to_host(), want16);
  }
}

}  // namespace
