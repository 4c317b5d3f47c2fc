#pragma once
// The loss curve as an SVG picture, for people who would rather look than read
// metrics.jsonl: training loss per step (a thin line, plus its moving average) and eval
// loss (dots joined by a line), step on x, loss on y, with axes, ticks and a legend.
// Plain SVG 1.1 that browsers and image viewers open; no dependencies.
#include <string>
#include <vector>

namespace qlora {

struct LossPoint {
  double step = 0;
  double loss = 0;
};

// The SVG document for the given series (either may be empty).
std::string loss_plot_svg(const std::vector<LossPoint>& train, const std::vector<LossPoint>& eval,
                          const std::string& title);

// Reads metrics.jsonl (lines with "loss" are training steps, lines with "eval_loss" evals;
// other or unreadable lines are ignored) and writes the plot to svg_path atomically.
void write_loss_plot(const std::string& metrics_jsonl, const std::string& svg_path, const std::string& title);

}  // namespace qlora
