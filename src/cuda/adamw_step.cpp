#include "optim/adam_kernels.h"
#include "cuda/kernels_train.h"

namespace qlora::cuda {

AdamWStepScalars adamw_step_scalars(const AdamWConfig& cfg, double lr, int64_t step) {
  const adam_kernels::TorchAdamWScalars t = adam_kernels::TorchAdamWScalars::make(cfg, lr, step);
  AdamWStepScalars s;
  s.do_decay = t.do_decay;
  s.w1_small = t.w1_small;
  s.decay = t.decay;
  s.w1 = t.w1;
  s.b2 = t.b2;
  s.one_minus_b2 = t.one_minus_b2;
  s.neg_step_size = t.neg_step_size;
  s.bc2_sqrt = t.bc2_sqrt;
  s.eps = t.eps;
  return s;
}

}  // namespace qlora::cuda
