#include "base/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace qlora {

ProgressBar::ProgressBar(int64_t total, std::string label, std::string unit)
    : total_(total), label_(std::move(label)), unit_(std::move(unit)),
      start_(std::chrono::steady_clock::now()), last_draw_(start_), tty_(::isatty(STDERR_FILENO) != 0) {}

void ProgressBar::update(int64_t done, const std::string& extra) {
  done_ = done;
  extra_ = extra;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_draw_).count();
  // The first update always draws, so a slow first step shows the bar at once.
  if (drawn_done_ < 0 || since >= (tty_ ? 0.1 : 5.0) || done_ == total_) {
    last_draw_ = now;
    draw(false);
  }
}

void ProgressBar::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  if (!extra.empty()) extra_ = extra;
  // In a log (not a terminal) the last update already printed this exact line.
  if (!tty_ && drawn_done_ == done_ && extra.empty()) return;
  draw(true);
}

void ProgressBar::draw(bool final_line) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  std::string eta = rate > 0 && total_ > done_ ? human_duration(static_cast<double>(total_ - done_) / rate) : "0:00";
  constexpr int kWidth = 24;
  int filled = static_cast<int>(std::lround(frac * kWidth));
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  char rate_s[32];
  std::snprintf(rate_s, sizeof rate_s, rate >= 100 ? "%.0f" : "%.2f", rate);
  std::fprintf(stderr, "%s%s [%s] %lld/%lld %s (%3.0f%%) %s %s/s elapsed %s eta %s%s%s", tty_ ? "\r\033[K" : "",
               label_.c_str(), bar.c_str(), static_cast<long long>(done_), static_cast<long long>(total_),
               unit_.c_str(), frac * 100, rate_s, unit_.c_str(), human_duration(elapsed).c_str(), eta.c_str(),
               extra_.empty() ? "" : "  ", extra_.c_str());
  if (!tty_ || final_line) std::fputc('\n', stderr);
  std::fflush(stderr);
  drawn_done_ = done_;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (std::fabs(b) >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  char s[32];
  std::snprintf(s, sizeof s, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return s;
}

std::string human_duration(double seconds) {
  long long s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

}  // namespace qlora
