#pragma once
// The tile GEMM behind model/gemm_bf16.h, written once over a `Tiles` policy: the AMX
// instructions (gemm_bf16_amx.cpp) or a scalar emulation of them (gemm_bf16.cpp), so the
// blocking, the packing and every edge are tested on any CPU. Internal to those two files.
//
// Shapes: every tile is 16 rows of 64 bytes. C tiles hold 16 x 16 float32; an A tile holds
// 16 rows of X with 32 bf16 values of K each; a B tile holds 16 "pair rows", each 16 output
// columns x 2 consecutive K values (the VNNI layout TDPBF16PS reads). A block of 32 x 32
// outputs uses tiles 0-3 (C), 4-5 (A) and 6-7 (B): per 32 values of K, four TDPBF16PS on two
// A and two B loads.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "base/parallel.h"

namespace qlora::gemm_bf16_detail {

constexpr int64_t kK = 32;      // K values per A tile row and per B tile
constexpr int64_t kBlock = 32;  // outputs per block side (2 tiles)
constexpr int64_t kBPanelPerK = 2 * 16 * 32;  // bf16 values of one K step of a 32-column B panel

// Everything defined in this header (inline functions, templates) has internal linkage: it is
// compiled into files built for different instruction sets (baseline, *_amx.cpp,
// *_avx512.cpp), and one file's out-of-line copy must never be linked into another's callers
// (an AVX-512 copy called on an AVX2-only CPU would stop the process).
namespace {
inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
}  // namespace

// The tile configuration (palette 1: 8 tiles, each 16 rows x 64 bytes), as LDTILECFG reads it.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");
static_assert(offsetof(TileConfig, colsb) == 16 && offsetof(TileConfig, rows) == 48, "LDTILECFG's layout");
namespace {
inline TileConfig full_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  return c;
}
}  // namespace

// X (M, K) float32 → bf16 rows of Kp = round_up(K, 32) values, Mp = round_up(M, 32) rows;
// the padding is zero. With `lo`, X is split in two: a = bf16(X) and lo = bf16(X - a), so
// a + lo holds X to 2^-17 of its magnitude (lo = 0 where X is not finite; a finite X past
// bf16's largest value, which would round to inf, is split at the largest). Rows [m0, m1) only
// (the callers split rows over threads). bf16 as base/float_formats.h f32_to_bf16 rounds.
void pack_a_rows(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t m0, int64_t m1, uint16_t* a,
                 uint16_t* lo);
// All Mp rows, over the threads. (gemm_bf16.cpp)
void pack_a(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Mp, int64_t Kp, uint16_t* a, uint16_t* lo);
// The B panel of output columns [n0, n0 + 32) over all Kp: Kp / 32 steps of two tiles, each
// element [step][tile][pair row r][2 * column + j] = W's value at k = 32 step + 2 r + j and
// n = n0 + 16 tile + column, zero past N or K. `nt`: W is (N, K) (element n * ldw + k); else
// W is (K, N) (element k * ldw + n). (gemm_bf16.cpp)
void pack_b(const float* w, int64_t ldw, bool nt, int64_t N, int64_t K, int64_t n0, int64_t Kp, uint16_t* b);

// The packings' implementations: the scalar reference and AVX2 (gemm_bf16_pack_avx2.cpp;
// bit-identical, tests/model/test_gemm_bf16.cpp). pack_a_rows and pack_b pick by simd_level().
void pack_a_rows_scalar(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t m0, int64_t m1,
                        uint16_t* a, uint16_t* lo);
void pack_b_scalar(const float* w, int64_t ldw, bool nt, int64_t N, int64_t K, int64_t n0, int64_t Kp, uint16_t* b);
void pack_a_rows_avx2(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t m0, int64_t m1,
                      uint16_t* a, uint16_t* lo);
void pack_b_avx2(const float* w, int64_t ldw, bool nt, int64_t N, int64_t K, int64_t n0, int64_t Kp, uint16_t* b);

// pack_bf16_panel on AVX-512 (gemm_bf16_pack_avx512.cpp). Only where simd_level() is AVX512.
void pack_bf16_panel_avx512(const uint16_t* w, int64_t ldw, int64_t K, int64_t N, int64_t n0, int64_t Kp,
                            uint16_t* b);

// Where the B operand comes from: a float32 matrix W (nt: (N, K), else (K, N)), or `fill`,
// which writes rows [r0, r1) of an (N, K) W as float32 at a stride of K (a 4-bit weight
// dequantized a panel at a time, by each thread into its own cache: no copy of the whole
// weight). fill is called from every thread at once, for disjoint rows.
using RowFill = std::function<void(int64_t r0, int64_t r1, float* out)>;
// Or `panel`, which writes the packed B panel of output columns [n0, n0 + 32) itself (pack_b's
// layout over Kp; a 4-bit weight packed straight from its codes), from every thread at once
// for disjoint panels.
using PanelFill = std::function<void(int64_t n0, int64_t Kp, uint16_t* b)>;
// Or `fill_bf16`, which writes rows [r0, r1) of an (N, K) W as bf16 at a stride of ld values
// (the tiles' A rows as they are: no float32 rows, no conversion pass).
using RowFillBf16 = std::function<void(int64_t r0, int64_t r1, uint16_t* out, int64_t ld)>;
struct BSource {
  const float* w = nullptr;
  int64_t ldw = 0;
  bool nt = true;
  const RowFill* fill = nullptr;           // (nt only)
  const PanelFill* panel = nullptr;        // (nn)
  const RowFillBf16* fill_bf16 = nullptr;  // (nt only)
};

// tile_gemm on the AMX instructions (gemm_bf16_amx.cpp, compiled with -mamx-tile -mamx-bf16).
// Only where amx_tiles_enabled().
void amx_gemm(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const BSource& src, float* y, int64_t ldy,
              bool accumulate, bool split_x);
// tile_gemm with each block on AVX-512 BF16 dot products (gemm_bf16_dpbf16_avx512.cpp): for
// CPUs with AVX512_BF16 and no AMX. Only where base/cpu_features.h simd_level() is AVX512.
void dpbf16_gemm(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const BSource& src, float* y,
                 int64_t ldy, bool accumulate, bool split_x);

namespace {  // (internal linkage: see round_up)

// One 32 x 32 block on the tiles: c (32 x 32 float32, row stride 32) = A · B over `steps` steps
// of 32 K values, A rows 0-15 at a0 and 16-31 at a0 + 16 * lda (bf16, row stride lda values,
// step s at column 32 s), B panels at b (kBPanelPerK values per step); with `lo`, A's low
// halves (the split X, same layout as a0) times the same B tiles are added as well.
template <class Tiles>
inline void block_product(const uint16_t* a0, const uint16_t* lo, int64_t lda, const uint16_t* b, int64_t steps,
                          float* c) {
  Tiles::template zero<0>();
  Tiles::template zero<1>();
  Tiles::template zero<2>();
  Tiles::template zero<3>();
  for (int64_t s = 0; s < steps; ++s) {
    Tiles::template load<4>(a0 + s * kK, lda * 2);
    Tiles::template load<5>(a0 + 16 * lda + s * kK, lda * 2);
    Tiles::template load<6>(b + s * kBPanelPerK, 64);
    Tiles::template load<7>(b + s * kBPanelPerK + 16 * 32, 64);
    Tiles::template dp<0, 4, 6>();
    Tiles::template dp<1, 4, 7>();
    Tiles::template dp<2, 5, 6>();
    Tiles::template dp<3, 5, 7>();
    if (lo) {
      Tiles::template load<4>(lo + s * kK, lda * 2);
      Tiles::template load<5>(lo + 16 * lda + s * kK, lda * 2);
      Tiles::template dp<0, 4, 6>();
      Tiles::template dp<1, 4, 7>();
      Tiles::template dp<2, 5, 6>();
      Tiles::template dp<3, 5, 7>();
    }
  }
  Tiles::template store<0>(c, kBlock * 4);
  Tiles::template store<1>(c + 16, kBlock * 4);
  Tiles::template store<2>(c + 16 * kBlock, kBlock * 4);
  Tiles::template store<3>(c + 16 * kBlock + 16, kBlock * 4);
}

// Asks for the rows [m0, m0 + mm) x columns [n0, n0 + nn) of Y in cache before a block is
// computed, for the write-back after it: Y (the input gradient's dx, re-read and re-written by
// every backward tile) is larger than L2, and the write-back's loads otherwise stall the
// thread (7% of the backward product's time on Llama 1.1B's shapes, perf annotate).
inline void prefetch_block(float* y, int64_t ldy, int64_t m0, int64_t mm, int64_t n0, int64_t nn) {
  for (int64_t i = 0; i < mm; ++i) {
    float* yr = y + (m0 + i) * ldy + n0;
    for (int64_t j = 0; j < nn; j += 16) __builtin_prefetch(yr + j, 1, 3);
  }
}

// The drivers below run over a `Blocks` policy: configure() and release() around a thread's
// work, and block(a0, lo, lda, b, steps, c), block_product's contract. TileBlocks puts it on a
// Tiles policy; gemm_bf16_dpbf16_avx512.cpp has one on AVX-512 dot products.
template <class Tiles>
struct TileBlocks {
  static void configure() { Tiles::configure(); }
  static void release() { Tiles::release(); }
  static void block(const uint16_t* a0, const uint16_t* lo, int64_t lda, const uint16_t* b, int64_t steps, float* c) {
    block_product<Tiles>(a0, lo, lda, b, steps, c);
  }
};

// Y (M, N) (+)= X · Wᵀ for W (N, K) given by rows (`fill`), with the roles swapped: the
// tiles compute Yᵀ = W · Xᵀ, W's rows as the A operand (bf16 rows as they come: a conversion,
// no transpose) and X as the B operand, packed into VNNI panels once per call. Each thread
// fills and converts its own 32-row panels of W and runs them against every 32-token panel of
// X; C blocks (32 W rows x 32 tokens) are written back transposed. The products and the order
// of their sums are tile_gemm's, so the result is the same, bit for bit; what changes is that
// the transposing packing falls on X (T x K, once) instead of on W (N x K), N/T times more.
template <class Blocks>
void tile_gemm_w_rows(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const RowFill* fill,
                      const RowFillBf16* fill_bf16, float* y, int64_t ldy, bool accumulate) {
  const int64_t Kp = round_up(K, kK), steps = Kp / kK, mblocks = (M + kBlock - 1) / kBlock;
  thread_local std::vector<uint16_t> xb_buf;  // the calling thread's: the workers read it
  xb_buf.resize(static_cast<size_t>(mblocks * steps * kBPanelPerK));
  uint16_t* xb = xb_buf.data();
  parallel_for_range(mblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) pack_b(x, ldx, /*nt=*/true, M, K, b * kBlock, Kp, xb + b * steps * kBPanelPerK);
  });
  const int64_t nblocks = (N + kBlock - 1) / kBlock;
  parallel_for_range(nblocks, 1, [&](int64_t nb0, int64_t nb1) {
    thread_local std::vector<float> rows_buf;
    thread_local std::vector<uint16_t> wa_buf;
    if (!fill_bf16) rows_buf.resize(static_cast<size_t>(kBlock * K));
    wa_buf.resize(static_cast<size_t>(kBlock * Kp));
    uint16_t* wa = wa_buf.data();
    alignas(64) float c[kBlock * kBlock];
    Blocks::configure();
    for (int64_t nb = nb0; nb < nb1; ++nb) {
      const int64_t n0 = nb * kBlock, nn = std::min(kBlock, N - n0);
      if (fill_bf16) {
        (*fill_bf16)(n0, n0 + nn, wa, Kp);
        for (int64_t i = 0; i < nn && K < Kp; ++i) std::memset(wa + i * Kp + K, 0, static_cast<size_t>(Kp - K) * 2);
        if (nn < kBlock) std::memset(wa + nn * Kp, 0, static_cast<size_t>((kBlock - nn) * Kp) * 2);
      } else {
        (*fill)(n0, n0 + nn, rows_buf.data());
        pack_a_rows(rows_buf.data(), K, nn, K, Kp, 0, kBlock, wa, nullptr);  // (rows past nn: zero)
      }
      for (int64_t mb = 0; mb < mblocks; ++mb) {
        // c[i][j]: W row n0 + i against token m0 + j.
        const int64_t m0 = mb * kBlock, mm = std::min(kBlock, M - m0);
        prefetch_block(y, ldy, m0, mm, n0, nn);
        Blocks::block(wa, nullptr, Kp, xb + mb * steps * kBPanelPerK, steps, c);
        for (int64_t j = 0; j < mm; ++j) {
          float* yr = y + (m0 + j) * ldy + n0;
          if (accumulate)
            for (int64_t i = 0; i < nn; ++i) yr[i] += c[i * kBlock + j];
          else
            for (int64_t i = 0; i < nn; ++i) yr[i] = c[i * kBlock + j];
        }
      }
    }
    Blocks::release();
  });
}

// Y (M, N) (+)= X · op(W) on Blocks; see model/gemm_bf16.h for the contract. `split_x`: X in
// two bf16 parts (pack_a's lo), each multiplied by the same B tiles (gemm_bf16_split_x_nn).
// A W given by rows runs tile_gemm_w_rows.
template <class Blocks>
void tile_gemm(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const BSource& src, float* y,
               int64_t ldy, bool accumulate, bool split_x = false) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::memset(y + m * ldy, 0, static_cast<size_t>(N) * sizeof(float));
    return;
  }
  if (src.fill || src.fill_bf16) {  // (a row source is never split: it is a forward, whose X is bf16 already)
    tile_gemm_w_rows<Blocks>(M, N, K, x, ldx, src.fill, src.fill_bf16, y, ldy, accumulate);
    return;
  }
  const int64_t Kp = round_up(K, kK), Mp = round_up(M, kBlock), steps = Kp / kK;
  thread_local std::vector<uint16_t> a_buf, lo_buf;  // the calling thread's: the workers read them
  a_buf.resize(static_cast<size_t>(Mp * Kp));
  if (split_x) lo_buf.resize(static_cast<size_t>(Mp * Kp));
  uint16_t* a = a_buf.data();
  uint16_t* lo = split_x ? lo_buf.data() : nullptr;
  pack_a(x, ldx, M, K, Mp, Kp, a, lo);
  const int64_t nblocks = (N + kBlock - 1) / kBlock;
  parallel_for_range(nblocks, 1, [&](int64_t nb0, int64_t nb1) {
    thread_local std::vector<uint16_t> b_buf;
    b_buf.resize(static_cast<size_t>(steps * kBPanelPerK));
    uint16_t* b = b_buf.data();
    alignas(64) float c[kBlock * kBlock];
    Blocks::configure();
    for (int64_t nb = nb0; nb < nb1; ++nb) {
      const int64_t n0 = nb * kBlock, nn = std::min(kBlock, N - n0);
      if (src.panel)
        (*src.panel)(n0, Kp, b);
      else
        pack_b(src.w, src.ldw, src.nt, N, K, n0, Kp, b);
      for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const int64_t mm = std::min(kBlock, M - m0);
        prefetch_block(y, ldy, m0, mm, n0, nn);
        Blocks::block(a + m0 * Kp, lo ? lo + m0 * Kp : nullptr, Kp, b, steps, c);
        for (int64_t i = 0; i < mm; ++i) {
          float* yr = y + (m0 + i) * ldy + n0;
          const float* cr = c + i * kBlock;
          if (accumulate)
            for (int64_t j = 0; j < nn; ++j) yr[j] += cr[j];
          else
            std::memcpy(yr, cr, static_cast<size_t>(nn) * sizeof(float));
        }
      }
    }
    Blocks::release();
  });
}

}  // namespace

}  // namespace qlora::gemm_bf16_detail
