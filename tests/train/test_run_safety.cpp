// What the trainer does so that a run never loses or fakes a user's work (issue 10), in
// process on stories260K (the same cases as real `qlora` processes are in
// tests/cli/test_user_errors.cpp):
//  - the output directory: an earlier run's output is refused unless resume/overwrite;
//    overwrite removes exactly those outputs; resume without a checkpoint refuses to
//    replace a finished adapter; stale temporaries are removed; the lock is shared within
//    a process and refused across processes;
//  - checkpoint rotation deletes only this run's checkpoints;
//  - divergence: a NaN/inf LoRA parameter after an update, or several non-finite steps in
//    a row, stop the run with an Error, keep the last good checkpoint and write nothing
//    non-finite; options that are not finite are refused;
//  - a failed metrics write (a full device) throws naming the file and leaves no torn line.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "base/append_file.h"
#include "base/error.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "lora/peft_adapter.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "train/checkpoint.h"
#include "train/output_dir.h"
#include "train/sft_dataset.h"
#include "train/trainer.h"

using namespace qlora;
using namespace qlora::test;
namespace fs = std::filesystem;

namespace {

// stories260K's tensors, with one element of one tensor replaced (to poison a model).
class PoisonedSource : public TensorSource {
 public:
  PoisonedSource(const TensorSource& base, std::string name, float value)
      : base_(base), name_(std::move(name)), value_(value) {}
  std::vector<std::string> names() const override { return base_.names(); }
  bool has(const std::string& n) const override { return base_.has(n); }
  std::vector<int64_t> shape(const std::string& n) const override { return base_.shape(n); }
  std::vector<float> get(const std::string& n) const override {
    std::vector<float> v = base_.get(n);
    if (n == name_) v[0] = value_;
    return v;
  }
  std::string describe() const override { return base_.describe(); }

 private:
  const TensorSource& base_;
  std::string name_;
  float value_;
};

LoraConfig small_lora() {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dropout = 0;
  c.all_linear = true;
  c.seed = 1;
  return c;
}

struct Fixture {
  ModelFiles files = open_model_files(stories_bin());
  std::vector<TrainSequence> seqs;
  Fixture() {
    std::ifstream f(data_dir() + "/text/tinyshakespeare.txt", std::ios::binary);
    std::string text(8000, '\0');
    f.read(text.data(), static_cast<std::streamsize>(text.size()));
    TempDir tmp("safety_data");
    write_file(tmp.path("d.txt"), text);
    DatasetOptions d;
    d.seq_len = 64;
    seqs = build_sequences(load_examples(tmp.path("d.txt"), *files.tokenizer, d).examples, d);
  }
  Model model(const TensorSource* src = nullptr) const {
    ModelLoadOptions o;
    o.quant.quantize = true;
    return Model::load(files.spec, src ? *src : *files.tensors, o);
  }
};

TrainerOptions options(const std::string& out) {
  TrainerOptions t;
  t.out_dir = out;
  t.base_model_name = "stories260K";
  t.max_steps = 6;
  t.batch_size = 2;
  t.adamw.lr = 5e-3;
  t.save_every = 2;
  t.progress = false;
  return t;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has_substr(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

}  // namespace

TEST(RunSafety, EarlierRunIsRefusedUnlessResumeOrOverwrite) {
  Fixture fx;
  const Model m = fx.model();
  TempDir tmp("safety_dir");
  const std::string out = tmp.path("out");
  {
    LoraModel lm(m, small_lora());
    train(lm, fx.seqs, {}, options(out));
  }
  const std::string adapter = read_file(out + "/adapter_model.safetensors");
  const std::string metrics = read_file(out + "/metrics.jsonl");
  ASSERT_TRUE(fs::exists(out + "/checkpoint-4"));

  // A new run into it: refused, nothing changed.
  TrainerOptions t = options(out);
  t.adamw.lr = 1e-3;
  {
    LoraModel lm(m, small_lora());
    const std::string e = error_of([&] { train(lm, fx.seqs, {}, t); });
    EXPECT_TRUE(has_substr(e, "earlier run") && has_substr(e, "--overwrite-output-dir") && has_substr(e, "--resume"))
        << e;
  }
  EXPECT_EQ(read_file(out + "/adapter_model.safetensors"), adapter);
  EXPECT_EQ(read_file(out + "/metrics.jsonl"), metrics);
  EXPECT_TRUE(fs::exists(out + "/checkpoint-4"));

  // --resume and --overwrite-output-dir together contradict each other.
  t.resume = t.overwrite_output_dir = true;
  EXPECT_TRUE(has_substr(error_of([&] { check_output_dir(out, true, true); }), "contradicts"));

  // Overwrite: the old run's outputs go, the new run's checkpoints are all its own.
  t.resume = false;
  t.max_steps = 4;
  write_file(out + "/checkpoint-4.tmp-99999/junk", "x");  // a killed run's leftover
  write_file(out + "/notes.txt", "the user's own file");
  {
    LoraModel lm(m, small_lora());
    train(lm, fx.seqs, {}, t);
  }
  EXPECT_FALSE(fs::exists(out + "/checkpoint-4.tmp-99999"));
  EXPECT_EQ(read_file(out + "/notes.txt"), "the user's own file");
  EXPECT_TRUE(fs::exists(out + "/checkpoint-2"));
  EXPECT_FALSE(fs::exists(out + "/checkpoint-4"));  // the old run's, removed; the new run saves none at its last step
  EXPECT_NE(read_file(out + "/adapter_model.safetensors"), adapter);
  size_t lines = 0;
  std::ifstream f(out + "/metrics.jsonl");
  for (std::string l; std::getline(f, l);) ++lines;
  EXPECT_EQ(lines, 4u);  // one line per step of the new run (no eval set)
}

TEST(RunSafety, ResumeWithoutCheckpointKeepsAFinishedAdapter) {
  Fixture fx;
  const Model m = fx.model();
  TempDir tmp("safety_resume");
  const std::string out = tmp.path("out");
  TrainerOptions t = options(out);
  t.save_every = 0;
  {
    LoraModel lm(m, small_lora());
    train(lm, fx.seqs, {}, t);
  }
  const std::string adapter = read_file(out + "/adapter_model.safetensors");
  t.resume = true;
  LoraModel lm(m, small_lora());
  const std::string e = error_of([&] { train(lm, fx.seqs, {}, t); });
  EXPECT_TRUE(has_substr(e, "no checkpoint") && has_substr(e, "adapter_model.safetensors")) << e;
  EXPECT_EQ(read_file(out + "/adapter_model.safetensors"), adapter);

  // An empty directory with --resume just starts (the pattern of a preemptible job).
  t.out_dir = tmp.path("fresh");
  LoraModel lm2(m, small_lora());
  EXPECT_EQ(train(lm2, fx.seqs, {}, t).first_step, 1);
}

TEST(RunSafety, LockIsSharedInProcessAndRefusedAcrossProcesses) {
  TempDir tmp("safety_lock");
  const std::string out = tmp.path("out");
  OutputDirLock a(out);
  OutputDirLock b(out);  // same process: shared (the CLI and the trainer both take it)
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Another process: refused at once, with the holder named.
    try {
      OutputDirLock c(out);
      _exit(1);
    } catch (const Error& e) {
      const std::string m = e.what();
      _exit(has_substr(m, "in use by another training run") && has_substr(m, "pid " + std::to_string(getppid())) ? 0
                                                                                                                 : 2);
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(RunSafety, RotationDeletesOnlyThisRunsCheckpoints) {
  Fixture fx;
  const Model m = fx.model();
  TempDir tmp("safety_rotation");
  const std::string out = tmp.path("out");
  // A checkpoint of another run (another learning rate) with a higher step number.
  {
    LoraModel lm(m, small_lora());
    TrainerOptions t = options(tmp.path("other"));
    t.adamw.lr = 1e-3;
    t.max_steps = 4;
    t.save_every = 2;
    train(lm, fx.seqs, {}, t);
  }
  fs::create_directories(out);
  fs::copy(tmp.path("other/checkpoint-2"), out + "/checkpoint-100");
  // It can only be there with --resume, which refuses it as another run's...
  LoraModel lm(m, small_lora());
  TrainerOptions t = options(out);
  t.resume = true;
  EXPECT_TRUE(has_substr(error_of([&] { train(lm, fx.seqs, {}, t); }), "checkpoint-100"));
  // ...but rotation itself never removes a checkpoint that is not this run's.
  TrainerState st;
  st.fingerprint = 12345;
  LoraModel lm2(m, small_lora());
  AdamWConfig ac;
  std::vector<AdamWParam> params;
  for (LoraLayer& l : lm2.layers()) params.push_back({l.module_path + ".lora_A.weight", l.A, l.dA});
  auto opt = make_optimizer(OptimKind::AdamW32, std::move(params), ac, out);
  for (int64_t s : {1, 2, 3}) {
    st.step = s;
    save_checkpoint(out, lm2, "x", *opt, st, 1);
  }
  EXPECT_TRUE(fs::exists(out + "/checkpoint-100"));
  EXPECT_FALSE(fs::exists(out + "/checkpoint-1"));
  EXPECT_FALSE(fs::exists(out + "/checkpoint-2"));
  EXPECT_TRUE(fs::exists(out + "/checkpoint-3"));
}

TEST(RunSafety, NonFiniteParametersStopTheRunAndNothingNonFiniteIsSaved) {
  Fixture fx;
  const Model m = fx.model();
  TempDir tmp("safety_nan");
  const std::string out = tmp.path("out");
  LoraModel lm(m, small_lora());
  TrainerOptions t = options(out);
  // After step 3 a parameter turns NaN (as an overflowing update would make it).
  const std::string e = error_of([&] {
    train(lm, fx.seqs, {}, t, [&](const TrainStepLog& s) {
      if (s.step == 3) lm.layers()[5].B[7] = std::nanf("");
    });
  });
  EXPECT_TRUE(has_substr(e, "diverged") && has_substr(e, "step 3") && has_substr(e, "checkpoint-2")) << e;
  EXPECT_TRUE(fs::exists(out + "/checkpoint-2"));
  EXPECT_FALSE(fs::exists(out + "/adapter_model.safetensors"));
  EXPECT_NO_THROW(load_peft_adapter(out + "/checkpoint-2"));
  // Saving or loading non-finite weights is refused.
  EXPECT_TRUE(has_substr(error_of([&] { save_peft_adapter(tmp.path("nan"), lm.config(), "x", lm.layers()); }),
                         "non-finite"));
  fs::copy(out + "/checkpoint-2", tmp.path("bad"));
  {
    // Patch one float of the saved adapter to NaN, past the header.
    std::fstream f(tmp.path("bad/adapter_model.safetensors"), std::ios::in | std::ios::out | std::ios::binary);
    uint64_t header = 0;
    f.read(reinterpret_cast<char*>(&header), 8);
    f.seekp(static_cast<std::streamoff>(8 + header + 16));
    const float nan = std::nanf("");
    f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  EXPECT_TRUE(has_substr(error_of([&] { load_peft_adapter(tmp.path("bad")); }), "non-finite"));
}

TEST(RunSafety, NonFiniteLossesInARowStopTheRun) {
  Fixture fx;
  // An infinite final-norm weight: every loss is NaN while the LoRA weights stay finite.
  PoisonedSource poisoned(*fx.files.tensors, "model.norm.weight", INFINITY);
  const Model m = fx.model(&poisoned);
  TempDir tmp("safety_inf");
  LoraModel lm(m, small_lora());
  TrainerOptions t = options(tmp.path("out"));
  t.max_steps = 20;
  t.save_every = 0;
  int64_t seen = 0;
  const std::string e = error_of([&] { train(lm, fx.seqs, {}, t, [&](const TrainStepLog& s) {
                                   EXPECT_TRUE(s.skipped);
                                   seen = s.step;
                                 }); });
  EXPECT_EQ(seen, t.max_nonfinite_steps);
  EXPECT_TRUE(has_substr(e, "NaN/inf for 5 steps in a row") && has_substr(e, "--lr")) << e;
  EXPECT_FALSE(fs::exists(tmp.path("out/adapter_model.safetensors")));
  // metrics.jsonl holds no non-finite number (JSON has none: they are written as null).
  std::ifstream f(tmp.path("out/metrics.jsonl"));
  for (std::string l; std::getline(f, l);) {
    EXPECT_EQ(l.find("NaN"), std::string::npos) << l;
    EXPECT_EQ(l.find("inf"), std::string::npos) << l;
  }
}

TEST(RunSafety, OptionsMustBeFinite) {
  Fixture fx;
  const Model m = fx.model();
  TempDir tmp("safety_opts");
  LoraModel lm(m, small_lora());
  for (double lr : {double(INFINITY), double(NAN), 1e30, -1.0, 0.0}) {
    TrainerOptions t = options(tmp.path("out"));
    t.adamw.lr = lr;
    EXPECT_TRUE(has_substr(error_of([&] { train(lm, fx.seqs, {}, t); }), "--lr")) << lr;
  }
  TrainerOptions t = options(tmp.path("out"));
  t.warmup_ratio = 2;
  EXPECT_TRUE(has_substr(error_of([&] { train(lm, fx.seqs, {}, t); }), "--warmup-ratio"));
  t = options(tmp.path("out"));
  t.max_grad_norm = NAN;
  EXPECT_TRUE(has_substr(error_of([&] { train(lm, fx.seqs, {}, t); }), "--max-grad-norm"));
  EXPECT_FALSE(fs::exists(tmp.path("out/metrics.jsonl")));
}

TEST(RunSafety, FailedMetricsWriteThrowsAndLeavesNoTornLine) {
  TempDir tmp("safety_full");
  // /dev/full answers every write with ENOSPC, as a full disk does.
  const std::string e = error_of([&] {
    LineAppendFile f("/dev/full", false);
    f.append_line("{\"step\": 1}");
  });
  EXPECT_TRUE(has_substr(e, "/dev/full") && has_substr(e, "No space left on device")) << e;

  // A partial write is cut back: a file that hits its size limit keeps whole lines only.
  const std::string path = tmp.path("m.jsonl");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim {1000, 1000};
    setrlimit(RLIMIT_FSIZE, &lim);
    LineAppendFile f(path, true);
    try {
      for (int i = 0; i < 1000; ++i) f.append_line("{\"step\": " + std::to_string(i) + ", \"pad\": \"xxxxxxxxxxxxxxx\"}");
    } catch (const Error&) {
      _exit(0);
    }
    _exit(1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const std::string text = read_file(path);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  EXPECT_LE(text.size(), 1000u);
}
