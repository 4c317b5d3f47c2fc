#pragma once
// bf16 GEMM with float32 accumulation, on AMX tiles where the CPU has them (issue 14): the
// products of the bf16 compute path, whose operands already hold bf16 values (it rounds every
// Linear input and every dequantized weight to bf16 before the product, as bitsandbytes'
// bf16 compute does). Each product of two bf16 values is exact in float32 and the sums are
// float32, so the result equals model/gemm.h's float32 product of the same values up to
// summation order.
//
//   gemm_bf16_nt: Y = X (M, K) · Wᵀ,  W (N, K)   a Linear's forward through its weight
//   gemm_bf16_nn: Y = X (M, K) · W,   W (K, N)   an input gradient through the weight
//
// (or Y += it when `accumulate`), leading dimensions ldx, ldw, ldy. On AMX the operands are
// converted to bf16 (round to nearest even: a no-op for bf16 values) and packed into tiles;
// without AMX, or when the tiles failed their first-use check, the same call runs on
// model/gemm.h's float32 GEMM, which reads the values as they are. Multi-threaded over
// qlora::max_threads(); not from inside a parallel region.
#include <cstdint>
#include <functional>

namespace qlora {

void gemm_bf16_nt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
                  int64_t ldy, bool accumulate);
void gemm_bf16_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
                  int64_t ldy, bool accumulate);

// Y (M, N) (+)= X (M, K) · W (K, N) where W holds bf16 values and X any float32 (an input
// gradient through a bf16-rounded weight: the gradient stays float32 in bf16 compute). On
// tiles X is split in two bf16 parts, hi = bf16(X) and lo = bf16(X - hi), each multiplied by
// W: X is carried to 2^-17 of its magnitude (float32: 2^-24), at twice the tile work. Else
// sgemm_nn.
void gemm_bf16_split_x_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                          float* y, int64_t ldy, bool accumulate);

// gemm_bf16_nt with W (N, K) given by `fill`, which writes rows [r0, r1) of it as float32
// (bf16 values) at a stride of K: on tiles each thread fills its own panel of 32 rows into its
// cache and packs it (a 4-bit weight dequantized on the fly, never whole); without tiles,
// slabs of at most 2 MiB through sgemm_nt. fill is called from several threads at once, for
// disjoint rows.
void gemm_bf16_nt_rows(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx,
                       const std::function<void(int64_t r0, int64_t r1, float* out)>& fill, float* y, int64_t ldy,
                       bool accumulate);

// True when gemm_bf16_* run on AMX tiles: the CPU has AMX-BF16, the OS granted the tile
// state, QLORA_SIMD allows it (base/cpu_features.h amx_tiles_enabled), and on the first call
// the hardware kernel agreed with its emulation on an awkward shape (else a warning on
// stderr, once, and the float32 GEMM from then on: never silently wrong numbers).
bool gemm_bf16_on_tiles();
// "AMX bf16 tiles", or the float32 GEMM's name (model/gemm.h sgemm_backend_name).
const char* gemm_bf16_backend_name();

// The tile kernel itself, for tests and benchmarks: the same blocking, packing and edges
// over either the AMX instructions (Hardware: requires amx_tiles_enabled()) or a scalar
// emulation of them that follows Intel's definition of TDPBF16PS (Emulated: any CPU, slow).
namespace gemm_bf16_tiles {
enum class Impl { Emulated, Hardware };
void nt(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate);
void nn(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate);
void split_x_nn(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                float* y, int64_t ldy, bool accumulate);
void nt_rows(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx,
             const std::function<void(int64_t r0, int64_t r1, float* out)>& fill, float* y, int64_t ldy,
             bool accumulate);
// For tests on CPUs without AMX: while on, gemm_bf16_nt/nn run on the emulated tiles (so
// the callers' use of them is exercised anywhere), counting the calls and the operand values
// that were not bf16 (which the tiles round: the callers promise there are none). Turning it
// on or off resets the counts. QLORA_BF16_TILES=emulate in the environment does the same for
// a whole process (end-to-end tests of the AMX path on any CPU; slow).
void force_emulation_for_tests(bool on);
struct ForcedStats {
  uint64_t calls = 0, inexact_operands = 0;
};
ForcedStats forced_stats();
}  // namespace gemm_bf16_tiles

}  // namespace qlora
