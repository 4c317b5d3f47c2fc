#include "train/output_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "base/error.h"
#include "train/checkpoint.h"

namespace qlora {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLockFile = ".qlora-train.lock";
// Files a finished (or running) training run writes at the top of its output directory.
constexpr const char* kRunFiles[] = {"adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "loss.svg"};

bool is_checkpoint_name(const std::string& n) {
  constexpr std::string_view p = "checkpoint-";
  if (n.rfind(p, 0) != 0 || n.size() == p.size()) return false;
  return n.find_first_not_of("0123456789", p.size()) == std::string::npos;
}

// "<name>.tmp-<digits>": what AtomicFileWriter and save_checkpoint write before renaming.
bool is_temporary_name(const std::string& n) {
  const auto pos = n.rfind(".tmp-");
  if (pos == std::string::npos || pos == 0 || pos + 5 == n.size()) return false;
  return n.find_first_not_of("0123456789", pos + 5) == std::string::npos;
}

std::string read_small_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string s(512, '\0');
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  s.resize(static_cast<size_t>(f.gcount()));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

std::string own_command_line() {
  std::string s = read_small_file("/proc/self/cmdline");
  std::replace(s.begin(), s.end(), '\0', ' ');
  if (s.size() > 200) s = s.substr(0, 200) + "...";
  return s;
}

// Up to `max` entries of checkpoint directory `ck` that a run does not write there (anything but
// its checkpoint files as regular files: train/checkpoint.h), "checkpoint-N/name" each.
std::vector<std::string> foreign_checkpoint_entries(const fs::path& ck, size_t max) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(ck, ec)) {
    const std::string n = e.path().filename().string();
    const bool ours = is_checkpoint_file(n) && e.is_regular_file(ec);
    if (!ours && out.size() < max) out.push_back(ck.filename().string() + "/" + n + (e.is_directory(ec) ? "/" : ""));
  }
  return out;
}

}  // namespace

// Locks this process holds, by canonical directory: a second lock of the same directory in
// the same process (the CLI takes it before loading the model, the trainer again) shares
// the first. flock itself would refuse it: its locks belong to open file descriptions.
struct HeldLock {
  int fd;
  int count;
  pid_t pid;  // a forked child inherits the map but not the right to share the lock
};
std::mutex& held_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, HeldLock>& held_locks() {
  static std::map<std::string, HeldLock> m;
  return m;
}

OutputDirLock::OutputDirLock(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, "cannot create the output directory: " + ec.message());
  if (!fs::is_directory(dir, ec)) fail(dir, "the output path exists and is not a directory");
  key_ = fs::weakly_canonical(dir, ec).string();
  if (ec) key_ = dir;
  std::lock_guard<std::mutex> guard(held_mutex());
  if (auto it = held_locks().find(key_); it != held_locks().end()) {
    if (it->second.pid == ::getpid()) {
      ++it->second.count;
      return;
    }
    held_locks().erase(it);  // inherited through fork(): the parent's, not ours
  }
  const std::string path = (fs::path(dir) / kLockFile).string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path, std::string("cannot create the output directory's lock file: ") + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK) fail(path, std::string("cannot lock the output directory: ") + std::strerror(err));
    const std::string holder = read_small_file(path);
    fail(dir, "the output directory is in use by another training run (" +
                  (holder.empty() ? std::string("holder unknown") : holder) +
                  "); wait for it to finish or stop it, or choose another --out");
  }
  // Say who holds it, for the message a second run prints.
  char when[64] = "";
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  const std::string who = "pid " + std::to_string(::getpid()) + ", started " + when + ": " + own_command_line() + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, who.data(), who.size(), 0) != static_cast<ssize_t>(who.size())) {
    // The lock itself is held; only the description for others is missing.
  }
  held_locks()[key_] = HeldLock{fd_, 1, ::getpid()};
}

OutputDirLock::~OutputDirLock() {
  std::lock_guard<std::mutex> guard(held_mutex());
  auto it = held_locks().find(key_);
  if (it == held_locks().end() || it->second.pid != ::getpid()) return;
  if (--it->second.count == 0) {
    ::close(it->second.fd);  // closing the descriptor releases the flock
    held_locks().erase(it);
  }
}

std::string PreviousRunOutput::summary(size_t max_items) const {
  std::vector<std::string> all = files;
  all.insert(all.end(), checkpoints.begin(), checkpoints.end());
  std::string s;
  for (size_t i = 0; i < all.size() && i < max_items; ++i) s += (i ? ", " : "") + all[i];
  if (all.size() > max_items) s += ", ... (" + std::to_string(all.size()) + " items)";
  return s;
}

PreviousRunOutput scan_previous_run(const std::string& dir) {
  PreviousRunOutput out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const char* f : kRunFiles)
    if (fs::exists(fs::path(dir) / f, ec)) out.files.emplace_back(f);
  std::vector<std::pair<long long, std::string>> ck;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory(ec) && is_checkpoint_name(n)) ck.emplace_back(std::stoll(n.substr(11)), n);
  }
  std::sort(ck.begin(), ck.end());
  for (auto& [step, n] : ck) out.checkpoints.push_back(std::move(n));
  return out;
}

size_t remove_stale_temporaries(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (is_temporary_name(e.path().filename().string())) stale.push_back(e.path());
  for (const fs::path& p : stale)
    if (fs::remove_all(p, ec) > 0 && !ec) ++n;
  return n;
}

PreviousRunOutput check_output_dir(const std::string& dir, bool resume, bool overwrite) {
  if (resume && overwrite)
    fail("--resume", "contradicts --overwrite-output-dir: give one (continue the run in " + dir +
                         ", or replace it)");
  const PreviousRunOutput prev = scan_previous_run(dir);
  if (prev.empty()) return prev;
  // --overwrite-output-dir replaces the earlier run whole: a checkpoint directory holding
  // anything a run does not write there is refused now, before anything is touched. (A resumed
  // run removes or replaces only a checkpoint's own files: train/checkpoint.h.)
  for (const std::string& c : prev.checkpoints) {
    if (resume || !overwrite) break;
    const std::vector<std::string> foreign = foreign_checkpoint_entries(fs::path(dir) / c, 3);
    if (foreign.empty()) continue;
    std::string list;
    for (const std::string& f : foreign) list += (list.empty() ? "" : ", ") + f;
    fail((fs::path(dir) / c).string(), "holds files a training run does not write (" + list +
                                           "); --overwrite-output-dir would remove this checkpoint: move them out "
                                           "of it, or choose another --out");
  }
  if (resume) {
    if (!prev.checkpoints.empty()) return prev;
    fail(dir, "--resume: there is no checkpoint-N/ to resume from, and the directory holds an earlier run's " +
                  prev.summary() +
                  " (a finished run, or one trained without --save-every); starting again would replace it: "
                  "use --overwrite-output-dir for that, or a new --out");
  }
  if (!overwrite)
    fail(dir, "already holds the output of an earlier run (" + prev.summary() +
                  "); pass --resume to continue it (same settings), --overwrite-output-dir to replace it, or "
                  "choose a new --out");
  return prev;
}

void prepare_output_dir(const std::string& dir, bool resume, bool overwrite, bool log) {
  const PreviousRunOutput prev = check_output_dir(dir, resume, overwrite);
  if (const size_t stale = remove_stale_temporaries(dir); stale > 0 && log)
    std::fprintf(stderr, "removed %zu temporary file(s) left in %s by an interrupted run\n", stale, dir.c_str());
  if (prev.empty()) {
    if (resume && log) std::fprintf(stderr, "--resume: no checkpoint in %s yet, starting from step 0\n", dir.c_str());
    return;
  }
  if (resume) return;
  std::error_code ec;
  for (const std::string& f : prev.files) {
    fs::remove(fs::path(dir) / f, ec);
    if (ec) fail((fs::path(dir) / f).string(), "cannot remove (--overwrite-output-dir): " + ec.message());
  }
  for (const std::string& c : prev.checkpoints)  // (their files only: check_output_dir saw nothing else)
    if (!remove_checkpoint_files((fs::path(dir) / c).string()))
      fail((fs::path(dir) / c).string(), "cannot remove (--overwrite-output-dir): it is not empty");
  if (log)
    std::fprintf(stderr, "--overwrite-output-dir: removed the earlier run's %s from %s\n", prev.summary(100).c_str(),
                 dir.c_str());
}

}  // namespace qlora
