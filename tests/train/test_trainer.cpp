// The trainer on stories260K (llama2.c, NF4 + double quantization: real QLoRA):
//  - an Alpaca run with prompt masking and an eval split lowers train and eval loss, logs
//    every step and every eval to metrics.jsonl, draws loss.svg, saves the PEFT adapter;
//  - checkpoints resume bit-exactly: a run interrupted (an exception in-process, and a
//    real `qlora train` process killed with SIGKILL) and resumed ends with the same adapter
//    bytes as an uninterrupted run; a checkpoint of other settings is refused;
//  - `qlora eval` reports loss and exact-match answers with an adapter.
#include <gtest/gtest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "lora/peft_adapter.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "train/checkpoint.h"
#include "train/loss_plot.h"
#include "train/sft_dataset.h"
#include "train/trainer.h"

extern char** environ;

using namespace qlora;
using namespace qlora::test;
namespace fs = std::filesystem;

namespace {

struct Loaded {
  ModelFiles files;
  Model model;
};

Loaded load_nf4() {
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.quantize = true;
  o.quant.double_quant = true;
  Model m = Model::load(f.spec, *f.tensors, o);
  return {std::move(f), std::move(m)};
}

LoraConfig small_lora(double dropout) {
  LoraConfig c;
  c.r = 8;
  c.alpha = 16;
  c.dropout = dropout;
  c.all_linear = true;
  c.seed = 1;
  return c;
}

// The first n records of the real Alpaca-style instruction data, as a .json file.
std::string instruction_subset(const TempDir& tmp, size_t n) {
  std::ifstream f(data_dir() + "/text/instruction-data.json");
  const auto all = nlohmann::json::parse(f);
  nlohmann::json sub = nlohmann::json::array();
  for (size_t i = 0; i < n && i < all.size(); ++i) sub.push_back(all[i]);
  const std::string p = tmp.path("instructions.json");
  write_file(p, sub.dump(2));
  return p;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> v;
  std::string l;
  while (std::getline(f, l)) v.push_back(l);
  return v;
}

}  // namespace

TEST(Trainer, AlpacaRunWithEvalSplitLowersLossAndWritesEverything) {
  Loaded L = load_nf4();
  TempDir tmp("trainer");
  DatasetOptions d;
  d.seq_len = 320;  // stories260K's 512-token vocabulary spends ~100 tokens on the Alpaca preamble
  d.packing = true;
  LoadedExamples ex = load_examples(instruction_subset(tmp, 40), *L.files.tokenizer, d);
  ASSERT_EQ(ex.examples.size(), 40u);
  std::vector<Example> held;
  split_eval(ex.examples, held, 0.1);
  ASSERT_EQ(held.size(), 4u);
  const auto train_seqs = build_sequences(ex.examples, d);
  const auto eval_seqs = build_sequences(held, d);

  LoraModel lm(L.model, small_lora(0.05));
  TrainerOptions t;
  t.out_dir = tmp.path("out");
  t.base_model_name = "stories260K";
  t.epochs = 3;
  t.batch_size = 2;
  t.adamw.lr = 1e-2;
  t.eval_every = 10;
  t.progress = false;
  const TrainResult r = train(lm, train_seqs, eval_seqs, t);
  const int64_t steps = planned_steps(t, static_cast<int64_t>(train_seqs.size()));
  ASSERT_EQ(static_cast<int64_t>(r.steps.size()), steps);
  EXPECT_NEAR(r.steps.back().epoch, 3.0, 2.0 / static_cast<double>(train_seqs.size()));
  ASSERT_GE(r.evals.size(), 2u);
  EXPECT_EQ(r.evals.front().first, 0);
  EXPECT_EQ(r.evals.back().first, steps);
  std::printf("%lld steps; eval loss %.4f -> %.4f; train loss %.4f -> %.4f\n", static_cast<long long>(steps),
              r.evals.front().second.loss, r.evals.back().second.loss, r.steps.front().loss, r.steps.back().loss);
  EXPECT_LT(r.evals.back().second.loss, r.evals.front().second.loss - 0.2);

  // metrics.jsonl: one line per step, one per eval, in order
  int64_t n_steps = 0, n_evals = 0;
  for (const std::string& line : read_lines(t.out_dir + "/metrics.jsonl")) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("eval_loss")) {
      ++n_evals;
      EXPECT_TRUE(j.contains("eval_ppl"));
    } else {
      EXPECT_EQ(j.at("step").get<int64_t>(), ++n_steps);
      for (const char* k : {"loss", "lr", "grad_norm", "tokens_per_s", "epoch", "rss_bytes"}) EXPECT_TRUE(j.contains(k)) << k;
    }
  }
  EXPECT_EQ(n_steps, steps);
  EXPECT_EQ(n_evals, static_cast<int64_t>(r.evals.size()));
  const std::string svg = read_file(t.out_dir + "/loss.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("eval loss"), std::string::npos);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);

  const PeftAdapter a = load_peft_adapter(t.out_dir);
  ASSERT_EQ(a.modules.size(), 35u);
  for (const LoraLayer& l : lm.layers()) EXPECT_EQ(a.modules.at(l.module_path).B, l.B) << l.module_path;
}

TEST(Trainer, ResumeAfterACrashIsBitExact) {
  Loaded L = load_nf4();
  TempDir tmp("resume");
  DatasetOptions d;
  d.seq_len = 320;
  LoadedExamples ex = load_examples(instruction_subset(tmp, 24), *L.files.tokenizer, d);
  const auto seqs = build_sequences(ex.examples, d);
  TrainerOptions t;
  t.base_model_name = "stories260K";
  t.max_steps = 14;
  t.batch_size = 1;
  t.grad_accum = 2;
  t.adamw.lr = 5e-3;
  t.adamw.weight_decay = 0.01;
  t.save_every = 4;
  t.progress = false;

  // uninterrupted
  {
    LoraModel lm(L.model, small_lora(0.1));  // dropout: the RNG state must resume too
    t.out_dir = tmp.path("straight");
    train(lm, seqs, {}, t);
  }
  // crashes after step 10 (checkpoint at 8), then resumes
  {
    LoraModel lm(L.model, small_lora(0.1));
    t.out_dir = tmp.path("crashed");
    EXPECT_THROW(train(lm, seqs, {}, t,
                       [](const TrainStepLog& s) {
                         if (s.step == 10) throw std::runtime_error("simulated crash");
                       }),
                 std::runtime_error);
    ASSERT_TRUE(fs::exists(tmp.path("crashed/checkpoint-8")));
    ASSERT_FALSE(fs::exists(tmp.path("crashed/checkpoint-4")) && fs::exists(tmp.path("crashed/checkpoint-12")));
    EXPECT_FALSE(fs::exists(tmp.path("crashed/adapter_model.safetensors")));
  }
  {
    LoraModel lm(L.model, small_lora(0.1));  // fresh weights: all state comes from the checkpoint
    t.resume = true;
    const TrainResult r = train(lm, seqs, {}, t);
    EXPECT_EQ(r.first_step, 9);
    ASSERT_EQ(r.steps.size(), 6u);
  }
  EXPECT_EQ(read_file(tmp.path("straight/adapter_model.safetensors")),
            read_file(tmp.path("crashed/adapter_model.safetensors")));
  // metrics: steps 1..14 once each, as if never interrupted
  std::vector<int64_t> steps;
  for (const std::string& line : read_lines(tmp.path("crashed/metrics.jsonl"))) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("eval_loss")) steps.push_back(j.at("step").get<int64_t>());
  }
  ASSERT_EQ(steps.size(), 14u);
  for (size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i], static_cast<int64_t>(i + 1));

  // A checkpoint of other settings (another learning rate) is refused, naming it.
  {
    LoraModel lm(L.model, small_lora(0.1));
    t.adamw.lr = 1e-3;
    try {
      train(lm, seqs, {}, t);
      ADD_FAILURE() << "resumed a checkpoint of another run";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("checkpoint-12"), std::string::npos) << e.what();
    }
  }
  // A damaged checkpoint is an error that names it and says what to do, not a crash.
  {
    LoraModel lm(L.model, small_lora(0.1));
    t.adamw.lr = 5e-3;
    fs::resize_file(tmp.path("crashed/checkpoint-12/trainer_state.safetensors"), 100);
    try {
      train(lm, seqs, {}, t);
      ADD_FAILURE() << "resumed a truncated checkpoint";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("checkpoint-12"), std::string::npos) << m;
      EXPECT_NE(m.find("remove the directory"), std::string::npos) << m;
    }
  }
}

TEST(Trainer, LossPlotHandlesEdgeCases) {
  EXPECT_NE(loss_plot_svg({}, {}, "empty").find("</svg>"), std::string::npos);
  EXPECT_NE(loss_plot_svg({{1, 2.0}}, {}, "one <point>").find("one &lt;point&gt;"), std::string::npos);
  std::vector<LossPoint> flat(50, {0, 1.5});
  for (size_t i = 0; i < flat.size(); ++i) flat[i].step = static_cast<double>(i + 1);
  const std::string s = loss_plot_svg(flat, {{0, 1.6}, {50, 1.4}}, "flat");
  EXPECT_EQ(s.find("nan"), std::string::npos);
  EXPECT_NE(s.find("<circle"), std::string::npos);
}

// A real `qlora train` process killed with SIGKILL between checkpoints, then resumed with
// the same command line, ends with the adapter of a run that was never interrupted.
TEST(Cli, KilledTrainingResumesBitExact) {
  TempDir tmp("kill");
  std::ifstream f(data_dir() + "/text/tinyshakespeare.txt", std::ios::binary);
  std::string text(30000, '\0');
  f.read(text.data(), static_cast<std::streamsize>(text.size()));
  const std::string data = tmp.path("shakespeare.txt");
  write_file(data, text);
  auto args = [&](const std::string& out) {
    return std::vector<std::string>{"train",      "--model",      stories_bin(), "--data",     data,
                                    "--out",      out,            "--quant",     "nf4",        "--double-quant",
                                    "--lora-r",   "8",            "--max-steps", "40",         "--batch-size",
                                    "2",          "--seq-len",    "64",         "--lr",       "5e-3",
                                    "--save-every", "5",          "--threads",   "1",          "--quiet"};
  };
  const CliResult straight = run_cli(args(tmp.path("straight")));
  ASSERT_EQ(straight.exit_code, 0) << straight.err;

  // Start the same run and kill it as soon as its first checkpoint is complete.
  const std::string out = tmp.path("killed");
  std::vector<std::string> a = args(out);
  std::vector<char*> argv;
  std::string cli = QLORA_CLI_PATH;
  argv.push_back(cli.data());
  for (std::string& s : a) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, cli.c_str(), nullptr, nullptr, argv.data(), environ), 0);
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(out + "/checkpoint-5/trainer_state.safetensors") &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed; make it longer";
  ASSERT_FALSE(fs::exists(out + "/adapter_model.safetensors"));
  const auto ckpt = latest_checkpoint(out);
  ASSERT_TRUE(ckpt.has_value());
  std::printf("killed after %s\n", ckpt->c_str());

  std::vector<std::string> resume = args(out);
  resume.push_back("--resume");
  const CliResult r = run_cli(resume);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(tmp.path("straight/adapter_model.safetensors")), read_file(out + "/adapter_model.safetensors"));
}

TEST(Cli, TrainThenEvalWithAdapter) {
  TempDir tmp("cli_eval");
  write_file(tmp.path("d.jsonl"),
             "{\"instruction\": \"Say hi.\", \"output\": \"The end.\"}\n"
             "{\"instruction\": \"Say bye.\", \"input\": \"\", \"output\": \"The end.\"}\n"
             "not json\n"
             "{\"instruction\": \"Say ok.\", \"output\": \"The end.\"}\n");
  const CliResult r = run_cli({"train", "--model", stories_bin(), "--data", tmp.path("d.jsonl"), "--out",
                               tmp.path("out"), "--quant", "nf4", "--lora-r", "8", "--lora-dropout", "0",
                               "--epochs", "30", "--seq-len", "128", "--batch-size", "3", "--lr", "1e-2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("d.jsonl:3"), std::string::npos) << r.err;  // the bad line is reported
  EXPECT_TRUE(fs::exists(tmp.path("out/loss.svg")));
  const PeftAdapter a = load_peft_adapter(tmp.path("out"));
  EXPECT_EQ(a.modules.size(), 35u);

  // stories260K never saw an EOS in pre-training (its tied EOS embedding is untrained, so
  // no LoRA can make it likely): answers are cut at the reference's length (4 tokens).
  auto eval = [&](bool with_adapter) {
    std::vector<std::string> args = {"eval", "--model", stories_bin(), "--data", tmp.path("d.jsonl"), "--quant",
                                     "nf4", "--generate", "--max-new-tokens", "4", "--json", "--quiet"};
    if (with_adapter) args.insert(args.end(), {"--adapter", tmp.path("out")});
    const CliResult e = run_cli(args);
    EXPECT_EQ(e.exit_code, 0) << e.err;
    return nlohmann::json::parse(e.out);
  };
  const auto before = eval(false), after = eval(true);
  EXPECT_EQ(after.at("answered").get<int>(), 3);
  EXPECT_EQ(before.at("exact_match").get<int>(), 0) << before.dump();
  EXPECT_EQ(after.at("exact_match").get<int>(), 3) << after.dump();
  EXPECT_LT(after.at("loss").get<double>(), before.at("loss").get<double>() - 1.0);

  const CliResult strict = run_cli({"train", "--model", stories_bin(), "--data", tmp.path("d.jsonl"), "--out",
                                    tmp.path("out2"), "--on-bad-record", "error"});
  EXPECT_NE(strict.exit_code, 0);
  EXPECT_NE(strict.err.find("d.jsonl:3"), std::string::npos) << strict.err;
}
