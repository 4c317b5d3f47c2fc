#pragma once
// A terminal progress bar with rate and ETA for long-running commands. On a terminal it
// redraws one line (at most ~10 times a second); when stderr is not a terminal (CI, logs)
// it prints a plain line every few seconds instead, so logs stay readable.
#include <chrono>
#include <cstdint>
#include <string>

namespace qlora {

class ProgressBar {
 public:
  // `unit` names what is counted ("tensors", "tok", "steps").
  ProgressBar(int64_t total, std::string label, std::string unit);
  // Sets the count done so far; `extra` is appended (e.g. "loss 2.31 lr 2e-4"). The first
  // call always draws; later ones at most ~10/s on a terminal, every 5 s in a log.
  void update(int64_t done, const std::string& extra = "");
  // Draws the final state and ends the line.
  void finish(const std::string& extra = "");

 private:
  void draw(bool final_line);
  int64_t total_, done_ = 0, drawn_done_ = -1;
  std::string label_, unit_, extra_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool tty_;
  bool finished_ = false;
};

// "1.2 GB", "512 MB", ... (decimal units).
std::string human_bytes(double bytes);
// "1:05:03", "4:07"
std::string human_duration(double seconds);

}  // namespace qlora
