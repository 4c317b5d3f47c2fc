#pragma once
// One training run owns its output directory (--out) for as long as it runs, so that
// nothing a user had there is lost or mixed with another run:
//   * a lock (flock on "<out>/.qlora-train.lock", released by the kernel when the process
//     ends, even by SIGKILL, so it never stays stuck) makes a second run into the same
//     directory fail at once, naming the directory and the run that holds it;
//   * a directory holding an earlier run's output (checkpoint-N/, adapter, metrics.jsonl)
//     is refused unless the run resumes it (--resume, same settings: checked against the
//     checkpoint's fingerprint) or was told to replace it (--overwrite-output-dir, the
//     name Hugging Face's TrainingArguments use), in which case exactly those outputs
//     are removed and listed;
//   * temporary files and directories that killed runs left behind are removed.
#include <string>
#include <vector>

namespace qlora {

class OutputDirLock {
 public:
  // Creates `dir` if needed and takes its lock (shared with any lock of the same directory
  // this process already holds). Throws Error naming the directory and the
  // holder (pid, start time, command) when another process holds it, or the cause when
  // the directory or the lock file cannot be created.
  explicit OutputDirLock(const std::string& dir);
  ~OutputDirLock();  // releases the lock (the lock file stays; it is harmless)
  OutputDirLock(const OutputDirLock&) = delete;
  OutputDirLock& operator=(const OutputDirLock&) = delete;

 private:
  int fd_ = -1;
  std::string key_;  // canonical path: the process-wide registry's key
};

// What an earlier run left in an output directory.
struct PreviousRunOutput {
  std::vector<std::string> checkpoints;  // "checkpoint-N" directory names, complete or not
  std::vector<std::string> files;        // adapter_model.safetensors, adapter_config.json, metrics.jsonl, loss.svg
  bool empty() const { return checkpoints.empty() && files.empty(); }
  std::string summary(size_t max_items = 6) const;  // "adapter_model.safetensors, checkpoint-20, ... (7 items)"
};

PreviousRunOutput scan_previous_run(const std::string& dir);

// Removes the leftovers of killed runs: "checkpoint-N.tmp-PID/" directories and the
// "*.tmp-PID" files of atomic writes. Call only while holding the lock. Returns how many.
size_t remove_stale_temporaries(const std::string& dir);

// Decides what a new run may do with `dir` (locked by the caller), changing nothing:
//   resume && overwrite             -> Error (they contradict each other)
//   nothing there                   -> fine (resume: starts from step 0, says so)
//   resume, a checkpoint there      -> fine (the trainer checks it is this run's)
//   resume, output but no checkpoint-> Error: nothing to resume, and overwriting would
//                                      lose a finished adapter
//   output there, no resume         -> Error naming what is there and both ways on,
//                                      unless overwrite (the outputs are returned)
//   overwrite, a checkpoint-N/ holding anything a run does not write there
//                                   -> Error naming it (nothing of the user's is removed)
// Callers check early (before loading a model) so that a refusal costs nothing.
PreviousRunOutput check_output_dir(const std::string& dir, bool resume, bool overwrite);

// check_output_dir(), then makes the directory ready: removes stale temporaries and, with
// overwrite, the earlier run's outputs. With `log`, what was removed is printed on stderr.
void prepare_output_dir(const std::string& dir, bool resume, bool overwrite, bool log);

}  // namespace qlora
