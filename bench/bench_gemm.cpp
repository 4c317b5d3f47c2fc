// fp32 GEMM on SmolLM2-135M's training shapes: our gemm_rows path ("ours": the panel loops
// DenseWeight::matmul and matmul_backward_input ran on it, now sgemm_fallback in
// model/gemm.h) against oneDNN (dnnl_sgemm and the matmul primitive) and OpenBLAS
// (cblas_sgemm), at 1 and 2 threads; "qlora_sgemm" is model/gemm.h as built (oneDNN when
// found) and "qlora_nf4" the 4-bit QuantLinear forward on it (dequantization included).
// This measurement chose oneDNN for model/gemm.h. The "llama1b/" rows run Llama 1.1B's
// block shapes at 256 tokens, where qlora_nf4 is the product as training runs it (forward:
// dequantized slabs; backward: the CPU backend's dequantized tiles at a padded stride), and
// qlora_nf4_bf16 the same products in bf16 compute (on AMX tiles where the CPU has them, whose
// GEMM alone is "bf16_tiles", registered only there). OpenBLAS is measured when
// libopenblas-dev is installed (it is not a dependency of the library).
//
//   fwd:  Y (T, N) = X (T, K) · Wᵀ, W (N, K) row-major   (Linear forward, lm_head logits)
//   bwd:  dX (T, K) += dY (T, N) · W                     (Linear backward through the weight)
//
// OpenBLAS picks its kernels when the library loads: Debian's build misdetects this CPU
// and runs SSE3 kernels unless OPENBLAS_CORETYPE is in the process environment, so run:
//
//   OMP_WAIT_POLICY=passive OPENBLAS_CORETYPE=SkylakeX build-gemm/bench_gemm
//     --benchmark_enable_random_interleaving=true --benchmark_repetitions=3
//     --benchmark_min_time=0.3 --benchmark_report_aggregates_only=true
//
// (random interleaving spreads each benchmark's repetitions over the whole run, so a
// noisy neighbour hits every contender alike). The context line "openblas_core" tells
// which kernels OpenBLAS chose. Every contender is checked once against our result.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "base/float_formats.h"
#include "model/gemm.h"
#include "model/gemm_bf16.h"
#include "model/gemm_bf16_tiles.h"
#include "base/cpu_features.h"
#include "model/backend.h"
#include "model/quant_linear.h"
#include "lora/lora.h"

#ifdef QLORA_BENCH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif
#ifdef QLORA_BENCH_OPENBLAS
#include <cblas.h>
#endif

namespace {

using namespace qlora;

enum class Op { Fwd, Bwd };
enum class Impl { Ours, OursNf4, OursNf4Bf16, Bf16Tiles, Bf16Dot, Bf16DotSplit, Sgemm, DnnlSgemm, DnnlMatmul, OpenBlas };
const char* impl_name(Impl i) {
  switch (i) {
    case Impl::Ours: return "ours";
    case Impl::OursNf4: return "qlora_nf4";
    case Impl::OursNf4Bf16: return "qlora_nf4_bf16";
    case Impl::Bf16Tiles: return "bf16_tiles";
    case Impl::Bf16Dot: return "bf16_avx512dot";
    case Impl::Bf16DotSplit: return "bf16_avx512dot_split";
    case Impl::Sgemm: return "qlora_sgemm";
    case Impl::DnnlSgemm: return "dnnl_sgemm";
    case Impl::DnnlMatmul: return "dnnl_matmul";
    case Impl::OpenBlas: return "openblas";
  }
  return "?";
}

std::vector<float> randn(size_t n, uint32_t seed, float scale) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// One weight per (N, K), made once; the benchmark's thread count never changes it.
struct Weights {
  std::vector<float> w;
  DenseWeight dense;
  QuantLinear nf4, nf4_bf16;  // (the second computes in bf16: AMX tiles where the CPU has them)
};
const Weights& weights(int64_t N, int64_t K) {
  static std::map<std::pair<int64_t, int64_t>, Weights> cache;
  auto it = cache.find({N, K});
  if (it != cache.end()) return it->second;
  Weights& w = cache[{N, K}];
  w.w = randn(static_cast<size_t>(N * K), 1, 0.02f);
  w.dense = DenseWeight(w.w.data(), N, K, ComputeDType::F32);
  QuantOptions q;
  q.double_quant = true;
  w.nf4 = QuantLinear(w.w.data(), N, K, q, ComputeDType::F32);
  w.nf4_bf16 = QuantLinear(w.w.data(), N, K, q, ComputeDType::BF16);
  return w;
}

#ifdef QLORA_BENCH_DNNL
// Matmul primitives cached per (op, T, N, K, threads): creation is far slower than a call,
// and the primitive's blocking is chosen for the thread count it was created under.
struct DnnlMatmul {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::map<std::tuple<int, int64_t, int64_t, int64_t, int>, dnnl::matmul> prims;

  void run(Op op, const float* a, const float* w, float* c, int64_t T, int64_t N, int64_t K) {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    // fwd: (T, K) x Wᵀ (K, N) -> (T, N); W (N, K) row-major is Wᵀ with strides {1, K}.
    // bwd: (T, N) x W (N, K) -> (T, K), accumulated (post-op sum).
    const int64_t inner = op == Op::Fwd ? K : N, outer = op == Op::Fwd ? N : K;
    dnnl::memory::desc src({T, inner}, dt::f32, tag::ab);
    dnnl::memory::desc wei({inner, outer}, dt::f32,
                           op == Op::Fwd ? dnnl::memory::dims{1, K} : dnnl::memory::dims{K, 1});
    dnnl::memory::desc dst({T, outer}, dt::f32, tag::ab);
    const auto key = std::make_tuple(static_cast<int>(op), T, N, K, omp_get_max_threads());
    auto it = prims.find(key);
    if (it == prims.end()) {
      dnnl::primitive_attr attr;
      if (op == Op::Bwd) {
        dnnl::post_ops po;
        po.append_sum(1.0f);
        attr.set_post_ops(po);
      }
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, eng);
      it = prims.emplace(key, dnnl::matmul(pd)).first;
    }
    dnnl::memory ms(src, eng, const_cast<float*>(a)), mw(wei, eng, const_cast<float*>(w)), md(dst, eng, c);
    it->second.execute(strm, {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}});
    strm.wait();
  }
};
DnnlMatmul& dnnl_matmul() {
  static DnnlMatmul m;
  return m;
}
const char* dnnl_impl_name(Op op, int64_t T, int64_t N, int64_t K) {
  auto& m = dnnl_matmul();
  const auto key = std::make_tuple(static_cast<int>(op), T, N, K, omp_get_max_threads());
  auto it = m.prims.find(key);
  if (it == m.prims.end()) return "?";
  const char* s = nullptr;
  dnnl_primitive_desc_query(it->second.get_primitive_desc(), dnnl_query_impl_info_str, 0, &s);
  return s ? s : "?";
}
#endif

// Runs one product with `impl`: fwd y = x Wᵀ (overwrites y), bwd y += x W.
void run(Impl impl, Op op, const Weights& W, const float* x, float* y, int64_t T, int64_t N, int64_t K) {
  const float* w = W.w.data();
  switch (impl) {
    case Impl::Ours:  // our gemm_rows kernels, the same panel loops the callers ran before
      if (op == Op::Fwd)
        sgemm_fallback::nt(T, N, K, x, K, w, K, y, N, false);
      else
        sgemm_fallback::nn(T, K, N, x, N, w, K, y, K, true);
      return;
    case Impl::OursNf4:  // the 4-bit product as training runs it (dequantize + the GEMM above)
      if (op == Op::Fwd) {
        W.nf4.forward(y, x, T);
      } else {  // the backend's backward through the frozen weight, a tile of rows at a time
        thread_local std::vector<float> tile;
        tile.resize(static_cast<size_t>(linear_backward_tile_floats(K, N)));
        cpu_backend().linear_backward(y, x, nullptr, T, W.nf4, nullptr, nullptr, tile.data(), LoraScratch{});
      }
      return;
    case Impl::OursNf4Bf16:  // the bf16 compute path (its forward input rounded as the model rounds it)
      if (op == Op::Fwd) {
        W.nf4_bf16.forward(y, x, T);
      } else {
        thread_local std::vector<float> tile;
        tile.resize(static_cast<size_t>(linear_backward_tile_floats(K, N)));
        cpu_backend().linear_backward(y, x, nullptr, T, W.nf4_bf16, nullptr, nullptr, tile.data(), LoraScratch{});
      }
      return;
    case Impl::Bf16Tiles:  // model/gemm_bf16.h (operands rounded to bf16 on the way in)
      if (op == Op::Fwd)
        gemm_bf16_nt(T, N, K, x, K, w, K, y, N, false);
      else
        gemm_bf16_nn(T, K, N, x, N, w, K, y, K, true);
      return;
    case Impl::Bf16Dot:  // the tile driver on AVX-512 BF16 dot products (operands rounded to bf16)
      if (op == Op::Fwd)
        gemm_bf16_tiles::nt(gemm_bf16_tiles::Impl::Avx512Bf16, T, N, K, x, K, w, K, y, N, false);
      else
        gemm_bf16_tiles::nn(gemm_bf16_tiles::Impl::Avx512Bf16, T, K, N, x, N, w, K, y, K, true);
      return;
    case Impl::Bf16DotSplit:  // the input gradient with X split in two bf16 parts (float32 X kept)
      gemm_bf16_tiles::split_x_nn(gemm_bf16_tiles::Impl::Avx512Bf16, T, K, N, x, N, w, K, y, K, true);
      return;
    case Impl::Sgemm:
      if (op == Op::Fwd)
        sgemm_nt(T, N, K, x, K, w, K, y, N, false);
      else
        sgemm_nn(T, K, N, x, N, w, K, y, K, true);
      return;
#ifdef QLORA_BENCH_DNNL
    case Impl::DnnlSgemm:
      if (op == Op::Fwd)
        dnnl_sgemm('N', 'T', T, N, K, 1.f, x, K, w, K, 0.f, y, N);
      else
        dnnl_sgemm('N', 'N', T, K, N, 1.f, x, N, w, K, 1.f, y, K);
      return;
    case Impl::DnnlMatmul: dnnl_matmul().run(op, x, w, y, T, N, K); return;
#endif
#ifdef QLORA_BENCH_OPENBLAS
    case Impl::OpenBlas:
      if (op == Op::Fwd)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.f, x, K, w, K, 0.f, y, N);
      else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, K, N, 1.f, x, N, w, K, 1.f, y, K);
      return;
#endif
    default: throw std::runtime_error("contender not built");
  }
}

void set_threads(Impl impl, int threads) {
  omp_set_num_threads(threads);
#ifdef QLORA_BENCH_OPENBLAS
  // OpenBLAS keeps its own pthread pool: only the contender that uses it gets >1 thread,
  // so its idle workers never compete with OpenMP's during the other contenders.
  openblas_set_num_threads(impl == Impl::OpenBlas ? threads : 1);
#else
  (void)impl;
#endif
}

void BM_Gemm(benchmark::State& state, Impl impl, Op op, int64_t T, int64_t N, int64_t K, int threads) {
  set_threads(impl, threads);
  const Weights& W = weights(N, K);
  const int64_t in = op == Op::Fwd ? K : N, out = op == Op::Fwd ? N : K;
  auto x = randn(static_cast<size_t>(T * in), 2, 1.0f);
  const bool bf16 = impl == Impl::OursNf4Bf16 || impl == Impl::Bf16Tiles || impl == Impl::Bf16Dot ||
                    impl == Impl::Bf16DotSplit;
  if (impl == Impl::OursNf4Bf16 && op == Op::Fwd)  // the model rounds a bf16 Linear's input (not its gradient)
    for (float& v : x) v = bf16_to_f32(f32_to_bf16(v));
  std::vector<float> y(static_cast<size_t>(T * out), 0.f);
  // Check once against ours (float32 sums in another order: relative error ~ sqrt(K) ulp;
  // 1e-3 of the row's scale catches a wrong layout, not rounding).
  {
    std::vector<float> ref(y.size(), 0.f);
    if ((impl == Impl::OursNf4 || impl == Impl::OursNf4Bf16) && op == Op::Fwd)
      W.nf4.forward(ref.data(), x.data(), T);  // the float32 product of the 4-bit weight
    else if (impl == Impl::OursNf4 || impl == Impl::OursNf4Bf16) {
      std::vector<float> w(static_cast<size_t>(N * K));
      W.nf4.dequantize_rows(0, N, w.data());
      sgemm_fallback::nn(T, K, N, x.data(), N, w.data(), K, ref.data(), K, true);
    } else
      run(Impl::Ours, op, W, x.data(), ref.data(), T, N, K);
    run(impl, op, W, x.data(), y.data(), T, N, K);
    double err = 0, scale = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      err = std::max(err, static_cast<double>(std::fabs(y[i] - ref[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(ref[i])));
    }
    // (bf16 contenders round the operands: 2^-8 relative each, so a looser bound)
    if (err > (bf16 ? 2e-2 : 1e-3) * scale) {
      state.SkipWithError(("result differs from ours: max err " + std::to_string(err)).c_str());
      return;
    }
  }
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    run(impl, op, W, x.data(), y.data(), T, N, K);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double cpu = process_cpu_seconds() - cpu0;
  const double flops = 2.0 * static_cast<double>(T * N * K);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  // Per CPU-second of the whole process (all threads): the kernel's efficiency on the
  // cores it actually got, which neighbours on a shared machine disturb far less than
  // the wall-clock rate. (OpenMP waits passively under OMP_WAIT_POLICY=passive, so idle
  // threads add little; spinning threads would show up here as lost efficiency.)
  if (cpu > 0) state.counters["FLOP/cpu-s"] = flops * static_cast<double>(state.iterations()) / cpu;
#ifdef QLORA_BENCH_DNNL
  if (impl == Impl::DnnlMatmul) state.SetLabel(dnnl_impl_name(op, T, N, K));
#endif
  set_threads(Impl::Ours, 1);
}

// The bf16 tile GEMM's packing (model/gemm_bf16_tiles.h) on Llama 1.1B's shapes, one thread,
// scalar reference against AVX2 (items/s: elements per second). On an AMX CPU every weight
// element is packed once per product, so its cost is to be set against the tiles' ~0.15 ns of
// work per element at 256 tokens:
//   weights_nt / weights_nn  a float32 2048 x 2048 W as B panels (nn at the backward tiles'
//                            padded stride, sgemm_padded_ld): the matrix products
//   nf4_panels               what the forward does per 32 rows of a bf16 4-bit W: dequantize
//                            them (rounded to bf16) into a cache-sized buffer, then convert
//                            them into the A operand (tile_gemm_w_rows: no transpose)
//   activations              256 tokens x 2048 as A rows (the matrix products' X)
//   activations_vnni         the same as B panels: the forward's X, packed once per product
enum class PackBench { WeightsNt, WeightsNn, Nf4Panels, Activations, ActivationsVnni };
const QuantLinear& weights_nf4_bf16(int64_t N, int64_t K);

void BM_PackBf16(benchmark::State& state, PackBench what, bool avx2) {
  using namespace gemm_bf16_detail;
  omp_set_num_threads(1);
  const int64_t N = 2048, K = 2048, M = 256, Kp = round_up(K, kK);
  const auto src = randn(static_cast<size_t>(std::max(N, M) * (K + 16)), 3, 1.0f);  // (room for a padded stride)
  std::vector<uint16_t> out(static_cast<size_t>(std::max(Kp / kK * kBPanelPerK, M * Kp)));
  const QuantLinear& q = weights_nf4_bf16(N, K);
  std::vector<float> panel(static_cast<size_t>(kBlock * K));
  const auto pack_b = avx2 ? pack_b_avx2 : pack_b_scalar;
  const auto pack_a = avx2 ? pack_a_rows_avx2 : pack_a_rows_scalar;
  for (auto _ : state) {
    switch (what) {
      case PackBench::WeightsNt:
        for (int64_t n0 = 0; n0 < N; n0 += kBlock) pack_b(src.data(), K, true, N, K, n0, Kp, out.data());
        break;
      case PackBench::WeightsNn:
        for (int64_t n0 = 0; n0 < N; n0 += kBlock)
          pack_b(src.data(), sgemm_padded_ld(N), false, N, K, n0, Kp, out.data());
        break;
      case PackBench::Nf4Panels:
        for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
          q.dequantize_rows(n0, n0 + kBlock, panel.data());
          pack_a(panel.data(), K, kBlock, K, Kp, 0, kBlock, out.data(), nullptr);
        }
        break;
      case PackBench::Activations: pack_a(src.data(), K, M, K, Kp, 0, M, out.data(), nullptr); break;
      case PackBench::ActivationsVnni:
        for (int64_t m0 = 0; m0 < M; m0 += kBlock) pack_b(src.data(), K, true, M, K, m0, Kp, out.data());
        break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  const bool weights = what == PackBench::WeightsNt || what == PackBench::WeightsNn || what == PackBench::Nf4Panels;
  state.SetItemsProcessed(state.iterations() * (weights ? N * K : M * K));
}

// The bf16 4-bit weight of a Llama 1.1B shape, made once.
const QuantLinear& weights_nf4_bf16(int64_t N, int64_t K) { return weights(N, K).nf4_bf16; }

int register_all() {
  for (bool avx2 : {false, true}) {
    if (avx2 && cpu_simd_level() < SimdLevel::AVX2) continue;
    const std::pair<PackBench, const char*> packs[] = {{PackBench::WeightsNt, "weights_nt/2048x2048"},
                                                       {PackBench::WeightsNn, "weights_nn/2048x2048"},
                                                       {PackBench::Nf4Panels, "nf4_panels/2048x2048"},
                                                       {PackBench::Activations, "activations/256x2048"},
                                                       {PackBench::ActivationsVnni, "activations_vnni/256x2048"}};
    for (auto [what, name] : packs)
      benchmark::RegisterBenchmark((std::string("bf16_pack/") + name + (avx2 ? "/avx2" : "/scalar")).c_str(),
                                   BM_PackBf16, what, avx2)
          ->Unit(benchmark::kMillisecond);
  }
  benchmark::AddCustomContext("qlora_sgemm", sgemm_backend_name());
  benchmark::AddCustomContext("qlora_bf16_gemm", gemm_bf16_backend_name());
  // The block Linears and the lm_head, then LoRA's factors at r = 16 (A (16, in), B (out, 16)).
  const std::pair<int64_t, int64_t> shapes[] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536}, {49152, 576},
                                                {16, 576},  {16, 1536}, {576, 16},   {1536, 16}};
  std::vector<Impl> impls = {Impl::Ours, Impl::Sgemm};
#ifdef QLORA_BENCH_DNNL
  impls.push_back(Impl::DnnlSgemm);
  impls.push_back(Impl::DnnlMatmul);
#endif
#ifdef QLORA_BENCH_OPENBLAS
  impls.push_back(Impl::OpenBlas);
#endif
  // Llama 1.1B's block shapes (hidden 2048, ffn 5632, kv 256) at one 256-token sequence.
  const std::pair<int64_t, int64_t> shapes_1b[] = {{2048, 2048}, {256, 2048}, {5632, 2048}, {2048, 5632}};
  for (int threads : {1, 2})
    for (Op op : {Op::Fwd, Op::Bwd})
      for (auto [N, K] : shapes_1b)
        for (Impl impl : [&] {
               std::vector<Impl> l = {Impl::OursNf4, Impl::Sgemm};
               if (impls.size() > 2) l.push_back(impls[2]);
               // The bf16 path: the forward as the bf16 model runs it, and the tile GEMM alone
               // where the CPU has AMX (bench/RESULTS.md: issue 14).
               l.push_back(Impl::OursNf4Bf16);
               if (gemm_bf16_fast()) l.push_back(Impl::Bf16Tiles);
               // The same driver on AVX-512 BF16 dot products, where the CPU has them.
               if (simd_level() >= SimdLevel::AVX512) {
                 l.push_back(Impl::Bf16Dot);
                 if (op == Op::Bwd) l.push_back(Impl::Bf16DotSplit);
               }
               return l;
             }()) {
          const std::string name = std::string("llama1b/") + (op == Op::Fwd ? "fwd" : "bwd") + "/T256/N" +
                                   std::to_string(N) + "/K" + std::to_string(K) + "/th" + std::to_string(threads) +
                                   "/" + impl_name(impl);
          benchmark::RegisterBenchmark(name.c_str(), BM_Gemm, impl, op, 256, N, K, threads)
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
  for (int threads : {1, 2})
    for (int64_t T : {256, 512})
      for (Op op : {Op::Fwd, Op::Bwd})
        for (auto [N, K] : shapes) {
          std::vector<Impl> list = impls;
          if (op == Op::Fwd && N != 49152 && N > 16 && K > 16) list.insert(list.begin() + 1, Impl::OursNf4);
          for (Impl impl : list) {
            const std::string name = std::string(op == Op::Fwd ? "fwd" : "bwd") + "/T" + std::to_string(T) + "/N" +
                                     std::to_string(N) + "/K" + std::to_string(K) + "/th" +
                                     std::to_string(threads) + "/" + impl_name(impl);
            benchmark::RegisterBenchmark(name.c_str(), BM_Gemm, impl, op, T, N, K, threads)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
          }
        }
  return 0;
}
const int registered = register_all();

}  // namespace

BENCHMARK_MAIN();
