// The family kernels (cuda/kernels_family.h) and partial rotary against the CPU backend's
// ops (model/ops.h, model/ops_backward.h, the CPU backend's slices and softcap backward), on
// random inputs of awkward sizes (odd widths, rows past a block's 256 threads, bf16 and fp16
// rounding). Bit for bit where the CPU's result is a fixed sequence of float32 operations;
// within named tolerances where CUDA's tanh/erf/exp stand in for glibc's (2 ulp each, a few
// ulp after the products around them) or a float64 sum runs in another order. Without a
// GPU every test skips.
#include <gtest/gtest.h>
#include "cuda_test_util.h"

#include <cmath>
#include <string>
#include <vector>

#include "cuda/device_buffer.h"
#include "cuda/kernels.h"
#include "cuda/kernels_family.h"
#include "cuda/kernels_train.h"
#include "model/backend.h"
#include "model/ops.h"
#include "model/ops_backward.h"

using namespace qlora;
using namespace qlora::cuda;
using namespace qlora::test;

namespace {

void expect_equal(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  expect_rel(got, want, 0.0, 0.0, what);
}

constexpr ComputeDType kDtypes[] = {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16};

const char* dtype_name(ComputeDType t) {
  return t == ComputeDType::BF16 ? "bf16" : t == ComputeDType::F16 ? "fp16" : "fp32";
}

TEST(CudaFamilyKernels, GemmaRmsnormMatchesCpu) {
  REQUIRE_GPU();
  const int64_t T = 5, C = 1031;
  const auto x = randn(T * C, 1), w = randn(C, 2, 0.1f), d = randn(T * C, 3), base = randn(T * C, 4);
  for (ComputeDType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    std::vector<float> want(T * C), rstd(T);
    qlora::rmsnorm_forward(want.data(), rstd.data(), x.data(), w.data(), T, C, 1e-6f, dt, 1.0f);
    DeviceBuffer<float> out(T * C), r(T), dx(x), dw(w);
    cuda::rmsnorm_forward(out.data(), r.data(), dx.data(), dw.data(), T, C, 1e-6f, dt, 1.0f, nullptr);
    // The sum of squares runs in another float32 order: rstd within a few ulp, and the
    // outputs within that plus one rounding to the dtype.
    expect_rel(r.to_host(), rstd, 2e-6, 0.0, "rstd");  // (1031 squares in another order)
    const double tol = dt == ComputeDType::F32 ? 1e-6 : dt == ComputeDType::BF16 ? 8e-3 : 1e-3;
    expect_rel(out.to_host(), want, tol, 1e-6, "rmsnorm (1 + w)");
  }
  std::vector<float> want = base, rstd(T), tmp(T * C);
  qlora::rmsnorm_forward(tmp.data(), rstd.data(), x.data(), w.data(), T, C, 1e-6f, ComputeDType::F32, 1.0f);
  qlora::rmsnorm_backward(want.data(), nullptr, d.data(), x.data(), w.data(), rstd.data(), T, C, 1.0f);
  DeviceBuffer<float> g(base), dd(d), dx(x), dw(w), dr(rstd);
  cuda::rmsnorm_backward(g.data(), dd.data(), dx.data(), dw.data(), dr.data(), T, C, 1.0f, nullptr);
  expect_rel(g.to_host(), want, 1e-5, 1.0, "rmsnorm (1 + w) backward (float64 sum in another order)");
}

TEST(CudaFamilyKernels, LayernormMatchesCpu) {
  REQUIRE_GPU();
  const int64_t T = 6, C = 777;
  auto x = randn(T * C, 5);
  for (float& v : x) v += 3.0f;  // a mean far from zero, so the centring matters
  const auto w = randn(C, 6), b = randn(C, 7), d = randn(T * C, 8), base = randn(T * C, 9);
  for (ComputeDType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    std::vector<float> want(T * C), stats(2 * T);
    qlora::layernorm_forward(want.data(), stats.data(), x.data(), w.data(), b.data(), T, C, 1e-5f, dt);
    DeviceBuffer<float> out(T * C), st(2 * T), dx(x), dw(w), db(b);
    cuda::layernorm_forward(out.data(), st.data(), dx.data(), dw.data(), db.data(), T, C, 1e-5f, dt, nullptr);
    // float64 sums: mean and rstd equal but for a rare last bit, so the rest follows.
    expect_rel(st.to_host(), stats, 2.4e-7, 0.0, "mean, rstd");
    const double tol = dt == ComputeDType::F32 ? 1e-6 : dt == ComputeDType::BF16 ? 8e-3 : 1e-3;
    expect_rel(out.to_host(), want, tol, 1e-6, "layernorm");
  }
  std::vector<float> stats(2 * T), tmp(T * C), want = base;
  qlora::layernorm_forward(tmp.data(), stats.data(), x.data(), w.data(), b.data(), T, C, 1e-5f);
  qlora::layernorm_backward(want.data(), d.data(), x.data(), w.data(), stats.data(), T, C);
  DeviceBuffer<float> g(base), dd(d), dx(x), dw(w), ds(stats);
  cuda::layernorm_backward(g.data(), dd.data(), dx.data(), dw.data(), ds.data(), T, C, nullptr);
  expect_rel(g.to_host(), want, 1e-5, 1.0, "layernorm backward");
}

TEST(CudaFamilyKernels, GegluAndActivationsMatchCpu) {
  REQUIRE_GPU();
  const int64_t N = 10007;
  const auto g = randn(N, 10, 2.0f), u = randn(N, 11), d = randn(N, 12), b1 = randn(N, 13), b2 = randn(N, 14);
  // tanh / erf / exp from CUDA's library: within 2 ulp of glibc's. Where 1 + tanh or 1 + erf
  // cancels (gate < -2) an ulp of it is a large relative error of a small result, so the bound
  // is absolute on these O(1) values: 2e-6 forward, 1e-5 backward (where terms cancel too).
  {
    std::vector<float> want(N);
    qlora::geglu_forward(want.data(), g.data(), u.data(), N);
    DeviceBuffer<float> out(N), dg(g), du(u);
    cuda::geglu_forward(out.data(), dg.data(), du.data(), N, nullptr);
    expect_rel(out.to_host(), want, 2e-6, 1.0, "geglu");
    std::vector<float> wg = b1, wu = b2;
    qlora::geglu_backward(wg.data(), wu.data(), d.data(), g.data(), u.data(), N);
    DeviceBuffer<float> gg(b1), gu(b2), dd(d);
    cuda::geglu_backward(gg.data(), gu.data(), dd.data(), dg.data(), du.data(), N, nullptr);
    expect_rel(gg.to_host(), wg, 1e-5, 1.0, "geglu backward (gate)");
    expect_rel(gu.to_host(), wu, 1e-5, 1.0, "geglu backward (up)");
  }
  const std::pair<Activation, ActKind> acts[] = {
      {Activation::Gelu, ActKind::Gelu},
      {Activation::GeluTanh, ActKind::GeluTanh},
      {Activation::Relu, ActKind::Relu},
      {Activation::Relu2, ActKind::Relu2}};
  for (auto [a, k] : acts) {
    SCOPED_TRACE(static_cast<int>(a));
    std::vector<float> want(N);
    qlora::activation_forward(want.data(), g.data(), N, a);
    DeviceBuffer<float> out(N), dg(g);
    cuda::activation_forward(out.data(), dg.data(), N, k, nullptr);
    expect_rel(out.to_host(), want, 2e-6, 1.0, "activation");
    std::vector<float> wdx = b1;
    qlora::activation_backward(wdx.data(), d.data(), g.data(), N, a);
    DeviceBuffer<float> gdx(b1), dd(d);
    cuda::activation_backward(gdx.data(), dd.data(), dg.data(), N, k, nullptr);
    expect_rel(gdx.to_host(), wdx, 1e-5, 1.0, "activation backward");
  }
}

TEST(CudaFamilyKernels, SoftcapEmbedScaleAndSlicesMatchCpu) {
  REQUIRE_GPU();
  const int64_t n = 4099;
  const auto x = randn(n, 15, 40.0f), d = randn(n, 16);
  for (ComputeDType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    std::vector<float> want = x;
    qlora::softcap_forward(want.data(), n, 30.0f, dt);
    DeviceBuffer<float> dx(x);
    cuda::softcap_forward(dx.data(), n, 30.0f, dt, nullptr);
    // tanh within 2 ulp; in bf16/fp16 that can move a rounding by one unit of the dtype.
    const double tol = dt == ComputeDType::F32 ? 1e-6 : dt == ComputeDType::BF16 ? 8e-3 : 1e-3;
    expect_rel(dx.to_host(), want, tol, 1e-6, "softcap");

    std::vector<float> e = x;
    qlora::embed_scale_forward(e.data(), n, 2304, dt);
    DeviceBuffer<float> de(x);
    cuda::embed_scale(de.data(), n, 2304, dt, nullptr);
    expect_equal(de.to_host(), e, "embed scale");
  }
  std::vector<float> capped = x, want = d;
  qlora::softcap_forward(capped.data(), n, 30.0f, ComputeDType::F32);
  cpu_backend().softcap_backward(want.data(), capped.data(), n, 30.0f);
  DeviceBuffer<float> dd(d), dc(capped);
  cuda::softcap_backward(dd.data(), dc.data(), n, 30.0f, nullptr);
  expect_equal(dd.to_host(), want, "softcap backward");

  // Per-head fused q/k/v (groups of stride columns) and a plain column range.
  struct S { int64_t T, in_width, offset, width, groups, stride; };
  for (S c : {S{7, 3 * 40, 40, 40, 1, 0}, S{5, 4 * 6 * 8, 8, 16, 4, 48}, S{3, 33, 0, 33, 1, 0}}) {
    SCOPED_TRACE(c.offset);
    const auto in = randn(c.T * c.in_width, 17), dout = randn(c.T * c.groups * c.width, 18);
    const auto din0 = randn(in.size(), 19);
    std::vector<float> want_out(dout.size()), want_din = din0;
    cpu_backend().slice_forward(want_out.data(), in.data(), c.T, c.in_width, c.offset, c.width, c.groups, c.stride);
    cpu_backend().slice_backward(want_din.data(), dout.data(), c.T, c.in_width, c.offset, c.width, c.groups,
                                 c.stride);
    DeviceBuffer<float> din(in), out(dout.size()), gdout(dout), gdin(din0);
    cuda::slice_forward(out.data(), din.data(), c.T, c.in_width, c.offset, c.width, c.groups, c.stride, nullptr);
    cuda::slice_backward(gdin.data(), gdout.data(), c.T, c.in_width, c.offset, c.width, c.groups, c.stride, nullptr);
    expect_equal(out.to_host(), want_out, "slice");
    expect_equal(gdin.to_host(), want_din, "slice backward");
  }
  DeviceBuffer<float> a(8), b(8);
  EXPECT_THROW(cuda::slice_forward(a.data(), b.data(), 1, 8, 4, 8, 1, 0, nullptr), Error);
}

TEST(CudaFamilyKernels, PartialRotaryIsExact) {
  REQUIRE_GPU();
  const int64_t T = 6, NH = 3, HS = 80, rot = 32;  // phi-2's partial rotary: 32 of 80 dims
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(3 * t + 1);
  std::vector<float> cs(T * rot / 2), sn(cs.size());
  rope_tables(cs.data(), sn.data(), pos.data(), T, rot, 10000.0f);
  const auto x = randn(T * NH * HS, 20);
  std::vector<float> want = x, back = x;
  qlora::rope_forward(want.data(), cs.data(), sn.data(), T, NH, HS, rot);
  qlora::rope_backward(back.data(), cs.data(), sn.data(), T, NH, HS, rot);
  DeviceBuffer<float> dx(x), db(x), dc(cs), ds(sn);
  cuda::rope_forward(dx.data(), dc.data(), ds.data(), T, NH, HS, rot, nullptr);
  cuda::rope_backward(db.data(), dc.data(), ds.data(), T, NH, HS, rot, nullptr);
  expect_equal(dx.to_host(), want, "partial rope");
  expect_equal(db.to_host(), back, "partial rope backward");
  EXPECT_THROW(cuda::rope_forward(dx.data(), dc.data(), ds.data(), T, NH, HS, 81, nullptr), Error);
}

// The families' attention (a scale, Gemma 2's softcap, BLOOM's and Falcon's ALiBi) on the
// GPU's training forward and backward, prefill forward and one-token decode, against the
// CPU's attention_forward / attention_backward with the same options. Tolerances as the
// plain attention's (tests/cuda/test_cuda_train_kernels.cpp): dot products in another order.
struct FamilyAttention {
  const char* what;
  float scale, softcap;
  int alibi;  // 0 none, 1 BLOOM, 2 Falcon
  bool windowed;
};

void check_family_attention(const FamilyAttention& c, int64_t T, int64_t NH, int64_t NKV, int64_t HS) {
  SCOPED_TRACE(std::string(c.what) + " T " + std::to_string(T));
  const int64_t Tk = T;
  const auto q = randn(T * NH * HS, 21), k = randn(Tk * NKV * HS, 22), v = randn(Tk * NKV * HS, 23),
             dout = randn(T * NH * HS, 24);
  std::vector<int32_t> ks;
  if (c.windowed)
    // (packed examples of 7 tokens, or of 2 in a short sequence, so the windows bite at T = 5)
    for (int64_t t = 0; t < T; ++t) ks.push_back(static_cast<int32_t>(T < 7 ? (t / 2) * 2 : (t / 7) * 7));
  const int32_t* ksp = c.windowed ? ks.data() : nullptr;
  AlibiBias alibi;
  if (c.alibi) {
    alibi.slopes = alibi_slopes(NH);
    alibi.bf16_product = c.alibi == 2;
    alibi.divisor = c.alibi == 2 ? std::sqrt(static_cast<float>(HS)) : 1.0f;
  }
  const AlibiBias* ap = c.alibi ? &alibi : nullptr;

  std::vector<float> out(T * NH * HS), att(NH * T * Tk);
  qlora::attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, Tk, 0, NH, NKV, HS, ksp,
                           c.scale, c.softcap, ap);
  std::vector<float> dq(q.size(), 0.5f), dk(k.size(), -0.25f), dv(v.size(), 0.125f), datt(att.size());
  std::vector<float> raw(static_cast<size_t>(std::max<int64_t>(1, attention_backward_scratch_floats(T, Tk, c.softcap))));
  qlora::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), raw.data(), dout.data(), q.data(), k.data(),
                            v.data(), att.data(), T, Tk, 0, NH, NKV, HS, ksp, c.scale, c.softcap);

  DeviceBuffer<float> gq(q), gk(k), gv(v), gout(out.size()), gatt(att.size()), gdout(dout);
  DeviceBuffer<int32_t> gks;
  if (c.windowed) gks = DeviceBuffer<int32_t>(ks);
  DeviceBuffer<float> gslopes;
  if (c.alibi) gslopes = DeviceBuffer<float>(alibi.slopes);
  AttentionOptions o;
  o.scale = c.scale;
  o.softcap = c.softcap;
  o.alibi_slopes = c.alibi ? gslopes.data() : nullptr;
  o.alibi_bf16_product = alibi.bf16_product;
  o.alibi_divisor = alibi.divisor;
  const int32_t* gksp = c.windowed ? gks.data() : nullptr;

  cuda::attention_forward_train(gout.data(), gatt.data(), gq.data(), gk.data(), gv.data(), T, 0, NH, NKV, HS, gksp, o,
                                nullptr);
  expect_rel(gout.to_host(), out, 2e-5, 1.0, "train forward out");
  expect_rel(gatt.to_host(), att, 2e-5, 1e-3, "probabilities");
  DeviceBuffer<float> gdq(std::vector<float>(q.size(), 0.5f)), gdk(std::vector<float>(k.size(), -0.25f)),
      gdv(std::vector<float>(v.size(), 0.125f)), gdatt(att.size());
  cuda::attention_backward(gdq.data(), gdk.data(), gdv.data(), gdatt.data(), gdout.data(), gq.data(), gk.data(),
                           gv.data(), gatt.data(), T, 0, NH, NKV, HS, gksp, c.scale, c.softcap, nullptr);
  expect_rel(gdatt.to_host(), datt, 1e-4, 1e-2, "datt");
  expect_rel(gdq.to_host(), dq, 1e-4, 1.0, "dq");
  expect_rel(gdk.to_host(), dk, 1e-4, 1.0, "dk");
  expect_rel(gdv.to_host(), dv, 1e-4, 1.0, "dv");

  // Inference: the prefill kernel, and decoding the last position from the cache.
  DeviceBuffer<float> pout(out.size());
  cuda::attention_forward(pout.data(), gq.data(), gk.data(), gv.data(), T, 0, NH, NKV, HS, gksp, o, nullptr);
  expect_rel(pout.to_host(), out, 2e-5, 1.0, "prefill out");
  if (!c.windowed) {
    const std::vector<float> last(out.end() - NH * HS, out.end());
    DeviceBuffer<float> dout1(NH * HS), q1(std::vector<float>(q.end() - NH * HS, q.end()));
    DeviceBuffer<int32_t> pos(std::vector<int32_t>{static_cast<int32_t>(T - 1)});
    cuda::attention_decode(dout1.data(), q1.data(), gk.data(), gv.data(), pos.data(), NH, NKV, HS, o, nullptr);
    expect_rel(dout1.to_host(), last, 2e-5, 1.0, "decode out");
  }
}

TEST(CudaFamilyKernels, FamilyAttentionMatchesCpu) {
  REQUIRE_GPU();
  const FamilyAttention cases[] = {
      {"gemma2 scale + softcap", 0.0625f, 50.0f, 0, false},
      {"gemma2 softcap, packed", 0.0625f, 5.0f, 0, true},
      {"bloom alibi", 0.0f, 0.0f, 1, false},
      {"falcon alibi (bf16), packed", 0.0f, 0.0f, 2, true},
  };
  for (const FamilyAttention& c : cases) {
    check_family_attention(c, 5, 4, 2, 16);   // the CPU's per-row path
    check_family_attention(c, 37, 6, 3, 40);  // the CPU's GEMM path
  }
}

}  // namespace

#include "cuda/kernels_int8.h"
#include "model/quant_linear.h"
#include "quant/int8.h"

namespace {

// LLM.int8: the GPU's product with its epilogue, bias and outlier columns against the CPU's
// QuantLinear (the host quantizes the activations, as the CUDA backend does), bit for bit, in
// float32 and bf16; and the weight dequantized for the backward, bit for bit.
TEST(CudaFamilyKernels, Int8LinearMatchesCpuBitForBit) {
  REQUIRE_GPU();
  const int64_t T = 7, K = 333, N = 77;
  std::vector<float> w = randn(N * K, 40, 0.05f), x = randn(T * K, 41), bias = randn(N, 42, 0.1f);
  for (int64_t t = 0; t < T; ++t) x[t * K + 5] = 9.0f + t;  // an outlier column (|x| >= 6)
  x[3 * K + 200] = -7.5f;                                     // and one more, from one token
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16}) {
    SCOPED_TRACE(dt == ComputeDType::F32 ? "fp32" : "bf16");
    QuantOptions q;
    q.quantize = true;
    q.int8 = true;
    QuantLinear lin(w.data(), N, K, q, dt);
    lin.set_bias(bias);
    std::vector<float> want(T * N);
    lin.forward(want.data(), x.data(), T);
    const Quantized8bit& q8 = *lin.q8();
    Int8Activations act;
    quantize_int8_activations(x.data(), T, K, lin.int8_threshold(), act);
    ASSERT_EQ(act.outlier_cols.size(), 2u);
    DeviceBuffer<int8_t> dca(act.ca), dcb(q8.codes);
    DeviceBuffer<float> dsca(act.sca), dscb(q8.scb), db(lin.bias()), dx(x), dy(T * N);
    DeviceBuffer<int32_t> doc(act.outlier_cols);
    int8_linear_forward(dy.data(), dca.data(), dsca.data(), dcb.data(), dscb.data(), db.data(), dx.data(),
                        doc.data(), 2, T, N, K, dt, nullptr);
    expect_equal(dy.to_host(), want, "int8 forward");
    std::vector<float> rows(N * K);
    lin.dequantize_rows(0, N, rows.data());
    DeviceBuffer<float> drows(N * K);
    int8_dequantize_rows(drows.data(), dcb.data(), dscb.data(), N, K, dt, nullptr);
    expect_equal(drows.to_host(), rows, "int8 dequantized rows");
  }
}

}  // namespace
