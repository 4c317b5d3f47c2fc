// The Optimizer interface over every kind: paged variants bit-identical to the in-memory
// ones, the paged state file's life cycle and errors, checkpoint round trips that resume
// bit for bit, the kind check, and state_bytes().
#include <gtest/gtest.h>

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/safetensors.h"
#include "optim/adamw.h"
#include "optim/adamw8bit.h"
#include "optim/optimizer.h"
#include "optim/paged_adamw32.h"
#include "optim/paged_buffer.h"

using namespace qlora;
namespace fs = std::filesystem;

namespace {

const OptimKind kAllKinds[] = {OptimKind::AdamW32, OptimKind::AdamW8bit, OptimKind::PagedAdamW32,
                               OptimKind::PagedAdamW8bit};

// A scratch directory removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "qlora-test-optim-XXXXXX").string();
    char* p = mkdtemp(t.data());
    if (!p) throw std::runtime_error("mkdtemp failed");
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

std::vector<fs::path> state_files(const fs::path& dir) {
  std::vector<fs::path> r;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("qlora-optimizer-state-", 0) == 0) r.push_back(e.path());
  return r;
}

// Parameters of awkward sizes: 8-bit with a partial block, below min_8bit_size, and large
// enough to run on several threads. Gradients are a deterministic function of the step.
struct Model {
  static constexpr int64_t kSizes[] = {4096 + 37, 300, 70000 + 5};
  std::vector<std::vector<float>> values, grads;
  Model() {
    for (int64_t n : kSizes) {
      std::vector<float> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = std::sin(0.37f * static_cast<float>(i) + 1.f);
      values.push_back(v);
      grads.emplace_back(static_cast<size_t>(n), 0.f);
    }
  }
  std::vector<AdamWParam> params() {
    std::vector<AdamWParam> r;
    for (size_t i = 0; i < values.size(); ++i) r.push_back({"layer" + std::to_string(i) + ".w", values[i], grads[i]});
    return r;
  }
  void set_grads(int step) {
    for (size_t k = 0; k < grads.size(); ++k)
      for (size_t i = 0; i < grads[k].size(); ++i)
        grads[k][i] = 0.01f * std::cos(0.11f * static_cast<float>(i) * static_cast<float>(step) + static_cast<float>(k)) +
                      (i % 97 == 0 ? 0.5f : 0.f);
  }
};

AdamWConfig config() {
  AdamWConfig c;
  c.lr = 1e-2;
  c.weight_decay = 0.01;
  return c;
}

void expect_same_values(const Model& a, const Model& b) {
  for (size_t k = 0; k < a.values.size(); ++k)
    ASSERT_EQ(std::memcmp(a.values[k].data(), b.values[k].data(), a.values[k].size() * sizeof(float)), 0)
        << "parameter " << k;
}

double lr_at(int step) { return 1e-2 * (1.0 + 0.1 * step); }  // a schedule, so lr varies

TEST(PagedOptimizers, PagedAdamW32IsBitIdenticalToAdamW) {
  TempDir dir;
  Model a, b;
  AdamW ref(a.params(), config());
  PagedAdamW32 paged(b.params(), config(), dir.str());
  EXPECT_TRUE(paged.buffer().is_paged());
  for (int s = 1; s <= 5; ++s) {
    a.set_grads(s);
    b.set_grads(s);
    ref.step(lr_at(s));
    paged.step(lr_at(s));
    expect_same_values(a, b);
    for (size_t k = 0; k < a.values.size(); ++k) {
      ASSERT_EQ(std::memcmp(ref.exp_avg(k).data(), paged.exp_avg(k).data(), ref.exp_avg(k).size_bytes()), 0);
      ASSERT_EQ(std::memcmp(ref.exp_avg_sq(k).data(), paged.exp_avg_sq(k).data(), ref.exp_avg_sq(k).size_bytes()), 0);
    }
  }
}

TEST(PagedOptimizers, PagedAdamW8bitIsBitIdenticalToAdamW8bit) {
  TempDir dir;
  Model a, b;
  AdamW8bit ref(a.params(), config());
  AdamW8bit paged(b.params(), config(), dir.str());
  EXPECT_FALSE(ref.buffer().is_paged());
  EXPECT_TRUE(paged.buffer().is_paged());
  for (int s = 1; s <= 5; ++s) {
    a.set_grads(s);
    b.set_grads(s);
    ref.step(lr_at(s));
    paged.step(lr_at(s));
    expect_same_values(a, b);
    for (size_t k = 0; k < a.values.size(); ++k) {
      ASSERT_EQ(ref.is_8bit(k), paged.is_8bit(k));
      if (ref.is_8bit(k)) {
        ASSERT_TRUE(std::equal(ref.codes1(k).begin(), ref.codes1(k).end(), paged.codes1(k).begin()));
        ASSERT_TRUE(std::equal(ref.codes2(k).begin(), ref.codes2(k).end(), paged.codes2(k).begin()));
        ASSERT_EQ(std::memcmp(ref.absmax1(k).data(), paged.absmax1(k).data(), ref.absmax1(k).size_bytes()), 0);
        ASSERT_EQ(std::memcmp(ref.absmax2(k).data(), paged.absmax2(k).data(), ref.absmax2(k).size_bytes()), 0);
      } else {
        ASSERT_EQ(std::memcmp(ref.state1_f32(k).data(), paged.state1_f32(k).data(), ref.state1_f32(k).size_bytes()),
                  0);
      }
    }
  }
}

// Through the interface too, for both paged kinds against their in-memory twins.
TEST(PagedOptimizers, MakeOptimizerPagedKindsMatchInMemoryKinds) {
  TempDir dir;
  for (auto [mem, paged] : {std::pair{OptimKind::AdamW32, OptimKind::PagedAdamW32},
                            std::pair{OptimKind::AdamW8bit, OptimKind::PagedAdamW8bit}}) {
    SCOPED_TRACE(optim_kind_name(paged));
    Model a, b;
    auto oa = make_optimizer(mem, a.params(), config(), dir.str());
    auto ob = make_optimizer(paged, b.params(), config(), dir.str());
    EXPECT_EQ(state_files(dir.path).size(), 1u);  // only the paged one has a file
    for (int s = 1; s <= 3; ++s) {
      a.set_grads(s);
      b.set_grads(s);
      oa->step(lr_at(s));
      ob->step(lr_at(s));
    }
    expect_same_values(a, b);
    EXPECT_EQ(oa->state_bytes(), ob->state_bytes());
  }
}

TEST(PagedOptimizers, StateFileExistsWhileTheOptimizerLivesAndIsRemovedAfter) {
  TempDir dir;
  const fs::path sub = dir.path / "nested" / "state";  // created on demand
  Model m;
  {
    auto opt = make_optimizer(OptimKind::PagedAdamW8bit, m.params(), config(), sub.string());
    auto files = state_files(sub);
    ASSERT_EQ(files.size(), 1u);
    // The reserved size covers the state (plus alignment padding).
    EXPECT_GE(fs::file_size(files[0]), opt->state_bytes());
    m.set_grads(1);
    opt->step(1e-3);
    EXPECT_EQ(state_files(sub).size(), 1u);
  }
  EXPECT_TRUE(state_files(sub).empty());
  {
    PagedAdamW32 opt(m.params(), config(), sub.string());
    ASSERT_EQ(state_files(sub).size(), 1u);
    EXPECT_EQ(opt.buffer().path(), state_files(sub)[0].string());
  }
  EXPECT_TRUE(state_files(sub).empty());
}

TEST(PagedOptimizers, EmptyDirectoryMeansTheSystemTempDir) {
  TempDir dir;
  const char* old = std::getenv("TMPDIR");
  const std::string saved = old ? old : "";
  setenv("TMPDIR", dir.str().c_str(), 1);
  Model m;
  {
    auto opt = make_optimizer(OptimKind::PagedAdamW32, m.params(), config(), "");
    EXPECT_EQ(state_files(dir.path).size(), 1u);
  }
  EXPECT_TRUE(state_files(dir.path).empty());
  if (old)
    setenv("TMPDIR", saved.c_str(), 1);
  else
    unsetenv("TMPDIR");
}

TEST(PagedOptimizers, BadDirectoryIsAnErrorNamingIt) {
  TempDir dir;
  const fs::path file = dir.path / "not_a_dir";
  std::ofstream(file) << "x";
  for (const fs::path& bad : {file, file / "sub"}) {
    for (OptimKind k : {OptimKind::PagedAdamW32, OptimKind::PagedAdamW8bit}) {
      Model m;
      try {
        make_optimizer(k, m.params(), config(), bad.string());
        ADD_FAILURE() << "no error for " << bad;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(bad.string()), std::string::npos) << e.what();
      }
    }
  }
  // The in-memory kinds ignore the directory.
  Model m;
  EXPECT_NO_THROW(make_optimizer(OptimKind::AdamW8bit, m.params(), config(), (file / "sub").string()));
}

TEST(PagedBuffer, StartsZeroedAndKeepsWhatIsWritten) {
  TempDir dir;
  PagedBuffer b(dir.str(), 3 * 4096 + 5, "unit");
  ASSERT_NE(b.data(), nullptr);
  for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b.data()[i], 0) << i;
  std::memset(b.data(), 0xab, b.size());
  EXPECT_EQ(b.data()[b.size() - 1], 0xab);
  EXPECT_EQ(fs::file_size(b.path()), b.size());
  PagedBuffer moved = std::move(b);
  EXPECT_TRUE(b.path().empty());
  EXPECT_EQ(moved.data()[7], 0xab);
  const std::string path = moved.path();
  moved = PagedBuffer();
  EXPECT_FALSE(fs::exists(path));
  PagedBuffer empty(dir.str(), 0, "unit");  // zero bytes: a file, no mapping
  EXPECT_TRUE(fs::exists(empty.path()));
}

// save_state in the middle of a run, load into a fresh optimizer (and fresh parameter
// buffers holding the saved parameters), continue: identical to the uninterrupted run.
TEST(Optimizers, CheckpointRoundTripResumesBitForBit) {
  TempDir dir;
  for (OptimKind kind : kAllKinds) {
    SCOPED_TRACE(optim_kind_name(kind));
    Model full;
    auto of = make_optimizer(kind, full.params(), config(), dir.str());
    for (int s = 1; s <= 6; ++s) {
      full.set_grads(s);
      of->step(lr_at(s));
    }
    Model first;
    const std::string ckpt = (dir.path / "opt.safetensors").string();
    size_t bytes_before = 0;
    {
      auto o1 = make_optimizer(kind, first.params(), config(), dir.str());
      for (int s = 1; s <= 3; ++s) {
        first.set_grads(s);
        o1->step(lr_at(s));
      }
      SafeTensorsWriter w;
      o1->save_state(w);
      w.write(ckpt);
      bytes_before = o1->state_bytes();
    }
    Model resumed;
    resumed.values = first.values;  // the trainer restores parameters from its adapter
    auto o2 = make_optimizer(kind, resumed.params(), config(), dir.str());
    o2->load_state(SafeTensorsFile(ckpt));
    EXPECT_EQ(o2->steps_taken(), 3);
    EXPECT_EQ(o2->state_bytes(), bytes_before);
    for (int s = 4; s <= 6; ++s) {
      resumed.set_grads(s);
      o2->step(lr_at(s));
    }
    EXPECT_EQ(o2->steps_taken(), 6);
    expect_same_values(full, resumed);
    // And the state itself: save both and compare every tensor byte for byte.
    SafeTensorsWriter wa, wb;
    of->save_state(wa);
    o2->save_state(wb);
    const std::string pa = (dir.path / "a.safetensors").string(), pb = (dir.path / "b.safetensors").string();
    wa.write(pa);
    wb.write(pb);
    SafeTensorsFile fa(pa), fb(pb);
    ASSERT_EQ(fa.tensors().size(), fb.tensors().size());
    for (const auto& t : fa.tensors()) {
      const auto da = fa.data(t), db = fb.data(fb.at(t.name));
      ASSERT_TRUE(std::equal(da.begin(), da.end(), db.begin(), db.end())) << t.name;
    }
    EXPECT_EQ(fa.metadata(), fb.metadata());
  }
}

TEST(Optimizers, SavedTensorsAndKindMetadata) {
  TempDir dir;
  Model m;
  auto opt = make_optimizer(OptimKind::PagedAdamW8bit, m.params(), config(), dir.str());
  m.set_grads(1);
  opt->step(1e-3);
  SafeTensorsWriter w;
  opt->save_state(w, "opt.");
  const std::string path = (dir.path / "s.safetensors").string();
  w.write(path);
  SafeTensorsFile f(path);
  EXPECT_EQ(f.metadata().at("opt.kind"), "paged_adamw_8bit");
  EXPECT_EQ(f.metadata().at("opt.step"), "1");
  EXPECT_EQ(f.at("opt.layer0.w.state1").dtype, DType::U8);
  EXPECT_EQ(f.at("opt.layer0.w.absmax2").numel(), 17);
  EXPECT_EQ(f.at("opt.layer1.w.state1").dtype, DType::F32);  // 300 < 4096: float32 state
  EXPECT_EQ(f.find("opt.layer1.w.absmax1"), nullptr);
}

// Paged and in-memory variants share a layout and may resume each other; 8-bit and
// 32-bit may not, and the error says which optimizer wrote the file.
TEST(Optimizers, KindCheckOnLoad) {
  TempDir dir;
  auto save = [&](OptimKind k) {
    Model m;
    auto o = make_optimizer(k, m.params(), config(), dir.str());
    m.set_grads(1);
    o->step(1e-3);
    SafeTensorsWriter w;
    o->save_state(w);
    const std::string p = (dir.path / (std::string(optim_kind_name(k)) + ".safetensors")).string();
    w.write(p);
    return p;
  };
  for (OptimKind writer : kAllKinds) {
    const std::string p = save(writer);
    for (OptimKind reader : kAllKinds) {
      SCOPED_TRACE(std::string(optim_kind_name(writer)) + " -> " + optim_kind_name(reader));
      Model m;
      auto o = make_optimizer(reader, m.params(), config(), dir.str());
      if (optim_is_8bit(writer) == optim_is_8bit(reader)) {
        EXPECT_NO_THROW(o->load_state(SafeTensorsFile(p)));
        EXPECT_EQ(o->steps_taken(), 1);
      } else {
        try {
          o->load_state(SafeTensorsFile(p));
          ADD_FAILURE() << "loaded";
        } catch (const Error& e) {
          const std::string msg = e.what();
          EXPECT_NE(msg.find(p), std::string::npos) << msg;
          EXPECT_NE(msg.find(optim_kind_name(writer)), std::string::npos) << msg;
        }
      }
    }
  }
}

TEST(Optimizers, LoadRejectsMismatchedStateWithoutChangingIt) {
  TempDir dir;
  Model small;
  small.values[0].resize(5000);  // different size from Model's 4133
  small.grads[0].resize(5000);
  auto o = make_optimizer(OptimKind::AdamW8bit, small.params(), config(), dir.str());
  small.set_grads(1);
  o->step(1e-3);
  SafeTensorsWriter w;
  o->save_state(w);
  const std::string p = (dir.path / "s.safetensors").string();
  w.write(p);

  for (OptimKind k : {OptimKind::AdamW8bit, OptimKind::PagedAdamW8bit}) {
    Model m;
    auto o2 = make_optimizer(k, m.params(), config(), dir.str());
    try {
      o2->load_state(SafeTensorsFile(p));
      ADD_FAILURE() << "loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("layer0.w.state1"), std::string::npos) << e.what();
    }
    EXPECT_EQ(o2->steps_taken(), 0);
  }
  // A missing tensor names its key.
  SafeTensorsWriter w2;
  w2.set_metadata("optimizer.step", "1");
  w2.set_metadata("optimizer.kind", "adamw_8bit");
  const std::string p2 = (dir.path / "empty.safetensors").string();
  w2.write(p2);
  Model m;
  auto o3 = make_optimizer(OptimKind::AdamW8bit, m.params(), config());
  EXPECT_THROW(o3->load_state(SafeTensorsFile(p2)), Error);
}

TEST(Optimizers, StateBytes) {
  Model m;
  const size_t n0 = 4133, n1 = 300, n2 = 70005;
  const size_t f32 = 8 * (n0 + n1 + n2);
  const size_t b8 = (2 * n0 + 2 * 17 * 4) + 8 * n1 + (2 * n2 + 2 * 274 * 4);
  for (OptimKind k : kAllKinds) {
    auto o = make_optimizer(k, m.params(), config());
    EXPECT_EQ(o->state_bytes(), optim_is_8bit(k) ? b8 : f32) << optim_kind_name(k);
  }
}

TEST(Optimizers, KindNames) {
  for (OptimKind k : kAllKinds) EXPECT_EQ(optim_kind_from_string(optim_kind_name(k)), k);
  EXPECT_EQ(optim_kind_from_string("adamw_bnb_8bit"), OptimKind::AdamW8bit);
  try {
    optim_kind_from_string("sgd");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("paged_adamw_8bit"), std::string::npos);
  }
}

}  // namespace

// State files of runs that were SIGKILLed (their pid is gone) are removed; files of live
// processes (this one) and unrelated files stay.
TEST(PagedBuffer, RemovesStateFilesOfDeadProcessesOnly) {
  const fs::path dir = fs::temp_directory_path() / ("qlora_stale_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string dead = (dir / "qlora-optimizer-state-999999999-a1b2c3").string();  // above any pid_max
  const std::string mine = (dir / ("qlora-optimizer-state-" + std::to_string(getpid()) + "-zzzzzz")).string();
  const std::string other = (dir / "notes-123-abc").string();
  for (const std::string& p : {dead, mine, other}) std::ofstream(p) << "x";
  EXPECT_EQ(remove_stale_paged_files(dir.string()), 1u);
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(mine));
  EXPECT_TRUE(fs::exists(other));
  fs::remove_all(dir);
}
