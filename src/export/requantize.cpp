#include "export/requantize.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "base/error.h"
#include "formats/model_loader.h"

namespace qlora {

namespace fs = std::filesystem;

namespace {

std::vector<float> all_logits(const Model& m, const std::vector<int>& ids) {
  InferenceState st(m, static_cast<int64_t>(ids.size()));
  std::vector<float> out(ids.size() * static_cast<size_t>(m.spec().vocab));
  forward(m, st, ids, out.data(), /*all_logits=*/true);
  return out;
}

Model load_from(const std::string& dir, bool quantized) {
  ModelFiles f = open_model_files(dir);
  ModelLoadOptions o;
  o.quant.quantize = quantized;  // quantized: the checkpoint's own 4-/8-bit states, as stored
  return Model::load(f.spec, *f.tensors, o);
}

}  // namespace

RequantizeReport write_merged_requantized(const Model& model, const ModelFiles& source,
                                          const std::vector<WeightedAdapter>& adapters, const std::string& out_dir,
                                          const QuantizeOptions& q, const std::vector<int>& probe_ids, bool overwrite) {
  std::error_code ec;
  if (!overwrite && fs::exists(fs::path(out_dir) / "config.json", ec))
    fail(out_dir, "already holds a model (config.json); pass --overwrite to replace it, or choose another --out");
  const fs::path parent = fs::absolute(out_dir).parent_path();
  const fs::path tmp = parent / (fs::path(out_dir).filename().string() + ".fp32-merge.tmp-" + std::to_string(getpid()));
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code e;
      fs::remove_all(p, e);
    }
  } cleanup{tmp};
  HfExportOptions hx;
  hx.dtype = DType::F32;
  hx.log = false;
  write_merged_hf_dir(model, source, adapters, tmp.string(), hx, true);
  RequantizeReport r;
  r.quantize = quantize_checkpoint(tmp.string(), out_dir, q);

  if (probe_ids.empty()) return r;
  const Model dense = load_from(tmp.string(), false);
  const Model requant = load_from(out_dir, true);
  const std::vector<float> a = all_logits(dense, probe_ids), b = all_logits(requant, probe_ids);
  const auto V = static_cast<size_t>(model.spec().vocab);
  r.positions = static_cast<int64_t>(probe_ids.size());
  double kl_sum = 0;
  int64_t agree = 0;
  for (size_t p = 0; p < probe_ids.size(); ++p) {
    const float* x = a.data() + p * V;
    const float* y = b.data() + p * V;
    double mx = -INFINITY, my = -INFINITY;
    size_t ax = 0, ay = 0;
    for (size_t i = 0; i < V; ++i) {
      if (x[i] > mx) mx = x[i], ax = i;
      if (y[i] > my) my = y[i], ay = i;
      r.max_abs_logit = std::max(r.max_abs_logit, std::fabs(static_cast<double>(x[i]) - y[i]));
    }
    double sx = 0, sy = 0;
    for (size_t i = 0; i < V; ++i) sx += std::exp(x[i] - mx), sy += std::exp(y[i] - my);
    const double lx = mx + std::log(sx), ly = my + std::log(sy);
    double kl = 0;
    for (size_t i = 0; i < V; ++i) {
      const double px = std::exp(x[i] - lx);
      kl += px * ((x[i] - lx) - (y[i] - ly));
    }
    kl_sum += kl;
    agree += ax == ay;
  }
  r.mean_kl = kl_sum / static_cast<double>(probe_ids.size());
  r.top1_agreement = static_cast<double>(agree) / static_cast<double>(probe_ids.size());
  return r;
}

}  // namespace qlora
