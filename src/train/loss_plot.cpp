#include "train/loss_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/atomic_file.h"

namespace qlora {

namespace {

constexpr double kW = 720, kH = 420, kLeft = 64, kRight = 20, kTop = 40, kBottom = 48;

std::string num(double v, const char* f = "%.1f") {
  char b[48];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `n` ticks over `span`.
double tick_step(double span, int n) {
  if (!(span > 0)) return 1;
  const double raw = span / n, p = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / p;
  return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * p;
}

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '&') o += "&amp;";
    else if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else o += c;
  }
  return o;
}

}  // namespace

std::string loss_plot_svg(const std::vector<LossPoint>& train, const std::vector<LossPoint>& eval,
                          const std::string& title) {
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto* s : {&train, &eval})
    for (const LossPoint& p : *s) {
      if (!std::isfinite(p.loss)) continue;
      x0 = std::min(x0, p.step), x1 = std::max(x1, p.step);
      y0 = std::min(y0, p.loss), y1 = std::max(y1, p.loss);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 - x0 < 1) x1 = x0 + 1;
  if (y1 - y0 < 1e-6) y0 -= 0.5, y1 += 0.5;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  auto X = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return kTop + (1 - (y - y0) / (y1 - y0)) * ph; };

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kW << "\" height=\"" << kH
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << kW / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << escape(title)
    << "</text>\n";
  // grid, ticks, labels
  const double ys = tick_step(y1 - y0, 6), xs = tick_step(x1 - x0, 8);
  for (double y = std::ceil(y0 / ys) * ys; y <= y1; y += ys)
    o << "<line x1=\"" << kLeft << "\" x2=\"" << kLeft + pw << "\" y1=\"" << num(Y(y)) << "\" y2=\"" << num(Y(y))
      << "\" stroke=\"#e4e4e4\"/><text x=\"" << kLeft - 6 << "\" y=\"" << num(Y(y) + 4)
      << "\" text-anchor=\"end\">" << num(y, ys < 0.1 ? "%.3f" : ys < 1 ? "%.2f" : "%.1f") << "</text>\n";
  for (double x = std::ceil(x0 / xs) * xs; x <= x1; x += xs)
    o << "<line x1=\"" << num(X(x)) << "\" x2=\"" << num(X(x)) << "\" y1=\"" << kTop << "\" y2=\"" << kTop + ph
      << "\" stroke=\"#f0f0f0\"/><text x=\"" << num(X(x)) << "\" y=\"" << kTop + ph + 16
      << "\" text-anchor=\"middle\">" << num(x, "%.0f") << "</text>\n";
  o << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"#444\"/>\n"
    << "<text x=\"" << kLeft + pw / 2 << "\" y=\"" << kH - 10 << "\" text-anchor=\"middle\">step</text>\n"
    << "<text x=\"16\" y=\"" << kTop + ph / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 16 "
    << kTop + ph / 2 << ")\">loss</text>\n";
  auto polyline = [&](const std::vector<LossPoint>& s, const char* color, double width, double opacity) {
    if (s.empty()) return;
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"" << width << "\" stroke-opacity=\""
      << opacity << "\" points=\"";
    for (const LossPoint& p : s)
      if (std::isfinite(p.loss)) o << num(X(p.step)) << "," << num(Y(p.loss)) << " ";
    o << "\"/>\n";
  };
  polyline(train, "#1f77b4", 1, 0.35);
  // moving average over ~5% of the steps, so the trend shows through the noise
  if (train.size() >= 8) {
    const size_t k = std::max<size_t>(2, train.size() / 20);
    std::vector<LossPoint> ma;
    double sum = 0;
    for (size_t i = 0; i < train.size(); ++i) {
      sum += train[i].loss;
      if (i >= k) sum -= train[i - k].loss;
      if (i + 1 >= k) ma.push_back({train[i].step, sum / static_cast<double>(k)});
    }
    polyline(ma, "#1f77b4", 2, 1);
  }
  polyline(eval, "#d62728", 2, 1);
  for (const LossPoint& p : eval)
    if (std::isfinite(p.loss))
      o << "<circle cx=\"" << num(X(p.step)) << "\" cy=\"" << num(Y(p.loss)) << "\" r=\"3.5\" fill=\"#d62728\"/>\n";
  // legend
  const double lx = kLeft + pw - 150, ly = kTop + 14;
  o << "<line x1=\"" << lx << "\" x2=\"" << lx + 24 << "\" y1=\"" << ly << "\" y2=\"" << ly
    << "\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"" << lx + 30 << "\" y=\"" << ly + 4
    << "\">train loss</text>\n";
  if (!eval.empty())
    o << "<line x1=\"" << lx << "\" x2=\"" << lx + 24 << "\" y1=\"" << ly + 18 << "\" y2=\"" << ly + 18
      << "\" stroke=\"#d62728\" stroke-width=\"2\"/><text x=\"" << lx + 30 << "\" y=\"" << ly + 22
      << "\">eval loss</text>\n";
  o << "</svg>\n";
  return o.str();
}

void write_loss_plot(const std::string& metrics_jsonl, const std::string& svg_path, const std::string& title) {
  std::ifstream f(metrics_jsonl);
  std::vector<LossPoint> train, eval;
  std::string line;
  while (std::getline(f, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number()) continue;
    const double step = j["step"].get<double>();
    if (j.contains("eval_loss") && j["eval_loss"].is_number()) eval.push_back({step, j["eval_loss"].get<double>()});
    else if (j.contains("loss") && j["loss"].is_number()) train.push_back({step, j["loss"].get<double>()});
  }
  write_file_atomic(svg_path, loss_plot_svg(train, eval, title));
}

}  // namespace qlora
