// The CUDA backend (cuda/cuda_backend.h) against the CPU backend through the same block
// interpreter, on the families whose blocks exercise every op kind (the families of
// tests/model/test_backend.cpp): a prompt and token-by-token decoding with and without an
// adapter, and a packed training step with dropout, with and without checkpointing. The GPU
// sums in other orders (cuBLAS, block reductions) and uses CUDA's exp/tanh/erf, so the
// comparisons are within named tolerances, not bit for bit. Without a GPU every test skips.
#include <gtest/gtest.h>
#include "cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "formats/model_loader.h"
#include "model/backend_test_families.h"
#include "lora/lora_model.h"
#include "model/model.h"
#include "train/train_model.h"

using namespace qlora;
using namespace qlora::test;

namespace {

Model load_family(const std::string& f, ComputeDType dt = ComputeDType::F32) {
  ModelFiles files = open_model_files(family_fixture_dir(f));
  ModelLoadOptions o;
  o.compute_dtype = dt;
  o.quant.type = QuantType::NF4;
  o.quant.blocksize = 64;
  o.quant.double_quant = true;
  return Model::load(files.spec, *files.tensors, o);
}

// |a - b| <= tol * max|a| element-wise (logits: one scale per row set).
void expect_close_scaled(const std::vector<float>& got, const std::vector<float>& want, double tol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1e-6;
  for (float w : want) scale = std::max(scale, static_cast<double>(std::fabs(w)));
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (e > worst) worst = e, at = i;
  }
  EXPECT_LE(worst, tol * scale) << what << ": worst at " << at << " got " << got[at] << " want " << want[at]
                                << " (scale " << scale << ")";
}

class CudaBackendFamilies : public testing::TestWithParam<std::string> {};

// One training step of the packed test batch on the CPU backend and on `gpu`: two adapters
// made alike (B set to the same pattern), the same dropout stream on both. The workspaces and
// the batch stay, for further passes.
struct StepOnBoth {
  StepOnBoth(const Model& m, const LoraConfig& c, Backend& gpu, const TrainStepOptions& opt)
      : cpu_lm(m, c), gpu_lm(m, c), pb(m.spec()), wg(gpu) {
    for (LoraModel* lm : {&cpu_lm, &gpu_lm}) set_test_adapter_b(*lm, 29, 13, 0.06f);
    const TrainSequenceRef batch[2] = {{pb.in1, pb.t1, pb.p1}, {pb.in2, pb.t2, {}}};
    LoraRng rc(11), rg(11);  // the same dropout masks: one draw per LoRA call on both
    cpu_loss = forward_backward_batch(cpu_lm, wc, batch, opt, &rc);
    gpu_loss = forward_backward_batch(gpu_lm, wg, batch, opt, &rg);
  }
  LoraModel cpu_lm, gpu_lm;
  PackedTestBatch pb;
  TrainWorkspace wc, wg;
  float cpu_loss = 0, gpu_loss = 0;
};

TEST_P(CudaBackendFamilies, InferenceMatchesCpu) {
  REQUIRE_GPU();
  Model m = load_family(GetParam());
  const ModelSpec& s = m.spec();
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.all_linear = true;
  c.seed = 3;
  LoraModel lm(m, c);
  set_test_adapter_b(lm, 37, 11, 0.05f);
  const std::unique_ptr<Backend> gpu = cuda::make_backend(0);
  for (bool adapter : {false, true}) {
    m.set_adapter(adapter ? &lm : nullptr);
    InferenceState on_cpu(s, 4), on_gpu(s, 4, *gpu);
    const std::vector<int> prompt = some_tokens(s, 19, 1);
    std::vector<float> a(prompt.size() * static_cast<size_t>(s.vocab)), b(a.size());
    forward(m, on_cpu, prompt, a.data(), /*all_logits=*/true);
    forward(m, on_gpu, prompt, b.data(), /*all_logits=*/true);
    expect_close_scaled(b, a, 2e-4, GetParam() + " prefill, adapter " + std::to_string(adapter));
    std::vector<float> la(static_cast<size_t>(s.vocab)), lb(la.size());
    for (int tok : some_tokens(s, 5, 2)) {
      forward(m, on_cpu, std::vector<int>{tok}, la.data());
      forward(m, on_gpu, std::vector<int>{tok}, lb.data());
      expect_close_scaled(lb, la, 2e-4, GetParam() + " decode, adapter " + std::to_string(adapter));
    }
  }
  m.set_adapter(nullptr);
}

TEST_P(CudaBackendFamilies, TrainingStepMatchesCpu) {
  REQUIRE_GPU();
  const Model m = load_family(GetParam());
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dropout = 0.1;
  c.all_linear = true;
  c.seed = 5;
  const std::unique_ptr<Backend> gpu = cuda::make_backend(0);
  for (bool checkpointing : {true, false}) {
    TrainStepOptions opt;
    opt.checkpointing = checkpointing;
    opt.grad_scale = 0.5f;
    StepOnBoth st(m, c, *gpu, opt);
    const LoraModel &cpu_lm = st.cpu_lm, &gpu_lm = st.gpu_lm;
    const PackedTestBatch& pb = st.pb;
    const float lc = st.cpu_loss, lg = st.gpu_loss;
    const std::string what = GetParam() + (checkpointing ? " (checkpointing)" : "");
    EXPECT_NEAR(lg, lc, 1e-4 * std::fabs(lc)) << what;
    for (size_t i = 0; i < cpu_lm.layers().size(); ++i) {
      const LoraLayer &a = cpu_lm.layers()[i], &b = gpu_lm.layers()[i];
      expect_close_scaled(b.dA, a.dA, 2e-3, what + " dA " + a.module_path);
      expect_close_scaled(b.dB, a.dB, 2e-3, what + " dB " + a.module_path);
    }
    EXPECT_NEAR(forward_loss(gpu_lm, st.wg, pb.in1, pb.t1, pb.p1), forward_loss(cpu_lm, st.wc, pb.in1, pb.t1, pb.p1),
                1e-4 * std::fabs(lc))
        << what;
  }
}

// A bf16 training step: the dequantized weight rounded for the backward, the 16-bit head
// widened, LoRA around 16-bit products. bf16 rounding cascades: loss within 1e-2, gradients
// within 5e-2 of their scale.
TEST_P(CudaBackendFamilies, Bf16TrainingStepMatchesCpu) {
  REQUIRE_GPU();
  const Model m = load_family(GetParam(), ComputeDType::BF16);
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.all_linear = true;
  const std::unique_ptr<Backend> gpu = cuda::make_backend(0);
  const StepOnBoth st(m, c, *gpu, TrainStepOptions{});
  const LoraModel &cpu_lm = st.cpu_lm, &gpu_lm = st.gpu_lm;
  const float lc = st.cpu_loss, lg = st.gpu_loss;
  EXPECT_NEAR(lg, lc, 1e-2 * std::fabs(lc)) << GetParam();
  for (size_t i = 0; i < cpu_lm.layers().size(); ++i) {
    expect_close_scaled(gpu_lm.layers()[i].dA, cpu_lm.layers()[i].dA, 5e-2, GetParam() + " bf16 dA");
    expect_close_scaled(gpu_lm.layers()[i].dB, cpu_lm.layers()[i].dB, 5e-2, GetParam() + " bf16 dB");
  }
}

// bf16 compute: the 16-bit cuBLAS products, the dequantization to bf16, and prompts of 2 to 8
// tokens (the multi-token fused GEMV). bf16 rounding of every activation: 1e-2 of the scale.
TEST_P(CudaBackendFamilies, Bf16InferenceMatchesCpu) {
  REQUIRE_GPU();
  const Model m = load_family(GetParam(), ComputeDType::BF16);
  const ModelSpec& s = m.spec();
  const std::unique_ptr<Backend> gpu = cuda::make_backend(0);
  for (int n : {5, 12, 19}) {  // (12: the CPU's fused GEMV, the GPU's 16-bit cuBLAS)
    InferenceState on_cpu(s, 4), on_gpu(s, 4, *gpu);
    const std::vector<int> prompt = some_tokens(s, n, 6);
    std::vector<float> a(prompt.size() * static_cast<size_t>(s.vocab)), b(a.size());
    forward(m, on_cpu, prompt, a.data(), /*all_logits=*/true);
    forward(m, on_gpu, prompt, b.data(), /*all_logits=*/true);
    expect_close_scaled(b, a, 1e-2, GetParam() + " bf16 prompt of " + std::to_string(n));
  }
}

INSTANTIATE_TEST_SUITE_P(Families, CudaBackendFamilies, testing::ValuesIn(kBackendFamilies),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

TEST(CudaBackend, MemoryIsTheDevicesAndCopiesRoundTrip) {
  REQUIRE_GPU();
  const std::unique_ptr<Backend> gpu = cuda::make_backend(0);
  EXPECT_FALSE(gpu->host_addressable());
  EXPECT_EQ(std::string(gpu->name()), "cuda:0");
  std::vector<float> h(1000);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<float>(i) * 0.5f;
  BackendBuffer b(*gpu, 1000);
  gpu->upload(b.data(), h.data(), 1000);
  gpu->copy(b.data() + 10, b.data(), 500);  // overlapping ranges
  std::vector<float> back(1000);
  gpu->download(back.data(), b.data(), 1000);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(back[i], h[i]);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(back[10 + i], h[i]) << i;
  gpu->zero(b.data(), 1000);
  gpu->download(back.data(), b.data(), 1000);
  EXPECT_EQ(back, std::vector<float>(1000, 0.0f));
}

}  // namespace

namespace {

// LLM.int8 weights (--quant int8) through the CUDA backend: a prompt, decoding, and a training
// step against the CPU backend (the int8 products are the CPU's numbers; the rest of the model
// within the tolerances above).
TEST(CudaBackend, Int8WeightsMatchCpu) {
  REQUIRE_GPU();
  ModelFiles files = open_model_files(family_fixture_dir("llama"));
  ModelLoadOptions o;
  o.quant.quantize = true;
  o.quant.int8 = true;
  const Model m = Model::load(files.spec, *files.tensors, o);
  const ModelSpec& s = m.spec();
  const std::unique_ptr<Backend> gpu = cuda::make_backend(0);
  InferenceState on_cpu(s, 4), on_gpu(s, 4, *gpu);
  const std::vector<int> prompt = some_tokens(s, 19, 1);
  std::vector<float> a(prompt.size() * static_cast<size_t>(s.vocab)), b(a.size());
  forward(m, on_cpu, prompt, a.data(), /*all_logits=*/true);
  forward(m, on_gpu, prompt, b.data(), /*all_logits=*/true);
  expect_close_scaled(b, a, 2e-4, "int8 prefill");
  std::vector<float> la(static_cast<size_t>(s.vocab)), lb(la.size());
  for (int tok : some_tokens(s, 3, 2)) {
    forward(m, on_cpu, std::vector<int>{tok}, la.data());
    forward(m, on_gpu, std::vector<int>{tok}, lb.data());
    expect_close_scaled(lb, la, 2e-4, "int8 decode");
  }
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.all_linear = true;
  const StepOnBoth st(m, c, *gpu, TrainStepOptions{});
  const LoraModel &cpu_lm = st.cpu_lm, &gpu_lm = st.gpu_lm;
  const float lc = st.cpu_loss, lg = st.gpu_loss;
  EXPECT_NEAR(lg, lc, 1e-4 * std::fabs(lc));
  for (size_t i = 0; i < cpu_lm.layers().size(); ++i) {
    expect_close_scaled(gpu_lm.layers()[i].dA, cpu_lm.layers()[i].dA, 2e-3, "int8 dA");
    expect_close_scaled(gpu_lm.layers()[i].dB, cpu_lm.layers()[i].dB, 2e-3, "int8 dB");
  }
}

}  // namespace
