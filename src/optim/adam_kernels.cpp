// The baseline (x86-64) compilation of the Adam loops, the per-step constants, the code
// tables and the run-time choice of kernels. See adam_kernels.h.
#include "optim/adam_kernels.h"

#include <cmath>
#include <string>

#include "base/error.h"
#include "optim/adam_kernels_impl.h"
#include "quant/blockwise_kernels.h"
#include "quant/codebook.h"

namespace qlora::adam_kernels {

TorchAdamWScalars TorchAdamWScalars::make(const AdamWConfig& cfg, double lr, int64_t step) {
  // As optim/adamw.cpp: scalars in double (as Python computes them), rounded once.
  TorchAdamWScalars s;
  const double t = static_cast<double>(step);
  s.decay = static_cast<float>(1.0 - lr * cfg.weight_decay);
  s.do_decay = cfg.weight_decay != 0.0;
  s.w1 = static_cast<float>(1.0 - cfg.beta1);
  s.w1_small = std::fabs(s.w1) < 0.5f;
  s.b2 = static_cast<float>(cfg.beta2);
  s.one_minus_b2 = static_cast<float>(1.0 - cfg.beta2);
  const double bc1 = 1.0 - std::pow(cfg.beta1, t);
  const double bc2 = 1.0 - std::pow(cfg.beta2, t);
  s.neg_step_size = static_cast<float>(-(lr / bc1));
  s.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  s.eps = static_cast<float>(cfg.eps);
  return s;
}

const Adam8bitTables& adam8bit_tables() {
  // Built once: quant8_lut's per-thread cache holds one code at a time, and every block
  // alternates between the two maps.
  static const Adam8bitTables t = [] {
    Adam8bitTables r;
    r.code1 = dynamic_map_8bit(true).data();
    r.code2 = dynamic_map_8bit(false).data();
    r.lut1 = kernels::build_8bit_lut(r.code1);
    r.lut2 = kernels::build_8bit_lut(r.code2);
    r.lut1.resize(r.lut1.size() + 4, 0);  // room for 32-bit gathers at the last entry
    r.lut2.resize(r.lut2.size() + 4, 0);
    return r;
  }();
  return t;
}

const AdamKernels& scalar_kernels() {
  static const AdamKernels k = {adam8bit_blocks_impl, adam32bnb_impl, torch_adamw_impl};
  return k;
}

const AdamKernels& kernels_for(SimdLevel level) {
  check(static_cast<int>(level) <= static_cast<int>(cpu_simd_level()), "Adam kernels",
        std::string("this CPU does not support ") + simd_level_name(level));
  return level == SimdLevel::Scalar ? scalar_kernels() : avx2_kernels();
}

const AdamKernels& active_kernels() {
  static const AdamKernels& k = kernels_for(simd_level());
  return k;
}

}  // namespace qlora::adam_kernels
