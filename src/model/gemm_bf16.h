#pragma once
// bf16 GEMM with float32 accumulation, on AMX tiles or AVX-512 BF16 dot products where the CPU
// has them (issue 14): the products of the bf16 compute path, whose operands already hold bf16 values (it rounds every
// Linear input and every dequantized weight to bf16 before the product, as bitsandbytes'
// bf16 compute does). Each product of two bf16 values is exact in float32 and the sums are
// float32, so the result equals model/gemm.h's float32 product of the same values up to
// summation order.
//
//   gemm_bf16_nt: Y = X (M, K) · Wᵀ,  W (N, K)   a Linear's forward through its weight
//   gemm_bf16_nn: Y = X (M, K) · W,   W (K, N)   an input gradient through the weight
//
// (or Y += it when `accumulate`), leading dimensions ldx, ldw, ldy. On a bf16 unit
// (gemm_bf16_fast) the operands are converted to bf16 (round to nearest even: a no-op for bf16
// values) and packed into tiles; without one, the same call runs on model/gemm.h's float32
// GEMM, which reads the values as they are. Multi-threaded over
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
// W: X is carried to 2^-17 of its magnitude (float32: 2^-24), at twice the tile work. Where
// that does not pay (gemm_bf16_split_x_fast false), sgemm_nn.
void gemm_bf16_split_x_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                          float* y, int64_t ldy, bool accumulate);

// Y (M, N) (+)= bf16(X) · W (K, N) where W holds bf16 values and X any float32, rounded to bf16
// (nearest even) on the way in: the input gradient as bitsandbytes' bf16 compute takes it
// (its backward multiplies the bf16 gradient by the bf16 weight), one product where the split
// takes two. On a bf16 unit (gemm_bf16_fast), else X rounded into a copy and sgemm_nn.
void gemm_bf16_rounded_x_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                            float* y, int64_t ldy, bool accumulate);

// Y (M, N) (+)= X (M, K) · W (K, N) with W given by `panel`: panel(n0, Kp, b) writes the bf16
// B panel of output columns [n0, n0 + 32) over Kp = K rounded up to 32, in the tiles' packed
// layout (kernels::LinearKernels::pack_q4_bf16_panel documents it and writes it from a 4-bit
// weight's codes: no float32 copy of the weight, no separate packing pass); it is called from
// several threads at once, for disjoint panels. X (a float32 gradient) is rounded to bf16 as
// gemm_bf16_rounded_x_nn rounds it, or split in two where gemm_bf16_split_x_fast() (AMX), as
// gemm_bf16_split_x_nn. The whole of K in one product: each output block is written once (a
// product per tile of W rows re-reads and re-writes all of Y per tile). REQUIRES
// gemm_bf16_fast() (throws otherwise).
void gemm_bf16_nn_panels(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx,
                         const std::function<void(int64_t n0, int64_t Kp, uint16_t* b)>& panel, float* y, int64_t ldy,
                         bool accumulate);

// The panel of gemm_bf16_nn_panels for a bf16 matrix W (K, N) (row k at w + k * ldw): output
// columns [n0, n0 + 32) over Kp values of K, zero past N or K (a bf16 output head's input
// gradient, without a float32 copy). Scalar, or AVX-512 where simd_level() has it: the same
// bits.
void pack_bf16_panel(const uint16_t* w, int64_t ldw, int64_t K, int64_t N, int64_t n0, int64_t Kp, uint16_t* b);
void pack_bf16_panel_scalar(const uint16_t* w, int64_t ldw, int64_t K, int64_t N, int64_t n0, int64_t Kp,
                            uint16_t* b);

// gemm_bf16_nt with W (N, K) given by `fill`, which writes rows [r0, r1) of it as float32
// (bf16 values) at a stride of K: on tiles each thread fills its own panel of 32 rows into its
// cache and packs it (a 4-bit weight dequantized on the fly, never whole); without a bf16 unit,
// slabs of at most 2 MiB through sgemm_nt. fill is called from several threads at once, for
// disjoint rows.
void gemm_bf16_nt_rows(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx,
                       const std::function<void(int64_t r0, int64_t r1, float* out)>& fill, float* y, int64_t ldy,
                       bool accumulate);

// gemm_bf16_nt_rows with the rows written as bf16: fill_bf16(r0, r1, out, ld) writes rows
// [r0, r1) of W (N, K) at a stride of ld >= K values (kernels::LinearKernels::dequant_rows_q4_bf16
// for a 4-bit weight), straight into the tiles' operand: no float32 rows and no conversion pass.
// X must hold bf16 values. REQUIRES gemm_bf16_fast() (throws otherwise).
void gemm_bf16_nt_rows_bf16(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx,
                            const std::function<void(int64_t r0, int64_t r1, uint16_t* out, int64_t ld)>& fill_bf16,
                            float* y, int64_t ldy, bool accumulate);

// True when gemm_bf16_nt/nn/nt_rows run on a bf16 unit, faster than the float32 GEMM:
//  - AMX tiles: the CPU has AMX-BF16, the OS granted the tile state, QLORA_SIMD allows it
//    (base/cpu_features.h amx_tiles_enabled), and on the first call the hardware kernel agreed
//    with its emulation on an awkward shape (else a warning on stderr, once, and the next
//    engine from then on: never silently wrong numbers);
//  - else AVX-512 BF16 dot products (VDPBF16PS; simd_level() AVX512, e.g. AMD Zen 4), each
//    tile block computed in registers: ~1.7x the float32 GEMM on the forward shapes
//    (bench/RESULTS.md).
bool gemm_bf16_fast();
// True when gemm_bf16_split_x_nn runs on the bf16 unit: on AMX tiles only (its doubled work on
// AVX-512 dot products is slower than the float32 GEMM it then calls).
bool gemm_bf16_split_x_fast();
// "AMX bf16 tiles", "AVX-512 BF16 dot products", or the float32 GEMM's name (model/gemm.h
// sgemm_backend_name).
const char* gemm_bf16_backend_name();

// The tile kernel itself, for tests and benchmarks: the same blocking, packing and edges
// over either the AMX instructions (Hardware: requires amx_tiles_enabled()), AVX-512 BF16 dot
// products computing each tile block (Avx512Bf16: requires simd_level() AVX512, which
// includes AVX512_BF16), or a scalar emulation of the tiles that follows Intel's definition of
// TDPBF16PS (Emulated: any CPU, slow).
namespace gemm_bf16_tiles {
enum class Impl { Emulated, Hardware, Avx512Bf16 };
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
