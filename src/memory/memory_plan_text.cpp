// What the planner says and how it is asked (memory/memory_plan.h): sizes parsed from the
// command line, the plan as text or JSON, and the refusal when a run would not fit; split from
// the planner itself.
#include <cstdio>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "memory/memory_plan.h"

namespace qlora {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

uint64_t parse_memory_size(std::string_view s, std::string_view where) {
  std::string t(s);
  for (char& c : t) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (t == "T4") return 15360ull << 20;
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(t, &pos);
  } catch (const std::exception&) {
    fail(where, excerpt(s) + " is not a size (e.g. 16GB, 15GiB, 800MB)");
  }
  std::string unit = t.substr(pos);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  double mul = 0;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "KB") mul = 1e3;
  else if (unit == "MB") mul = 1e6;
  else if (unit == "GB") mul = 1e9;
  else if (unit == "TB") mul = 1e12;
  else if (unit == "K" || unit == "KIB") mul = 1024.0;
  else if (unit == "M" || unit == "MIB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GIB") mul = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TIB") mul = 1024.0 * 1024 * 1024 * 1024;
  if (mul == 0 || !(v > 0) || !std::isfinite(v))
    fail(where, excerpt(s) + " is not a positive size (e.g. 16GB, 15GiB, 800MB)");
  return static_cast<uint64_t>(v * mul);
}

std::string format_gb(uint64_t b) {
  return fmt("%.2f GB", static_cast<double>(b) / 1e9) + fmt(" (%.2f GiB)", static_cast<double>(b) / 1073741824.0);
}

std::string MemoryPlan::to_text(uint64_t limit, std::string_view limit_name) const {
  std::string out = title + "\n";
  size_t w = 10;
  for (const MemoryItem& it : items) w = std::max(w, it.name.size());
  auto line = [&](const std::string& name, uint64_t b, const std::string& note) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%12.1f MiB", static_cast<double>(b) / 1048576.0);
    std::string l = "  " + name + std::string(w - name.size() + 2, ' ') + buf;
    if (!note.empty()) l += "   " + note;
    return l + "\n";
  };
  for (const MemoryItem& it : items)
    out += line(it.name, it.bytes, it.evictable ? "[paged, evictable: not in the peak] " + it.note : it.note);
  if (load_peak_bytes && run_peak_bytes)
    out += "  phases: load " + format_gb(load_peak_bytes) + ", run " + format_gb(run_peak_bytes) + "\n";
  if (evictable_bytes)
    out += "  resident if the paged state is never evicted: " + format_gb(resident_if_not_evicted()) + "\n";
  if (limit) {
    const uint64_t cap = limit * static_cast<uint64_t>(gpus);
    const std::string lim = (gpus > 1 ? std::to_string(gpus) + " x " : "") + format_gb(limit) +
                            (limit_name.empty() ? "" : " (" + std::string(limit_name) + ")");
    if (required_bytes <= cap)
      out += "verdict: fits in " + lim + " with " + format_gb(cap - required_bytes) + " to spare\n";
    else
      out += "verdict: does NOT fit in " + lim + ": " + format_gb(required_bytes - cap) + " short\n";
  }
  out += "total peak: " + format_gb(peak_bytes);
  if (required_bytes < peak_bytes)
    out += " RSS high-water; " + format_gb(required_bytes) +
           " must stay resident (the rest is clean mapped-file pages the kernel can drop)";
  out += "\n";
  return out;
}

nlohmann::json MemoryPlan::to_json(uint64_t limit) const {
  nlohmann::json j;
  j["title"] = title;
  nlohmann::json items_j = nlohmann::json::array();
  for (const MemoryItem& it : items)
    items_j.push_back({{"name", it.name}, {"bytes", it.bytes}, {"note", it.note}, {"evictable", it.evictable}});
  j["items"] = items_j;
  j["peak_bytes"] = peak_bytes;
  j["peak_gb"] = static_cast<double>(peak_bytes) / 1e9;
  j["evictable_bytes"] = evictable_bytes;
  j["load_peak_bytes"] = load_peak_bytes;
  j["run_peak_bytes"] = run_peak_bytes;
  j["required_bytes"] = required_bytes;
  j["resident_if_not_evicted_bytes"] = resident_if_not_evicted();
  j["activations_checkpointed_bytes"] = activations_checkpointed;
  j["activations_full_bytes"] = activations_full;
  if (limit) {
    const uint64_t cap = limit * static_cast<uint64_t>(gpus);
    j["limit_bytes"] = cap;
    j["fits"] = required_bytes <= cap;
    j["margin_bytes"] = static_cast<int64_t>(cap) - static_cast<int64_t>(required_bytes);
  }
  return j;
}

void check_fits(const MemoryPlan& plan, uint64_t limit, std::string_view what) {
  if (limit == 0 || plan.required_bytes <= limit) return;
  fail(what, "needs " + format_gb(plan.required_bytes) + " resident at its peak, more than --max-memory " +
                 format_gb(limit) + " (refusing to start; the planner's breakdown follows)\n" +
                 plan.to_text(limit, "--max-memory"));
}

}  // namespace qlora
