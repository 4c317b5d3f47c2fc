#pragma once
// Training checkpoints: everything a run needs to continue bit for bit after it was
// stopped (killed, even), in out_dir/checkpoint-<step>/:
//   adapter_config.json, adapter_model.safetensors   the LoRA weights (PEFT's layout, so a
//                                                    checkpoint is also a usable adapter)
//   trainer_state.safetensors                        optimizer state, the data order and
//                                                    position, both RNG states, the step,
//                                                    and a fingerprint of the settings+data
// A checkpoint is written into "checkpoint-<step>.tmp-<pid>" and renamed when complete, so
// a directory named checkpoint-<N> is always whole; a write that fails (disk full) removes
// its temporary directory, and leftovers of a killed write are ignored (and removed when
// the next run takes the directory: train/output_dir.h).
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qlora {

class LoraModel;
class Optimizer;

struct TrainerState {
  int64_t step = 0;                      // optimizer steps done
  int64_t consumed = 0;                  // sequences consumed since the start of the run
  std::array<uint64_t, 4> data_rng{};    // shuffling generator
  std::array<uint64_t, 4> dropout_rng{};
  std::vector<int64_t> order;            // the current epoch's permutation
  int64_t next = 0;                      // position in `order`
  uint64_t fingerprint = 0;              // of the settings and data that must not change
};

// Whether `name` is one of the files a checkpoint directory holds (the three above).
bool is_checkpoint_file(const std::string& name);

// Removes checkpoint directory `dir`'s own files (the three above), then the directory if
// nothing else is left in it; returns whether it is gone. Anything else there (a user's notes)
// is never removed: the directory stays with it. Throws Error naming the file it cannot remove.
bool remove_checkpoint_files(const std::string& dir);

// Writes checkpoint-<state.step> under out_dir; then removes all but the newest
// `keep_last` checkpoints of this run (those whose fingerprint is state.fingerprint; other
// checkpoint directories are never touched; keep_last <= 0 keeps all). Throws Error naming
// the path; the previous checkpoints are intact then.
void save_checkpoint(const std::string& out_dir, const LoraModel& lora, const std::string& base_model,
                     const Optimizer& optim, const TrainerState& state, int64_t keep_last);

// The newest complete checkpoint directory in out_dir, if any. `incomplete` (when given) gets
// the newer checkpoint directories passed over for lacking their trainer state (a run killed
// while the directory was being filled by hand, or a copy that missed a file), newest first.
std::optional<std::string> latest_checkpoint(const std::string& out_dir, std::vector<std::string>* incomplete = nullptr);

// Loads LoRA weights and optimizer state from `dir` into `lora`/`optim` and returns the
// trainer state. Throws Error naming the file when anything is missing or inconsistent,
// or when the fingerprint differs from `expected_fingerprint` (another run's checkpoint).
TrainerState load_checkpoint(const std::string& dir, LoraModel& lora, Optimizer& optim,
                             uint64_t expected_fingerprint);

// FNV-1a 64 over bytes, chainable: the fingerprint of settings and data.
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);

}  // namespace qlora
