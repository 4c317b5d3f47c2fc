// The QLoRA training step on the GPU (cuda/cuda_train.cpp) against the CPU's
// (train/train_model.cpp) on stories260K with an all-linear LoRA whose B is random (so every
// gradient is non-trivial): the loss and every LoRA gradient within float32 rounding, the
// dropout generator left in the same state (the masks are the same numbers), with and
// without checkpointing, packed sequences, gradient accumulation, bf16 compute; and
// `qlora train --device cuda` producing a loss curve that overlaps the CPU's step by step.
// Without a GPU every test skips.
#include <gtest/gtest.h>
#include "cuda_test_util.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cuda/cuda_error.h"
#include "formats/model_loader.h"
#include "lora/lora.h"
#include "model/device_runner.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "train/train_model.h"

using namespace qlora;
using namespace qlora::test;

namespace {

std::vector<int> tokens(int n, int salt) {
  std::vector<int> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = 1 + (i * 37 + 11 + salt) % 500;
  return t;
}

struct Grads {
  float loss = 0;
  std::vector<std::vector<float>> dA, dB;
  std::array<uint64_t, 4> rng{};
};

struct Case {
  bool nf4 = true;
  ComputeDType dt = ComputeDType::F32;
  bool checkpointing = true;
  bool packed = false;
  bool accumulate = false;  // two micro-batches with grad_scale 0.5 each
  float dropout = 0.1f;
};

Grads run_step(Model& m, bool gpu, const Case& c) {
  m.set_runner(gpu ? make_cuda_runner(m, 0) : nullptr);
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  cfg.dropout = c.dropout;
  cfg.all_linear = true;
  cfg.seed = 5;
  LoraModel lm(m, cfg);
  LoraRng brng(17);
  for (LoraLayer& l : lm.layers())
    for (float& b : l.B) b = 0.05f * (2.f * brng.next_float() - 1.f);
  lm.zero_grad();
  TrainWorkspace ws;
  TrainStepOptions opt;
  opt.checkpointing = c.checkpointing;
  LoraRng rng(99);
  Grads g;
  const int batches = c.accumulate ? 2 : 1;
  if (c.accumulate) opt.grad_scale = 0.5f;
  for (int b = 0; b < batches; ++b) {
    std::vector<int> in = tokens(48, b), tg(in.size());
    for (size_t t = 0; t + 1 < in.size(); ++t) tg[t] = in[t + 1];
    tg.back() = -100;
    tg[3] = -100;
    std::vector<int32_t> pos;
    if (c.packed)
      for (int t = 0; t < 48; ++t) pos.push_back(t < 20 ? t : t - 20);  // two examples
    g.loss += forward_backward(lm, ws, in, tg, opt, &rng, pos);
  }
  for (const LoraLayer& l : lm.layers()) {
    g.dA.push_back(l.dA);
    g.dB.push_back(l.dB);
  }
  g.rng = rng.state();
  m.set_runner(nullptr);
  return g;
}

// max |a - b| over max |b|, over all layers.
double rel(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t k = 0; k < a[i].size(); ++k) {
      d = std::max(d, std::fabs(static_cast<double>(a[i][k]) - b[i][k]));
      m = std::max(m, std::fabs(static_cast<double>(b[i][k])));
    }
  return d / m;
}

void compare(const Case& c, double tol) {
  Model m = load_stories(c.nf4, c.dt);
  const Grads cpu = run_step(m, false, c);
  const Grads gpu = run_step(m, true, c);
  const double dl = std::fabs(gpu.loss - cpu.loss) / std::fabs(cpu.loss);
  const double da = rel(gpu.dA, cpu.dA), db = rel(gpu.dB, cpu.dB);
  std::printf("[ cuda train ] nf4 %d dt %d ckpt %d packed %d accum %d: loss %.6f vs %.6f (rel %.2g), dA rel %.2g, dB rel %.2g\n",
              c.nf4, static_cast<int>(c.dt), c.checkpointing, c.packed, c.accumulate, gpu.loss, cpu.loss, dl, da, db);
  EXPECT_LE(dl, tol);
  EXPECT_LE(da, 10 * tol);
  EXPECT_LE(db, 10 * tol);
  EXPECT_EQ(gpu.rng, cpu.rng) << "the dropout generator must advance exactly as on the CPU";
}

TEST(CudaTrain, StepMatchesCpuWithCheckpointingAndDropout) {
  REQUIRE_GPU();
  compare(Case{}, 1e-5);
}

TEST(CudaTrain, StepMatchesCpuWithoutCheckpointingPackedAndAccumulated) {
  REQUIRE_GPU();
  Case c;
  c.checkpointing = false;
  c.packed = true;
  c.accumulate = true;
  compare(c, 1e-5);
  Case d;
  d.nf4 = false;
  d.dropout = 0;
  compare(d, 1e-5);
}

TEST(CudaTrain, StepMatchesCpuInBf16WithinRounding) {
  REQUIRE_GPU();
  Case c;
  c.dt = ComputeDType::BF16;
  compare(c, 2e-2);
}

TEST(CudaTrain, EvalLossMatchesCpu) {
  REQUIRE_GPU();
  Model m = load_stories(true, ComputeDType::F32);
  LoraConfig cfg;
  cfg.r = 2;
  cfg.all_linear = true;
  LoraModel lm(m, cfg);
  TrainWorkspace ws;
  std::vector<int> in = tokens(40, 3), tg(in.size(), 7);
  const float cpu = forward_loss(lm, ws, in, tg);
  m.set_runner(make_cuda_runner(m, 0));
  const float gpu = forward_loss(lm, ws, in, tg);
  EXPECT_NEAR(gpu, cpu, 1e-5 * std::fabs(cpu));
}

TEST(CudaTrain, BadTokenIdIsACleanError) {
  REQUIRE_GPU();
  Model m = load_stories(true, ComputeDType::F32);
  m.set_runner(make_cuda_runner(m, 0));
  LoraConfig cfg;
  cfg.r = 2;
  cfg.all_linear = true;
  LoraModel lm(m, cfg);
  TrainWorkspace ws;
  TrainStepOptions opt;
  LoraRng rng(1);
  std::vector<int> in = {1, 2, 100000, 3}, tg = {2, 3, 4, 5};
  try {
    forward_backward(lm, ws, in, tg, opt, &rng);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 100000"), std::string::npos) << e.what();
  }
  // The runner is still usable afterwards.
  std::vector<int> ok = {1, 2, 3, 4};
  EXPECT_TRUE(std::isfinite(forward_backward(lm, ws, ok, tg, opt, &rng)));
}

std::vector<double> losses(const std::string& metrics) {
  std::ifstream f(metrics);
  std::vector<double> out;
  std::string line;
  while (std::getline(f, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

// 20 steps of `qlora train` on Tiny Shakespeare: the GPU's loss curve overlaps the CPU's.
TEST(CudaTrain, CliTwentyStepsOverlapTheCpuCurve) {
  REQUIRE_GPU();
  TempDir dir("cuda_train");
  std::vector<double> curves[2];
  for (int gpu = 0; gpu < 2; ++gpu) {
    const std::string out = dir.path(gpu ? "gpu" : "cpu");
    std::vector<std::string> args = {"train", "--model", stories_bin(), "--data",
                                     data_dir() + "/text/tinyshakespeare.txt", "--out", out, "--max-steps", "20",
                                     "--seq-len", "128", "--batch-size", "2", "--lr", "1e-3", "--lora-r", "8",
                                     "--double-quant", "--compute-dtype", "fp32", "-q"};  // (train's CPU default
                                     // is bf16 on AMX hosts)
    if (gpu) args.insert(args.end(), {"--device", "cuda"});
    const CliResult r = run_cli(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    curves[gpu] = losses(out + "/metrics.jsonl");
    ASSERT_EQ(curves[gpu].size(), 20u);
  }
  for (size_t i = 0; i < 20; ++i) {
    std::printf("[ cuda train ] step %2zu loss cpu %.5f gpu %.5f\n", i + 1, curves[0][i], curves[1][i]);
    EXPECT_NEAR(curves[1][i], curves[0][i], 2e-3 * curves[0][i]) << "step " << i + 1;
  }
}

// Checkpoints and exact resume on the GPU: a run killed right after its first checkpoint
// and resumed with --resume ends with the same adapter bytes as a run never stopped (the
// LoRA parameters, optimizer and data order live on the host; every GPU kernel of the step
// is deterministic). The metrics carry the GPU's peak memory.
TEST(CudaTrain, KilledRunResumesBitExactOnTheGpu) {
  REQUIRE_GPU();
  namespace fs = std::filesystem;
  TempDir tmp("cuda_kill");
  auto args = [&](const std::string& out) {
    return std::vector<std::string>{"train", "--model", stories_bin(), "--data", data_dir() + "/text/tinyshakespeare.txt",
                                    "--out", out, "--double-quant", "--lora-r", "8", "--max-steps", "60", "--batch-size",
                                    "2", "--seq-len", "64", "--lr", "5e-3", "--save-every", "5", "--device", "cuda",
                                    "--quiet"};
  };
  const CliResult straight = run_cli(args(tmp.path("straight")));
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  {
    std::ifstream m(tmp.path("straight/metrics.jsonl"));
    std::string line;
    bool gpu_mem = false;
    while (std::getline(m, line)) gpu_mem = gpu_mem || line.find("gpu_peak_bytes") != std::string::npos;
    EXPECT_TRUE(gpu_mem) << "metrics.jsonl has no gpu_peak_bytes";
  }
  const std::string out = tmp.path("killed");
  std::vector<std::string> a = args(out);
  const char* env_cli = std::getenv("QLORA_CLI");
  std::string cli = env_cli && *env_cli ? env_cli : QLORA_CLI_PATH;
  std::vector<char*> argv{cli.data()};
  for (std::string& x : a) argv.push_back(x.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, cli.c_str(), nullptr, nullptr, argv.data(), environ), 0);
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(out + "/checkpoint-5/trainer_state.safetensors") &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed; make it longer";
  std::vector<std::string> resume = args(out);
  resume.push_back("--resume");
  const CliResult r = run_cli(resume);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(tmp.path("straight/adapter_model.safetensors")), read_file(out + "/adapter_model.safetensors"));
}

}  // namespace

namespace {

std::string family_fixture(const std::string& f) { return std::string(QLORA_FIXTURE_DIR) + "/families/" + f; }

// --device cuda on families the llama runner does not run goes through the block
// interpreter on the CUDA backend (model/device_runner.h choose_cuda_engine); llama itself
// too when QLORA_CUDA_ENGINE=backend. For each: `qlora train` (5 steps, dropout, 8-bit
// paged AdamW) with the loss curve of the CPU within 2e-3, the GPU's memory in the
// metrics, then `qlora eval` of the adapter it wrote and `qlora generate` with it.
TEST(CudaTrain, EveryFamilyRunsOnTheBackendEngine) {
  REQUIRE_GPU();
  TempDir dir("cuda_backend_engine");
  {  // the first 6000 characters of Tiny Shakespeare: enough for 5 steps and a short eval
    const std::string text = read_file(data_dir() + "/text/tinyshakespeare.txt");
    write_file(dir.path("text.txt"), text.substr(0, 6000));
  }
  const std::string data = dir.path("text.txt");
  // Sets QLORA_CUDA_ENGINE=backend for one family, unset again however the iteration ends.
  struct EngineEnv {
    explicit EngineEnv(bool on) {
      if (on) setenv("QLORA_CUDA_ENGINE", "backend", 1);
    }
    ~EngineEnv() { unsetenv("QLORA_CUDA_ENGINE"); }
  };
  int ran = 0;
  for (const std::string f : {"llama", "gemma2", "phi3", "opt_350m", "bloom", "gpt_neox", "qwen3", "mistral"}) {
    ASSERT_TRUE(std::filesystem::exists(family_fixture(f))) << family_fixture(f);
    const EngineEnv env(f == "llama");
    ++ran;
    const std::vector<std::string> model = {"--model", family_fixture(f), "--tokenizer",
                                            family_fixture("gpt2") + "/model.gguf"};
    std::vector<double> curves[2];
    std::string eval_out[2];
    for (int gpu = 0; gpu < 2; ++gpu) {
      const std::string out = dir.path(f + (gpu ? "_gpu" : "_cpu"));
      std::vector<std::string> args = {"train"};
      args.insert(args.end(), model.begin(), model.end());
      for (const std::string& a : {std::string("--data"), data, std::string("--out"), out, std::string("--max-steps"), std::string("5"), std::string("--seq-len"),
                                   std::string("48"), std::string("--batch-size"), std::string("2"),
                                   std::string("--lora-r"), std::string("4"), std::string("--lora-dropout"),
                                   std::string("0.1"), std::string("--optim"), std::string("paged_adamw_8bit"),
                                   std::string("--double-quant"), std::string("--compute-dtype"), std::string("fp32"),
                                   std::string("-q")})
        args.push_back(a);
      if (gpu) args.insert(args.end(), {"--device", "cuda"});
      const CliResult r = run_cli(args);
      ASSERT_EQ(r.exit_code, 0) << f << ": " << r.err;
      curves[gpu] = losses(out + "/metrics.jsonl");
      ASSERT_EQ(curves[gpu].size(), 5u) << f;
      if (gpu) {
        const std::string metrics = read_file(out + "/metrics.jsonl");
        EXPECT_NE(metrics.find("gpu_peak_bytes"), std::string::npos) << f;
      }
      std::vector<std::string> ev = {"eval"};
      ev.insert(ev.end(), model.begin(), model.end());
      for (const std::string& a : {std::string("--data"), data, std::string("--adapter"), out, std::string("--seq-len"),
                                   std::string("48"), std::string("--double-quant"), std::string("--json"),
                                   std::string("-q")})
        ev.push_back(a);
      if (gpu) ev.insert(ev.end(), {"--device", "cuda"});
      const CliResult e = run_cli(ev);
      ASSERT_EQ(e.exit_code, 0) << f << ": " << e.err;
      eval_out[gpu] = e.out;
      if (gpu) {
        std::vector<std::string> g = {"generate"};
        g.insert(g.end(), model.begin(), model.end());
        for (const std::string& a : {std::string("--adapter"), out, std::string("--prompt"), std::string("To be"),
                                     std::string("-n"), std::string("8"), std::string("--temperature"),
                                     std::string("0"), std::string("--double-quant"), std::string("--device"),
                                     std::string("cuda")})
          g.push_back(a);
        const CliResult gr = run_cli(g);
        ASSERT_EQ(gr.exit_code, 0) << f << ": " << gr.err;
        EXPECT_NE(gr.err.find("block interpreter on the CUDA backend"), std::string::npos) << f << ": " << gr.err;
      }
    }
    for (size_t i = 0; i < 5; ++i) {
      std::printf("[ cuda train ] %s (backend engine) step %zu loss cpu %.5f gpu %.5f\n", f.c_str(), i + 1,
                  curves[0][i], curves[1][i]);
      EXPECT_NEAR(curves[1][i], curves[0][i], 2e-3 * curves[0][i]) << f << " step " << i + 1;
    }
    const double le[2] = {nlohmann::json::parse(eval_out[0])["loss"].get<double>(),
                          nlohmann::json::parse(eval_out[1])["loss"].get<double>()};
    std::printf("[ cuda train ] %s eval loss cpu %.5f gpu %.5f\n", f.c_str(), le[0], le[1]);
    EXPECT_NEAR(le[1], le[0], 2e-3 * le[0]) << f;
  }
  EXPECT_EQ(ran, 8);
}

}  // namespace
