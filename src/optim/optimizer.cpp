#include "optim/optimizer.h"

#include <optional>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "formats/safetensors.h"
#include "optim/adamw8bit.h"
#include "optim/paged_adamw32.h"

namespace qlora {

namespace {

// A checkpoint's optimizer state fits this run when it has the same layout: paged and
// in-memory variants of one optimizer store identical tensors (and compute identically),
// so a run may resume with or without paging. A file without "<prefix>kind" was written
// before kinds were recorded, by AdamW32.
void check_kind(const SafeTensorsFile& f, std::string_view prefix, OptimKind want) {
  const std::string key = std::string(prefix) + "kind";
  auto it = f.metadata().find(key);
  const std::string have = it == f.metadata().end() ? optim_kind_name(OptimKind::AdamW32) : it->second;
  bool same_layout = false;
  for (OptimKind k : {OptimKind::AdamW32, OptimKind::AdamW8bit, OptimKind::PagedAdamW32, OptimKind::PagedAdamW8bit})
    if (have == optim_kind_name(k)) same_layout = optim_is_8bit(k) == optim_is_8bit(want);
  check(same_layout, f.path(),
        "holds the state of optimizer '" + have + "', but this run uses '" + optim_kind_name(want) +
            "' (pass the same --optim as the run that wrote it)");
}

// AdamW (32-bit state in memory) behind the Optimizer interface.
class AdamW32Optimizer final : public Optimizer {
 public:
  AdamW32Optimizer(std::vector<AdamWParam> params, const AdamWConfig& cfg) : impl_(std::move(params), cfg) {}
  void step(double lr) override { impl_.step(lr); }
  int64_t steps_taken() const override { return impl_.steps_taken(); }
  void save_state(SafeTensorsWriter& w, std::string_view prefix) const override {
    impl_.save_state(w, prefix);
    w.set_metadata(std::string(prefix) + "kind", optim_kind_name(OptimKind::AdamW32));
  }
  void load_state(const SafeTensorsFile& f, std::string_view prefix) override {
    check_kind(f, prefix, OptimKind::AdamW32);
    impl_.load_state(f, prefix);
  }
  size_t state_bytes() const override {
    size_t n = 0;
    for (size_t i = 0; i < impl_.num_params(); ++i) n += 2 * impl_.param(i).value.size() * sizeof(float);
    return n;
  }

 private:
  AdamW impl_;
};

// Paged AdamW (32-bit state in a file-backed mapping), torch's arithmetic.
class PagedAdamW32Optimizer final : public Optimizer {
 public:
  PagedAdamW32Optimizer(std::vector<AdamWParam> params, const AdamWConfig& cfg, const std::string& dir)
      : impl_(std::move(params), cfg, dir) {}
  void step(double lr) override { impl_.step(lr); }
  int64_t steps_taken() const override { return impl_.steps_taken(); }
  void save_state(SafeTensorsWriter& w, std::string_view prefix) const override {
    impl_.save_state(w, prefix);
    w.set_metadata(std::string(prefix) + "kind", optim_kind_name(OptimKind::PagedAdamW32));
  }
  void load_state(const SafeTensorsFile& f, std::string_view prefix) override {
    check_kind(f, prefix, OptimKind::PagedAdamW32);
    impl_.load_state(f, prefix);
  }
  size_t state_bytes() const override { return impl_.state_bytes(); }

 private:
  PagedAdamW32 impl_;
};

// bitsandbytes' 8-bit AdamW, state in memory or (paged) in a file-backed mapping.
class AdamW8bitOptimizer final : public Optimizer {
 public:
  AdamW8bitOptimizer(OptimKind kind, std::vector<AdamWParam> params, const AdamWConfig& cfg,
                     std::optional<std::string> dir)
      : kind_(kind), impl_(std::move(params), cfg, std::move(dir)) {}
  void step(double lr) override { impl_.step(lr); }
  int64_t steps_taken() const override { return impl_.steps_taken(); }
  void save_state(SafeTensorsWriter& w, std::string_view prefix) const override {
    impl_.save_state(w, prefix);
    w.set_metadata(std::string(prefix) + "kind", optim_kind_name(kind_));
  }
  void load_state(const SafeTensorsFile& f, std::string_view prefix) override {
    check_kind(f, prefix, kind_);
    impl_.load_state(f, prefix);
  }
  size_t state_bytes() const override { return impl_.state_bytes(); }

 private:
  OptimKind kind_;
  AdamW8bit impl_;
};

}  // namespace

OptimKind optim_kind_from_string(std::string_view name) {
  if (name == "adamw_torch" || name == "adamw_32bit" || name == "adamw") return OptimKind::AdamW32;
  if (name == "adamw_8bit" || name == "adamw_bnb_8bit") return OptimKind::AdamW8bit;
  if (name == "paged_adamw_32bit") return OptimKind::PagedAdamW32;
  if (name == "paged_adamw_8bit") return OptimKind::PagedAdamW8bit;
  fail("--optim", "unknown optimizer " + excerpt(name) +
                      "; use adamw_torch, adamw_8bit, paged_adamw_32bit or paged_adamw_8bit");
}

const char* optim_kind_name(OptimKind k) {
  switch (k) {
    case OptimKind::AdamW32: return "adamw_torch";
    case OptimKind::AdamW8bit: return "adamw_8bit";
    case OptimKind::PagedAdamW32: return "paged_adamw_32bit";
    case OptimKind::PagedAdamW8bit: return "paged_adamw_8bit";
  }
  return "?";
}

bool optim_is_paged(OptimKind k) { return k == OptimKind::PagedAdamW32 || k == OptimKind::PagedAdamW8bit; }
bool optim_is_8bit(OptimKind k) { return k == OptimKind::AdamW8bit || k == OptimKind::PagedAdamW8bit; }

std::unique_ptr<Optimizer> make_optimizer(OptimKind kind, std::vector<AdamWParam> params, const AdamWConfig& cfg,
                                          const std::string& paged_dir) {
  switch (kind) {
    case OptimKind::AdamW32: return std::make_unique<AdamW32Optimizer>(std::move(params), cfg);
    case OptimKind::PagedAdamW32: return std::make_unique<PagedAdamW32Optimizer>(std::move(params), cfg, paged_dir);
    case OptimKind::AdamW8bit:
      return std::make_unique<AdamW8bitOptimizer>(kind, std::move(params), cfg, std::nullopt);
    case OptimKind::PagedAdamW8bit:
      return std::make_unique<AdamW8bitOptimizer>(kind, std::move(params), cfg, paged_dir);
  }
  fail("--optim", "unknown optimizer kind");
}

}  // namespace qlora
