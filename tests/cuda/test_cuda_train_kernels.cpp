// The training kernels (cuda/kernels_train.h) against the CPU backend's backward ops and
// optimizer, on random inputs of awkward sizes. AdamW and the element-wise backward ops
// must match bit for bit (the same float32 operations); reductions and dot products within
// float32 summation-order tolerances, named per test. Without a GPU every test skips.
#include <gtest/gtest.h>
#include "cuda_test_util.h"

#include <cmath>
#include <random>
#include <vector>

#include "cuda/blas.h"
#include "cuda/cuda_error.h"
#include "cuda/device_buffer.h"
#include "cuda/kernels.h"
#include "cuda/kernels_train.h"
#include "model/ops.h"
#include "model/ops_backward.h"
#include "optim/adam_kernels.h"
#include "optim/adamw.h"

using namespace qlora;
using namespace qlora::cuda;
using namespace qlora::test;

namespace {

TEST(CudaTrainKernels, RmsnormBackwardMatchesCpu) {
  REQUIRE_GPU();
  const int64_t T = 9, C = 1001;
  const auto x = randn(T * C, 1), w = randn(C, 2), d = randn(T * C, 3), base = randn(T * C, 4);
  std::vector<float> out(T * C), rstd(T);
  qlora::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, C, 1e-5f);
  std::vector<float> want = base;
  qlora::rmsnorm_backward(want.data(), nullptr, d.data(), x.data(), w.data(), rstd.data(), T, C);
  DeviceBuffer<float> dx(base), dd(d), dxin(x), dw(w), dr(rstd);
  cuda::rmsnorm_backward(dx.data(), dd.data(), dxin.data(), dw.data(), dr.data(), T, C, nullptr);
  expect_rel(dx.to_host(), want, 1e-5, 1.0, "rmsnorm_backward (float64 sum in another order)");
}

TEST(CudaTrainKernels, RopeAndSwigluBackwardAreExact) {
  REQUIRE_GPU();
  const int64_t T = 7, NH = 3, HS = 18;
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(5 * t + 2);
  std::vector<float> cs(T * HS / 2), sn(cs.size());
  rope_tables(cs.data(), sn.data(), pos.data(), T, HS, 500000.0f);
  const auto g = randn(T * NH * HS, 5);
  std::vector<float> want = g;
  qlora::rope_backward(want.data(), cs.data(), sn.data(), T, NH, HS);
  DeviceBuffer<float> dg(g), dc(cs), ds(sn);
  cuda::rope_backward(dg.data(), dc.data(), ds.data(), T, NH, HS, nullptr);
  EXPECT_EQ(dg.to_host(), want);

  const int64_t N = 4097;
  const auto gate = randn(N, 6, 3.0f), up = randn(N, 7), dout = randn(N, 8), b1 = randn(N, 9), b2 = randn(N, 10);
  std::vector<float> wg = b1, wu = b2;
  qlora::swiglu_backward(wg.data(), wu.data(), dout.data(), gate.data(), up.data(), N);
  DeviceBuffer<float> dgate(b1), dup(b2), ddout(dout), dga(gate), dupv(up);
  cuda::swiglu_backward(dgate.data(), dup.data(), ddout.data(), dga.data(), dupv.data(), N, nullptr);
  // CUDA's expf (2 ulp) and glibc's exp differ in the last bits, and σ(g) for large |g|
  // magnifies that: 1e-5 relative.
  expect_rel(dgate.to_host(), wg, 1e-5, 1e-6, "swiglu dgate");
  expect_rel(dup.to_host(), wu, 1e-5, 1e-6, "swiglu dup");
}

void check_attention_train(int64_t T, int64_t NH, int64_t NKV, int64_t HS, bool windowed) {
  const int64_t Tk = T;
  const auto q = randn(T * NH * HS, 11), k = randn(Tk * NKV * HS, 12), v = randn(Tk * NKV * HS, 13),
             dout = randn(T * NH * HS, 14);
  std::vector<int32_t> ks;
  if (windowed)
    for (int64_t t = 0; t < T; ++t) ks.push_back(static_cast<int32_t>((t / 5) * 5));
  const int32_t* ksp = windowed ? ks.data() : nullptr;
  std::vector<float> out(T * NH * HS), att(NH * T * Tk);
  qlora::attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, Tk, 0, NH, NKV, HS, ksp);
  std::vector<float> dq(q.size(), 0.5f), dk(k.size(), -0.25f), dv(v.size(), 0.125f), datt(att.size());
  qlora::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), nullptr, dout.data(), q.data(), k.data(), v.data(),
                            att.data(), T, Tk, 0, NH, NKV, HS, ksp);

  DeviceBuffer<float> gq(q), gk(k), gv(v), gout(out.size()), gatt(att.size()), gdout(dout);
  DeviceBuffer<int32_t> gks;
  if (windowed) gks = DeviceBuffer<int32_t>(ks);
  const int32_t* gksp = windowed ? gks.data() : nullptr;
  cuda::attention_forward_train(gout.data(), gatt.data(), gq.data(), gk.data(), gv.data(), T, 0, NH, NKV, HS, gksp,
                                nullptr);
  const std::string what = "attention T " + std::to_string(T) + (windowed ? " windowed" : "");
  expect_rel(gout.to_host(), out, 2e-5, 1.0, what + " out");
  expect_rel(gatt.to_host(), att, 2e-5, 1e-3, what + " probabilities");
  DeviceBuffer<float> gdq(std::vector<float>(q.size(), 0.5f)), gdk(std::vector<float>(k.size(), -0.25f)),
      gdv(std::vector<float>(v.size(), 0.125f)), gdatt(att.size());
  cuda::attention_backward(gdq.data(), gdk.data(), gdv.data(), gdatt.data(), gdout.data(), gq.data(), gk.data(),
                           gv.data(), gatt.data(), T, 0, NH, NKV, HS, gksp, nullptr);
  expect_rel(gdatt.to_host(), datt, 1e-4, 1e-2, what + " datt");
  expect_rel(gdq.to_host(), dq, 1e-4, 1.0, what + " dq");
  expect_rel(gdk.to_host(), dk, 1e-4, 1.0, what + " dk");
  expect_rel(gdv.to_host(), dv, 1e-4, 1.0, what + " dv");
}

TEST(CudaTrainKernels, AttentionForwardBackwardMatchCpu) {
  REQUIRE_GPU();
  check_attention_train(5, 4, 2, 16, false);    // the CPU's per-row path
  check_attention_train(37, 6, 2, 40, false);   // the CPU's GEMM path
  check_attention_train(23, 4, 4, 32, true);    // packed sequences
}

TEST(CudaTrainKernels, CrossEntropyMatchesCpu) {
  REQUIRE_GPU();
  const int64_t T = 11, V = 50001;
  const auto logits = randn(T * V, 15, 4.0f);
  std::vector<int> tg = {5, -100, 50000, 0, 7, 7, -100, 123, 49999, 1, 2};
  std::vector<float> losses(T), want(T * V);
  const float mean = qlora::cross_entropy_forward_backward(losses.data(), want.data(), logits.data(), tg.data(), T, V);
  int valid = 0;
  for (int t : tg) valid += t != -100;
  DeviceBuffer<float> gl(logits), grow(T);
  DeviceBuffer<int32_t> gt(std::vector<int32_t>(tg.begin(), tg.end()));
  // In place, as the trainer uses it.
  cuda::cross_entropy_forward_backward(grow.data(), gl.data(), gl.data(), gt.data(), T, V, 1.0f / valid, -100, nullptr);
  const auto rows = grow.to_host();
  double sum = 0;
  for (float r : rows) sum += r;
  EXPECT_NEAR(sum / valid, mean, 1e-5 * std::fabs(mean));
  expect_rel(rows, losses, 1e-5, 1e-3, "row losses");
  expect_rel(gl.to_host(), want, 1e-5, 1e-9, "dlogits");
}

TEST(CudaTrainKernels, AdamWIsBitIdenticalToCpu) {
  REQUIRE_GPU();
  const int64_t n = 100003;
  auto p = randn(n, 16), g = randn(n, 17, 1e-3f), m = randn(n, 18, 1e-4f), v = randn(n, 19, 1e-4f);
  for (float& x : v) x = x * x;
  for (double wd : {0.0, 0.01}) {
    AdamWConfig cfg;
    cfg.weight_decay = wd;
    std::vector<float> cp = p, cm = m, cv = v;
    DeviceBuffer<float> dp(p), dg(g), dm(m), dv(v);
    for (int64_t step = 1; step <= 3; ++step) {
      adam_kernels::scalar_kernels().torch_adamw(cp.data(), g.data(), cm.data(), cv.data(), n,
                                                 adam_kernels::TorchAdamWScalars::make(cfg, 2e-4, step));
      cuda::adamw_torch(dp.data(), dg.data(), dm.data(), dv.data(), n, cuda::adamw_step_scalars(cfg, 2e-4, step), nullptr);
    }
    EXPECT_EQ(dp.to_host(), cp) << "weight decay " << wd;
    EXPECT_EQ(dm.to_host(), cm);
    EXPECT_EQ(dv.to_host(), cv);
  }
}

TEST(CudaTrainKernels, SumSquaresScaleAndBackwardGemms) {
  REQUIRE_GPU();
  const auto g = randn(300007, 20);
  double want = 0;
  for (float x : g) want += static_cast<double>(x) * x;
  DeviceBuffer<float> dg(g);
  DeviceBuffer<double> acc(1);
  QLORA_CUDA_CHECK(cudaMemset(acc.data(), 0, sizeof(double)));
  cuda::sum_squares(acc.data(), dg.data(), static_cast<int64_t>(g.size()), nullptr);
  EXPECT_NEAR(acc.to_host()[0], want, 1e-9 * want);
  cuda::scale(dg.data(), 0.5f, static_cast<int64_t>(g.size()), nullptr);
  std::vector<float> half = g;
  for (float& x : half) x *= 0.5f;
  EXPECT_EQ(dg.to_host(), half);

  // dX += dY · W and dW += dYᵀ · X, the LoRA backward's products, against the CPU's references.
  const int64_t T = 13, in = 77, out = 45;
  const auto dy = randn(T * out, 21), W = randn(out * in, 22), X = randn(T * in, 23);
  std::vector<float> dx(T * in, 1.0f), dW(out * in, -1.0f);
  matmul_backward_input_ref(dx.data(), dy.data(), W.data(), T, in, out);
  matmul_backward_weight_ref(dW.data(), dy.data(), X.data(), T, in, out);
  Blas blas;
  DeviceBuffer<float> ddy(dy), dW0(W), dX0(X), ddx(std::vector<float>(T * in, 1.0f)),
      ddW(std::vector<float>(out * in, -1.0f));
  blas.sgemm_nn(T, in, out, 1.0f, ddy.data(), out, dW0.data(), in, 1.0f, ddx.data(), in);
  blas.sgemm_tn(out, in, T, 1.0f, ddy.data(), out, dX0.data(), in, 1.0f, ddW.data(), in);
  expect_rel(ddx.to_host(), dx, 1e-5, 1.0, "sgemm_nn");
  expect_rel(ddW.to_host(), dW, 1e-5, 1.0, "sgemm_tn");
}

}  // namespace
