// model/gemm_bf16.h: the packing of the tile GEMM (gemm_bf16_tiles.h), its scalar emulation
// of the tile instructions, and the choice between AMX tiles, AVX-512 BF16 dot products and
// the float32 GEMM.
#include "model/gemm_bf16.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <algorithm>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/error.h"
#include "base/float_formats.h"
#include "base/parallel.h"
#include "model/gemm.h"
#include "model/gemm_bf16_tiles.h"

namespace qlora {

namespace gemm_bf16_detail {

void pack_a_rows_scalar(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t m0, int64_t m1,
                        uint16_t* a, uint16_t* lo) {
  for (int64_t m = m0; m < m1; ++m) {
    uint16_t* row = a + m * Kp;
    uint16_t* lrow = lo ? lo + m * Kp : nullptr;
    int64_t k = 0;
    if (m < M)
      for (; k < K; ++k) {
        const float v = x[m * ldx + k];
        row[k] = f32_to_bf16(v);
        if (lrow) {
          // A finite value past bf16's largest rounds to inf: split it at the largest instead.
          if (std::isfinite(v) && !std::isfinite(bf16_to_f32(row[k]))) row[k] = (row[k] & 0x8000u) | 0x7F7Fu;
          // (v - hi is exact in float32: hi holds v's top 8 significant bits, rounded)
          lrow[k] = std::isfinite(v) ? f32_to_bf16(v - bf16_to_f32(row[k])) : 0;
        }
      }
    for (; k < Kp; ++k) {
      row[k] = 0;
      if (lrow) lrow[k] = 0;
    }
  }
}

void pack_b_scalar(const float* w, int64_t ldw, bool nt, int64_t N, int64_t K, int64_t n0, int64_t Kp, uint16_t* b) {
  std::memset(b, 0, static_cast<size_t>(Kp / kK * kBPanelPerK) * sizeof(uint16_t));
  const int64_t nn = std::min(kBlock, N - n0);
  // Element (k, column c of the panel) goes to step k / 32, tile c / 16, pair row (k % 32) / 2,
  // position 2 (c % 16) + k % 2.
  auto at = [&](int64_t k, int64_t c) -> uint16_t& {
    return b[(k / kK) * kBPanelPerK + (c / 16) * (16 * 32) + ((k % kK) / 2) * 32 + 2 * (c % 16) + (k % 2)];
  };
  if (nt) {
    for (int64_t c = 0; c < nn; ++c) {  // W row n0 + c holds K contiguous values
      const float* wr = w + (n0 + c) * ldw;
      for (int64_t k = 0; k < K; ++k) at(k, c) = f32_to_bf16(wr[k]);
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {  // W row k holds the N outputs
      const float* wr = w + k * ldw + n0;
      for (int64_t c = 0; c < nn; ++c) at(k, c) = f32_to_bf16(wr[c]);
    }
  }
}

void pack_a_rows(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t m0, int64_t m1, uint16_t* a,
                 uint16_t* lo) {
  if (simd_level() >= SimdLevel::AVX2)
    pack_a_rows_avx2(x, ldx, M, K, Kp, m0, m1, a, lo);
  else
    pack_a_rows_scalar(x, ldx, M, K, Kp, m0, m1, a, lo);
}

void pack_a(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Mp, int64_t Kp, uint16_t* a, uint16_t* lo) {
  parallel_for_range(Mp, std::max<int64_t>(1, 16384 / std::max<int64_t>(Kp, 1)),
                     [&](int64_t m0, int64_t m1) { pack_a_rows(x, ldx, M, K, Kp, m0, m1, a, lo); });
}

void pack_b(const float* w, int64_t ldw, bool nt, int64_t N, int64_t K, int64_t n0, int64_t Kp, uint16_t* b) {
  if (simd_level() >= SimdLevel::AVX2)
    pack_b_avx2(w, ldw, nt, N, K, n0, Kp, b);
  else
    pack_b_scalar(w, ldw, nt, N, K, n0, Kp, b);
}

namespace {

// The eight tile registers and their operations in plain C++, one set per thread (the driver
// runs on every OpenMP thread at once). TDPBF16PS as Intel's manual defines it: for each row
// m of A, each pair row p of B and each output column n, C[m][n] += A[m][2p] · B[p][2n], then
// += A[m][2p+1] · B[p][2n+1], each a float32 operation (the products of bf16 values are exact).
struct EmuTiles {
  struct State {
    alignas(64) unsigned char tile[8][16 * 64];
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  static void configure() {}
  template <int T>
  static void zero() {
    std::memset(state().tile[T], 0, sizeof(state().tile[T]));
  }
  template <int T>
  static void load(const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      std::memcpy(state().tile[T] + r * 64, static_cast<const unsigned char*>(p) + r * stride, 64);
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<unsigned char*>(p) + r * stride, state().tile[T] + r * 64, 64);
  }
  // TDPBF16PS ignores MXCSR: subnormal bf16 inputs count as zero and subnormal results are
  // flushed to zero (round to nearest even otherwise, as float32 arithmetic here).
  static float daz(uint16_t h) { return (h & 0x7F80u) == 0 ? std::copysign(0.0f, bf16_to_f32(h)) : bf16_to_f32(h); }
  static float ftz(float v) { return std::fabs(v) < std::numeric_limits<float>::min() ? std::copysign(0.0f, v) : v; }
  template <int C, int A, int B>
  static void dp() {
    State& s = state();
    float c[16][16];
    uint16_t a[16][32], b[16][32];
    std::memcpy(c, s.tile[C], sizeof c);
    std::memcpy(a, s.tile[A], sizeof a);
    std::memcpy(b, s.tile[B], sizeof b);
    for (int m = 0; m < 16; ++m)
      for (int p = 0; p < 16; ++p) {
        const float a0 = daz(a[m][2 * p]), a1 = daz(a[m][2 * p + 1]);
        for (int n = 0; n < 16; ++n) {
          c[m][n] = ftz(c[m][n] + a0 * daz(b[p][2 * n]));
          c[m][n] = ftz(c[m][n] + a1 * daz(b[p][2 * n + 1]));
        }
      }
    std::memcpy(s.tile[C], c, sizeof c);
  }
  static void release() {}
};

}  // namespace
}  // namespace gemm_bf16_detail

namespace {
// QLORA_BF16_TILES=emulate: the forced emulation for a whole process (end-to-end tests of
// the AMX path on any CPU; slow).
bool env_forced() {
  static const bool on = [] {
    const char* e = std::getenv("QLORA_BF16_TILES");
    return e && std::string(e) == "emulate";
  }();
  return on;
}
}  // namespace

namespace gemm_bf16_tiles {

namespace {
using gemm_bf16_detail::BSource;

void run(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const BSource& src, float* y,
         int64_t ldy, bool accumulate, bool split_x = false) {
  if (impl == Impl::Hardware)
    gemm_bf16_detail::amx_gemm(M, N, K, x, ldx, src, y, ldy, accumulate, split_x);
  else if (impl == Impl::Avx512Bf16)
    gemm_bf16_detail::dpbf16_gemm(M, N, K, x, ldx, src, y, ldy, accumulate, split_x);
  else
    gemm_bf16_detail::tile_gemm<gemm_bf16_detail::TileBlocks<gemm_bf16_detail::EmuTiles>>(M, N, K, x, ldx, src, y, ldy, accumulate, split_x);
}

BSource matrix(const float* w, int64_t ldw, bool nt) {
  BSource b;
  b.w = w;
  b.ldw = ldw;
  b.nt = nt;
  return b;
}
}  // namespace

void nt(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate) {
  run(impl, M, N, K, x, ldx, matrix(w, ldw, true), y, ldy, accumulate);
}

void nn(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
        int64_t ldy, bool accumulate) {
  run(impl, M, N, K, x, ldx, matrix(w, ldw, false), y, ldy, accumulate);
}

void split_x_nn(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                float* y, int64_t ldy, bool accumulate) {
  run(impl, M, N, K, x, ldx, matrix(w, ldw, false), y, ldy, accumulate, /*split_x=*/true);
}

void nt_rows(Impl impl, int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const gemm_bf16_detail::RowFill& fill, float* y,
             int64_t ldy, bool accumulate) {
  BSource b;
  b.fill = &fill;
  run(impl, M, N, K, x, ldx, b, y, ldy, accumulate);
}

namespace {
std::atomic<bool> g_forced{false};
std::atomic<uint64_t> g_inexact{0}, g_calls{0};

// Operand values that are not bf16, for the tests' promise check (forced mode only).
uint64_t count_inexact(const float* a, int64_t rows, int64_t cols, int64_t ld) {
  uint64_t n = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float v = a[r * ld + c];
      n += !(bf16_to_f32(f32_to_bf16(v)) == v) && !std::isnan(v);
    }
  return n;
}
}  // namespace

void force_emulation_for_tests(bool on) {
  g_forced = on;
  g_inexact = 0;
  g_calls = 0;
}
ForcedStats forced_stats() {
  ForcedStats s;
  s.calls = g_calls;
  s.inexact_operands = g_inexact;
  return s;
}

}  // namespace gemm_bf16_tiles

namespace {

using gemm_bf16_detail::BSource;

// Forced emulation (tests): count what the tiles would round (the row source's rows as it
// produces them), then run on the emulation.
bool run_forced(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const BSource& src, float* y,
                int64_t ldy, bool accumulate, bool split_x = false) {
  if (!gemm_bf16_tiles::g_forced && !env_forced()) return false;
  ++gemm_bf16_tiles::g_calls;
  if (!split_x) gemm_bf16_tiles::g_inexact += gemm_bf16_tiles::count_inexact(x, M, K, ldx);
  BSource counted = src;
  gemm_bf16_detail::RowFill counting;
  if (src.fill) {
    counting = [&src, K](int64_t r0, int64_t r1, float* out) {
      (*src.fill)(r0, r1, out);
      gemm_bf16_tiles::g_inexact += gemm_bf16_tiles::count_inexact(out, r1 - r0, K, K);
    };
    counted.fill = &counting;
  } else {
    gemm_bf16_tiles::g_inexact += src.nt ? gemm_bf16_tiles::count_inexact(src.w, N, K, src.ldw)
                                         : gemm_bf16_tiles::count_inexact(src.w, K, N, src.ldw);
  }
  gemm_bf16_detail::tile_gemm<gemm_bf16_detail::TileBlocks<gemm_bf16_detail::EmuTiles>>(M, N, K, x, ldx, counted, y, ldy, accumulate, split_x);
  return true;
}

// The AMX kernel against its emulation on an awkward shape (no dimension a multiple of a
// tile, each layout and B source, accumulation): true when they agree to float32 summation
// order.
bool hardware_agrees_with_emulation() {
  using gemm_bf16_tiles::Impl;
  const int64_t M = 37, N = 45, K = 77;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> x(M * K), wt(N * K), wn(K * N);
  for (float& v : x) v = bf16_to_f32(f32_to_bf16(d(rng)));
  for (float& v : wt) v = bf16_to_f32(f32_to_bf16(d(rng)));
  for (float& v : wn) v = bf16_to_f32(f32_to_bf16(d(rng)));
  std::vector<float> xs(x);  // for the split product: float32 values, not bf16 ones
  for (float& v : xs) v = d(rng);
  const gemm_bf16_detail::RowFill fill = [&](int64_t r0, int64_t r1, float* out) {
    std::copy(wt.begin() + r0 * K, wt.begin() + r1 * K, out);
  };
  const char* names[4] = {"nt", "nn", "split nn", "nt from rows"};
  for (int layout = 0; layout < 4; ++layout) {
    std::vector<float> hw(M * N, 0.5f), emu(M * N, 0.5f);
    for (Impl impl : {Impl::Hardware, Impl::Emulated}) {
      float* y = impl == Impl::Hardware ? hw.data() : emu.data();
      switch (layout) {
        case 0: gemm_bf16_tiles::nt(impl, M, N, K, x.data(), K, wt.data(), K, y, N, true); break;
        case 1: gemm_bf16_tiles::nn(impl, M, N, K, x.data(), K, wn.data(), N, y, N, true); break;
        case 2: gemm_bf16_tiles::split_x_nn(impl, M, N, K, xs.data(), K, wn.data(), N, y, N, true); break;
        default: gemm_bf16_tiles::nt_rows(impl, M, N, K, x.data(), K, fill, y, N, true); break;
      }
    }
    for (int64_t i = 0; i < M * N; ++i)
      if (!(std::fabs(hw[i] - emu[i]) <= 1e-4f * static_cast<float>(K))) {
        std::fprintf(stderr,
                     "warning: the AMX bf16 GEMM disagreed with its emulation (%s, element %lld: %g vs %g); "
                     "bf16 products run on %s instead\n",
                     names[layout], static_cast<long long>(i), static_cast<double>(hw[i]), static_cast<double>(emu[i]),
                     sgemm_backend_name());
        return false;
      }
  }
  return true;
}

}  // namespace

namespace {
// Where the bf16 products run (forced emulation aside).
enum class Engine { Float32, Amx, Avx512Bf16 };
Engine engine() {
  // (QLORA_SIMD is read at every call, as the other kernel choices do; the AMX check runs on
  // the first call that may use the tiles.)
  if (amx_tiles_enabled()) {
    static const bool ok = hardware_agrees_with_emulation();
    if (ok) return Engine::Amx;
  }
  if (simd_level() >= SimdLevel::AVX512) return Engine::Avx512Bf16;  // (AVX512 includes AVX512_BF16)
  return Engine::Float32;
}
bool forced() { return gemm_bf16_tiles::g_forced || env_forced(); }
}  // namespace

bool gemm_bf16_fast() { return forced() || engine() != Engine::Float32; }

bool gemm_bf16_split_x_fast() { return forced() || engine() == Engine::Amx; }

const char* gemm_bf16_backend_name() {
  if (forced()) return "emulated bf16 tiles (tests)";
  switch (engine()) {
    case Engine::Amx: return "AMX bf16 tiles";
    case Engine::Avx512Bf16: return "AVX-512 BF16 dot products";
    case Engine::Float32: break;
  }
  return sgemm_backend_name();
}

namespace {
// The product on the bf16 unit, when there is one (true: done).
bool run_on_engine(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const BSource& src, float* y,
                   int64_t ldy, bool accumulate) {
  switch (engine()) {
    case Engine::Amx: gemm_bf16_detail::amx_gemm(M, N, K, x, ldx, src, y, ldy, accumulate, false); return true;
    case Engine::Avx512Bf16:
      gemm_bf16_detail::dpbf16_gemm(M, N, K, x, ldx, src, y, ldy, accumulate, false);
      return true;
    case Engine::Float32: break;
  }
  return false;
}

// A product of a float32 matrix W: forced emulation, else the bf16 engine (the split product
// only on AMX: on AVX-512 dot products its doubled work is slower than the float32 GEMM,
// bench/RESULTS.md session 12), else the float32 GEMM.
void matrix_product(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, bool nt,
                    float* y, int64_t ldy, bool accumulate, bool split_x) {
  const BSource src = gemm_bf16_tiles::matrix(w, ldw, nt);
  if (run_forced(M, N, K, x, ldx, src, y, ldy, accumulate, split_x)) return;
  if (split_x && engine() == Engine::Amx)
    gemm_bf16_detail::amx_gemm(M, N, K, x, ldx, src, y, ldy, accumulate, true);
  else if (split_x || !run_on_engine(M, N, K, x, ldx, src, y, ldy, accumulate))
    (nt ? sgemm_nt : sgemm_nn)(M, N, K, x, ldx, w, ldw, y, ldy, accumulate);
}
}  // namespace

void gemm_bf16_nt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
                  int64_t ldy, bool accumulate) {
  matrix_product(M, N, K, x, ldx, w, ldw, /*nt=*/true, y, ldy, accumulate, /*split_x=*/false);
}

void gemm_bf16_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
                  int64_t ldy, bool accumulate) {
  matrix_product(M, N, K, x, ldx, w, ldw, /*nt=*/false, y, ldy, accumulate, /*split_x=*/false);
}

void gemm_bf16_split_x_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                          float* y, int64_t ldy, bool accumulate) {
  matrix_product(M, N, K, x, ldx, w, ldw, /*nt=*/false, y, ldy, accumulate, /*split_x=*/true);
}

void gemm_bf16_rounded_x_nn(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                            float* y, int64_t ldy, bool accumulate) {
  const BSource src = gemm_bf16_tiles::matrix(w, ldw, /*nt=*/false);
  if (forced()) {  // (the emulated tiles round X as they pack it; only W is promised bf16)
    ++gemm_bf16_tiles::g_calls;
    gemm_bf16_tiles::g_inexact += gemm_bf16_tiles::count_inexact(w, K, N, ldw);
    gemm_bf16_detail::tile_gemm<gemm_bf16_detail::TileBlocks<gemm_bf16_detail::EmuTiles>>(M, N, K, x, ldx, src, y,
                                                                                          ldy, accumulate);
    return;
  }
  if (run_on_engine(M, N, K, x, ldx, src, y, ldy, accumulate)) return;
  std::vector<float> xr(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xr[static_cast<size_t>(m * K + k)] = bf16_to_f32(f32_to_bf16(x[m * ldx + k]));
  sgemm_nn(M, N, K, xr.data(), K, w, ldw, y, ldy, accumulate);
}

void pack_bf16_panel_scalar(const uint16_t* w, int64_t ldw, int64_t K, int64_t N, int64_t n0, int64_t Kp,
                            uint16_t* b) {
  std::memset(b, 0, static_cast<size_t>(Kp / gemm_bf16_detail::kK * gemm_bf16_detail::kBPanelPerK) * sizeof(uint16_t));
  const int64_t nn = std::min<int64_t>(32, N - n0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < nn; ++c)
      b[(k / 32) * 1024 + (c / 16) * 512 + ((k % 32) / 2) * 32 + 2 * (c % 16) + k % 2] = w[k * ldw + n0 + c];
}

void pack_bf16_panel(const uint16_t* w, int64_t ldw, int64_t K, int64_t N, int64_t n0, int64_t Kp, uint16_t* b) {
  if (simd_level() >= SimdLevel::AVX512)
    gemm_bf16_detail::pack_bf16_panel_avx512(w, ldw, K, N, n0, Kp, b);
  else
    pack_bf16_panel_scalar(w, ldw, K, N, n0, Kp, b);
}

void gemm_bf16_nn_panels(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx,
                         const std::function<void(int64_t, int64_t, uint16_t*)>& panel, float* y, int64_t ldy,
                         bool accumulate) {
  check(gemm_bf16_fast(), "gemm_bf16_nn_panels", "needs a bf16 unit (gemm_bf16_fast)");
  BSource src;
  src.nt = false;
  src.panel = &panel;
  const bool split = gemm_bf16_split_x_fast();
  if (forced()) {  // (the panels are bf16 by type: nothing to count)
    ++gemm_bf16_tiles::g_calls;
    gemm_bf16_detail::tile_gemm<gemm_bf16_detail::TileBlocks<gemm_bf16_detail::EmuTiles>>(M, N, K, x, ldx, src, y,
                                                                                          ldy, accumulate, split);
  } else if (engine() == Engine::Amx) {
    gemm_bf16_detail::amx_gemm(M, N, K, x, ldx, src, y, ldy, accumulate, split);
  } else {
    gemm_bf16_detail::dpbf16_gemm(M, N, K, x, ldx, src, y, ldy, accumulate, /*split_x=*/false);
  }
}

void gemm_bf16_nt_rows_bf16(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx,
                            const std::function<void(int64_t, int64_t, uint16_t*, int64_t)>& fill_bf16, float* y,
                            int64_t ldy, bool accumulate) {
  check(gemm_bf16_fast(), "gemm_bf16_nt_rows_bf16", "needs a bf16 unit (gemm_bf16_fast)");
  BSource src;
  src.fill_bf16 = &fill_bf16;
  if (forced()) {  // (the rows are bf16 by type: only X is counted)
    ++gemm_bf16_tiles::g_calls;
    gemm_bf16_tiles::g_inexact += gemm_bf16_tiles::count_inexact(x, M, K, ldx);
    gemm_bf16_detail::tile_gemm<gemm_bf16_detail::TileBlocks<gemm_bf16_detail::EmuTiles>>(M, N, K, x, ldx, src, y,
                                                                                          ldy, accumulate);
    return;
  }
  run_on_engine(M, N, K, x, ldx, src, y, ldy, accumulate);
}

void gemm_bf16_nt_rows(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx,
                       const std::function<void(int64_t, int64_t, float*)>& fill, float* y, int64_t ldy,
                       bool accumulate) {
  BSource src;
  src.fill = &fill;
  if (run_forced(M, N, K, x, ldx, src, y, ldy, accumulate)) return;
  if (run_on_engine(M, N, K, x, ldx, src, y, ldy, accumulate)) return;
  // Without a bf16 engine: slabs of rows (at most 2 MiB) through the float32 GEMM.
  const int64_t slab = std::clamp<int64_t>((int64_t{1} << 19) / std::max<int64_t>(K, 1), 1, std::max<int64_t>(N, 1));
  std::vector<float> buf(static_cast<size_t>(slab * K));
  for (int64_t r0 = 0; r0 < N; r0 += slab) {
    const int64_t r1 = std::min(N, r0 + slab);
    fill(r0, r1, buf.data());
    sgemm_nt(M, r1 - r0, K, x, ldx, buf.data(), K, y + r0, ldy, accumulate);
  }
}

}  // namespace qlora
