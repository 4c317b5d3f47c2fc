#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string_view>

#include "base/error.h"
#include "formats/safetensors.h"
#include "lora/peft_adapter.h"
#include "optim/optimizer.h"
#include "train/train_model.h"

namespace qlora {

namespace fs = std::filesystem;

namespace {

constexpr const char* kStateFile = "trainer_state.safetensors";
constexpr std::string_view kPrefix = "checkpoint-";

// Files of a checkpoint, from `from` into the existing directory `to` (which holds other files
// of the user's, so it cannot be replaced whole), each by an atomic rename; then `from` goes.
void move_checkpoint_files(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(from, ec)) {
    fs::rename(e.path(), to / e.path().filename(), ec);
    if (ec) fail((to / e.path().filename()).string(), "cannot move the checkpoint file into place: " + ec.message());
  }
  fs::remove(from, ec);
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t parse_hex64(const SafeTensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  check(it != f.metadata().end(), f.path(), "missing metadata '" + key + "'");
  const std::string& s = it->second;
  check(s.size() == 16 && s.find_first_not_of("0123456789abcdef") == std::string::npos, f.path(),
        "metadata '" + key + "' is not a 64-bit hex number: '" + s + "'");
  return std::stoull(s, nullptr, 16);
}

int64_t parse_int(const SafeTensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  check(it != f.metadata().end(), f.path(), "missing metadata '" + key + "'");
  const std::string& s = it->second;
  check(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos && s.size() < 19, f.path(),
        "metadata '" + key + "' is not a count: '" + s + "'");
  return std::stoll(s);
}

// Step number of a "checkpoint-<N>" directory name, or -1.
int64_t checkpoint_step(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0) return -1;
  const std::string digits = name.substr(kPrefix.size());
  if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const std::string& out_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(out_dir, ec)) {
    if (!e.is_directory()) continue;
    const int64_t s = checkpoint_step(e.path().filename().string());
    if (s >= 0) out.emplace_back(s, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void write_checkpoint_files(const fs::path& tmp_dir, const LoraModel& lora, const std::string& base_model,
                            const Optimizer& optim, const TrainerState& st);

// The fingerprint recorded in a checkpoint directory, or nullopt when it cannot be read.
std::optional<uint64_t> checkpoint_fingerprint(const fs::path& dir) {
  try {
    const SafeTensorsFile f((dir / kStateFile).string());
    return parse_hex64(f, "trainer.fingerprint");
  } catch (const Error&) {
    return std::nullopt;
  }
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

bool is_checkpoint_file(const std::string& name) {
  return name == kPeftConfigFile || name == kPeftWeightsFile || name == kStateFile;
}

bool remove_checkpoint_files(const std::string& dir) {
  std::error_code ec;
  for (std::string_view f : {kPeftConfigFile, kPeftWeightsFile, std::string_view(kStateFile)}) {
    const fs::path p = fs::path(dir) / f;
    fs::remove(p, ec);
    if (ec) fail(p.string(), "cannot remove: " + ec.message());
  }
  if (!fs::is_empty(dir, ec)) return false;
  fs::remove(dir, ec);
  return !ec;
}

void save_checkpoint(const std::string& out_dir, const LoraModel& lora, const std::string& base_model,
                     const Optimizer& optim, const TrainerState& st, int64_t keep_last) {
  const fs::path final_dir = fs::path(out_dir) / (std::string(kPrefix) + std::to_string(st.step));
  const fs::path tmp_dir = fs::path(out_dir) / (final_dir.filename().string() + ".tmp-" + std::to_string(getpid()));
  std::error_code ec;
  // (Leftovers of writes killed midway are removed at the start of a run: output_dir.h.)
  fs::create_directories(tmp_dir, ec);
  if (ec) fail(tmp_dir.string(), "cannot create the checkpoint directory: " + ec.message());
  try {
    write_checkpoint_files(tmp_dir, lora, base_model, optim, st);
  } catch (const Error& e) {
    // Disk full or another write error: leave no half checkpoint behind; the previous
    // complete checkpoints stay as they are.
    fs::remove_all(tmp_dir, ec);
    fail(final_dir.string(), std::string("cannot write the checkpoint (") + e.what() +
                                 "); earlier checkpoints in " + out_dir + " are kept");
  } catch (...) {
    fs::remove_all(tmp_dir, ec);
    throw;
  }

  // A re-run of the same step (after --resume from an earlier one): the old checkpoint's files
  // go; a directory that also holds files of the user's keeps them and takes the new files.
  if (fs::exists(final_dir, ec) && !remove_checkpoint_files(final_dir.string())) {
    move_checkpoint_files(tmp_dir, final_dir);
  } else {
    fs::rename(tmp_dir, final_dir, ec);
    if (ec) {
      const std::string why = ec.message();
      fs::remove_all(tmp_dir, ec);
      fail(final_dir.string(), "cannot move the finished checkpoint into place: " + why);
    }
  }

  if (keep_last > 0) {
    // Only this run's checkpoints count and are ever removed: a directory from another run
    // (or one whose state cannot be read) is never touched.
    std::vector<fs::path> mine;
    for (const auto& [step, path] : list_checkpoints(out_dir))
      if (checkpoint_fingerprint(path) == st.fingerprint) mine.push_back(path);
    // (best effort, as before: an old checkpoint that cannot be removed does not stop the run)
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < mine.size(); ++i) {
      try {
        remove_checkpoint_files(mine[i].string());
      } catch (const Error&) {
      }
    }
  }
}

namespace {

void write_checkpoint_files(const fs::path& tmp_dir, const LoraModel& lora, const std::string& base_model,
                            const Optimizer& optim, const TrainerState& st) {
  save_peft_adapter(tmp_dir.string(), lora.config(), base_model, lora.layers());
  SafeTensorsWriter w;
  optim.save_state(w, "optimizer.");
  w.add("trainer.order", DType::I64, {static_cast<int64_t>(st.order.size())},
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(st.order.data()), st.order.size() * sizeof(int64_t)));
  w.set_metadata("trainer.step", std::to_string(st.step));
  w.set_metadata("trainer.consumed", std::to_string(st.consumed));
  w.set_metadata("trainer.next", std::to_string(st.next));
  w.set_metadata("trainer.fingerprint", hex64(st.fingerprint));
  for (int i = 0; i < 4; ++i) {
    w.set_metadata("trainer.data_rng." + std::to_string(i), hex64(st.data_rng[static_cast<size_t>(i)]));
    w.set_metadata("trainer.dropout_rng." + std::to_string(i), hex64(st.dropout_rng[static_cast<size_t>(i)]));
  }
  w.write((tmp_dir / kStateFile).string());
}

}  // namespace

std::optional<std::string> latest_checkpoint(const std::string& out_dir, std::vector<std::string>* incomplete) {
  auto all = list_checkpoints(out_dir);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (fs::exists(it->second / kStateFile)) return it->second.string();
    if (incomplete) incomplete->push_back(it->second.string());
  }
  return std::nullopt;
}

TrainerState load_checkpoint(const std::string& dir, LoraModel& lora, Optimizer& optim, uint64_t expected) {
  const std::string spath = (fs::path(dir) / kStateFile).string();
  if (!fs::exists(spath)) fail(spath, "missing: not a complete training checkpoint");
  const SafeTensorsFile f(spath);
  TrainerState st;
  st.fingerprint = parse_hex64(f, "trainer.fingerprint");
  if (st.fingerprint != expected)
    fail(dir, "this checkpoint was written by a run with other settings or data (model, LoRA, batch, "
              "sequence length, dataset, seed...); resume with the same command line, or use a new --out");
  st.step = parse_int(f, "trainer.step");
  st.consumed = parse_int(f, "trainer.consumed");
  st.next = parse_int(f, "trainer.next");
  for (int i = 0; i < 4; ++i) {
    st.data_rng[static_cast<size_t>(i)] = parse_hex64(f, "trainer.data_rng." + std::to_string(i));
    st.dropout_rng[static_cast<size_t>(i)] = parse_hex64(f, "trainer.dropout_rng." + std::to_string(i));
  }
  const SafeTensorInfo& t = f.at("trainer.order");
  check(t.dtype == DType::I64 && t.shape.size() == 1, spath, "'trainer.order' must be a 1-D I64 tensor");
  st.order.resize(static_cast<size_t>(t.numel()));
  if (!st.order.empty()) std::memcpy(st.order.data(), f.data(t).data(), st.order.size() * sizeof(int64_t));
  check(st.next >= 0 && st.next <= static_cast<int64_t>(st.order.size()), spath, "data position out of range");

  const PeftAdapter a = load_peft_adapter(dir);
  a.apply_to(lora.layers());
  optim.load_state(f, "optimizer.");
  check(optim.steps_taken() <= st.step, spath, "optimizer state is ahead of the trainer step");
  return st;
}

}  // namespace qlora
