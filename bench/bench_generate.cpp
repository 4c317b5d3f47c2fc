// Inference speed: the fused 4-bit GEMV per SIMD level (packed-weight bytes per second),
// the two multi-token strategies (fused multi-token GEMV vs dequantize-a-panel GEMM) that
// QuantLinear chooses between by token count, and whole-model decode / prompt speed on
// stories260K and SmolLM2-135M (when scripts/fetch_model.sh has fetched it).
//
//   build/bench_generate --benchmark_min_time=0.5s
//   OMP_NUM_THREADS=1 build/bench_generate --benchmark_filter=Strategy
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <tuple>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/float_formats.h"
#include "formats/model_loader.h"
#include "model/block_row_kernels.h"
#include "model/linear_kernels.h"
#include "model/model.h"
#include "model/quant_linear.h"
#include "quant/quant_state.h"

namespace {

using namespace qlora;

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

struct Q4 {
  Quantized4bit q;
  kernels::Q4Matrix m;
};

// variant 0: NF4 blocks of 64, float32 absmax; 1: the same double-quantized (QLoRA's
// weights); 2: a GGUF's Q4_1 kept as stored (formats/ggml_as_4bit.h; the default model's
// linears): blocks of 32, the code book 0..15, a float32 scale and minimum each; 3: a GGUF's
// IQ4_NL kept as stored: blocks of 32, a table code book (NF4's here), a float32 scale each;
// 4: variant 2 with its scales and minimums in fp16, as a GGUF's Q4_1 is now kept (the default
// model's linears since session 31).
std::unique_ptr<Q4> make_q4(int64_t rows, int64_t cols, int variant) {
  auto w = randn(rows * cols, 1, 0.02f);
  auto r = std::make_unique<Q4>();
  const bool dq = variant == 1;
  r->q = quantize_tensor_4bit(w.data(), {rows, cols}, QuantType::NF4, variant >= 2 ? 32 : 64, dq, ComputeDType::F32);
  if (variant == 2 || variant == 4) {
    const auto mins = randn(static_cast<size_t>(rows * cols / 32), 3, 0.01f);
    r->q.state.block_min.assign(mins.begin(), mins.end());
    for (int i = 0; i < 16; ++i) r->q.state.code[static_cast<size_t>(i)] = static_cast<float>(i);
  }
  if (variant == 4) {
    QuantState& s = r->q.state;
    for (float a : s.absmax) s.absmax_f16.push_back(f32_to_fp16(a));
    for (float m : s.block_min) s.block_min_f16.push_back(f32_to_fp16(m));
    s.absmax.clear();
    s.block_min.clear();
  }
  r->m = q4_matrix_view(r->q, rows, cols, ComputeDType::F32);
  return r;
}

const SimdLevel kLevels[] = {SimdLevel::Scalar, SimdLevel::AVX2, SimdLevel::AVX512};

// The SIMD level named by arg0; false (the benchmark skipped, saying why) when the CPU lacks it.
bool level_arg(benchmark::State& st, SimdLevel& lv) {
  lv = kLevels[st.range(0)];
  if (static_cast<int>(lv) <= static_cast<int>(cpu_simd_level())) return true;
  st.SkipWithError("level not supported by this CPU");
  return false;
}

// Single-threaded fused GEMV: arg0 = SIMD level, arg1/2 = rows/cols, arg3 = make_q4's variant,
// arg4 = copies of the weights (codes and constants) cycled through (200 copies of 1536 x 576
// stream from memory as decoding does; 1 stays in L2/L3). Bytes are the packed codes only.
void BM_GemvQ4(benchmark::State& st) {
  SimdLevel lv;
  if (!level_arg(st, lv)) return;
  const int64_t rows = st.range(1), cols = st.range(2), copies = st.range(4);
  auto q = make_q4(rows, cols, static_cast<int>(st.range(3)));
  const std::vector<Quantized4bit> qs(copies, q->q);
  std::vector<kernels::Q4Matrix> views;
  for (const Quantized4bit& one : qs) views.push_back(q4_matrix_view(one, rows, cols, ComputeDType::F32));
  auto x = randn(cols, 2);
  std::vector<float> y(rows);
  const auto& k = kernels::linear_kernels_for(lv);
  int64_t c = 0;
  for (auto _ : st) {
    k.gemv_q4(views[c], x.data(), y.data(), 0, rows);
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(st.iterations() * rows * cols / 2);
  st.SetLabel(simd_level_name(lv));
}
BENCHMARK(BM_GemvQ4)
    ->ArgsProduct({{0, 1, 2}, {1536}, {576}, {0, 1, 2, 3, 4}, {1}})
    ->ArgsProduct({{1, 2}, {1536}, {576}, {1, 2, 3, 4}, {200}})
    ->ArgsProduct({{1, 2}, {4096}, {4096}, {0}, {1}})
    ->Unit(benchmark::kMicrosecond);

// The 8-bit-activation GEMVs (--int8-activations), single-threaded: arg0 = SIMD level (on
// AVX-512 the VNNI kernels where the CPU has them), arg1/2 = rows/cols, arg3 = make_q4's variant,
// arg4 = copies of the weights cycled through. One copy of 1536 x 576 stays in L2; 200 copies of
// it (SmolLM2's MLP shape, 84 MiB) and 12 of 4096 x 4096 (96 MiB of packed weights) and 3 of the SmolLM2 head (49152 x 576, 85 MiB) stream
// from memory, as decoding does (a 32 MiB L3 would hold one copy).
void BM_GemvQ4I8(benchmark::State& st) {
  SimdLevel lv;
  if (!level_arg(st, lv)) return;
  const int64_t rows = st.range(1), cols = st.range(2), copies = st.range(4);
  auto q = make_q4(rows, cols, static_cast<int>(st.range(3)));
  std::vector<std::vector<uint8_t>> packed(copies, q->q.packed);
  auto x = randn(cols, 2);
  std::vector<int8_t> xq(cols);
  std::vector<float> xd(cols / 32), y(rows);
  const auto& k = kernels::linear_kernels_for(lv);
  k.quantize_x_q8(x.data(), cols, xq.data(), xd.data());
  int64_t c = 0;
  for (auto _ : st) {
    kernels::Q4Matrix m = q->m;
    m.packed = packed[c].data();
    c = (c + 1) % copies;
    k.gemv_q4_i8(m, xq.data(), xd.data(), y.data(), 0, rows);
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(st.iterations() * rows * cols / 2);
  st.SetLabel(simd_level_name(lv));
}
BENCHMARK(BM_GemvQ4I8)
    ->ArgsProduct({{1, 2}, {1536}, {576}, {0, 1}, {1}})
    ->ArgsProduct({{1, 2}, {1536}, {576}, {1, 2, 4}, {200}})
    ->ArgsProduct({{1, 2}, {4096}, {4096}, {1}, {12}})
    ->Unit(benchmark::kMicrosecond);

// `copies` copies of one random (rows, cols) matrix of 8-bit codes in -127..127 (the Q8_0
// benchmarks' weights; more copies than L3 holds stream from memory).
std::vector<std::vector<int8_t>> q8_copies(int64_t rows, int64_t cols, int64_t copies) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> code(-127, 127);
  std::vector<int8_t> w(rows * cols);
  for (auto& v : w) v = static_cast<int8_t>(code(rng));
  return std::vector<std::vector<int8_t>>(copies, w);
}

void BM_GemvQ8I8(benchmark::State& st) {
  SimdLevel lv;
  if (!level_arg(st, lv)) return;
  const int64_t rows = st.range(1), cols = st.range(2), copies = st.range(3);
  const std::vector<std::vector<int8_t>> ws = q8_copies(rows, cols, copies);
  const auto scales = randn(rows * cols / 32, 6, 0.01f), x = randn(cols, 7);
  std::vector<int8_t> xq(cols);
  std::vector<float> xd(cols / 32), y(rows);
  const auto& k = kernels::linear_kernels_for(lv);
  k.quantize_x_q8(x.data(), cols, xq.data(), xd.data());
  int64_t c = 0;
  for (auto _ : st) {
    k.gemv_q8_i8(ws[c].data(), scales.data(), cols, xq.data(), xd.data(), y.data(), 0, rows);
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(st.iterations() * (rows * cols + rows * cols / 32 * 4));
  st.SetLabel(simd_level_name(lv));
}
BENCHMARK(BM_GemvQ8I8)
    ->ArgsProduct({{1, 2}, {1536}, {576}, {1}})
    ->ArgsProduct({{1, 2}, {49152}, {576}, {3}})
    ->ArgsProduct({{1}, {576}, {1536}, {1, 200}})  // (BM_GemvBlocksI8's shape)
    ->Unit(benchmark::kMicrosecond);

// The float-activation 8-bit GEMV (a GGUF's Q8_0 head as decoding runs it by default), single-
// threaded: arg0 = SIMD level, arg1/2 = rows/cols, arg3 = copies cycled through (3 of SmolLM2's
// head, 49152 x 576, stream from memory).
void BM_GemvQ8(benchmark::State& st) {
  SimdLevel lv;
  if (!level_arg(st, lv)) return;
  const int64_t rows = st.range(1), cols = st.range(2), copies = st.range(3);
  const std::vector<std::vector<int8_t>> ws = q8_copies(rows, cols, copies);
  const auto scales = randn(rows * cols / 32, 6, 0.01f), x = randn(cols, 7);
  std::vector<float> y(rows);
  const auto& k = kernels::linear_kernels_for(lv);
  int64_t c = 0;
  for (auto _ : st) {
    k.gemv_q8(ws[c].data(), scales.data(), cols, x.data(), y.data(), 0, rows);
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(st.iterations() * (rows * cols + rows * cols / 32 * 4));
  st.SetLabel(simd_level_name(lv));
}
BENCHMARK(BM_GemvQ8)
    ->ArgsProduct({{1, 2}, {1536}, {576}, {1}})
    ->ArgsProduct({{1, 2}, {49152}, {576}, {3}})
    ->ArgsProduct({{1}, {576}, {1536}, {1, 200}})  // (BM_GemvBlocks' shape)
    ->Unit(benchmark::kMicrosecond);

// BM_GemvBlocks' types by argument, and `copies` copies of rows x cols random blocks of type
// kBlockTypes[i] (random bytes, the fp16 scale fields set to small normal values).
const GgmlType kBlockTypes[] = {GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q3_K, GgmlType::Q2_K};
std::vector<std::vector<uint8_t>> random_block_copies(int64_t i, int64_t rows, int64_t cols, int64_t copies) {
  // (each type's fp16 fields: formats/ggml_types.h's block layouts)
  const std::vector<std::vector<int>> halves = {{0}, {0, 2}, {0, 2}, {208}, {108}, {80, 82}};
  const GgmlTypeTraits& tr = ggml_traits(kBlockTypes[i]);
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<uint8_t> w(static_cast<size_t>(rows * cols / tr.block_size * tr.type_size));
  for (auto& v : w) v = static_cast<uint8_t>(byte(rng));
  for (size_t off = 0; off < w.size(); off += tr.type_size)
    for (int f : halves[static_cast<size_t>(i)]) {
      const uint16_t h = f32_to_fp16(0.001f * static_cast<float>(1 + byte(rng)));
      std::memcpy(w.data() + off + f, &h, 2);
    }
  return std::vector<std::vector<uint8_t>>(static_cast<size_t>(copies), w);
}

// A GGUF's rows kept as its blocks (model/block_row_kernels.h), single-threaded next to
// BM_GemvQ8 on the same shape: arg0 = SIMD level, arg1 = type (0 Q5_0, 1 Q5_1, 2 Q5_K, 3 Q6_K,
// 4 Q3_K, 5 Q2_K), arg2/3 = rows/cols, arg4 = copies cycled through (200 of SmolLM2's ffn_down
// shape, 576 x 1536, stream from memory). Random bytes, the fp16 scale fields set to small
// normal values. Bytes are the blocks as stored. `int8` (BM_GemvBlocksI8) takes x as the 8-bit
// codes of the quantizer the loader pairs with the type (Q8_K for the 256-value types, Q8_0 for
// Q5_0 / Q5_1) into gemv_i8.
void gemv_blocks(benchmark::State& st, bool int8) {
  SimdLevel lv;
  if (!level_arg(st, lv)) return;
  const GgmlType t = kBlockTypes[st.range(1)];
  const int64_t rows = st.range(2), cols = st.range(3), copies = st.range(4);
  const GgmlTypeTraits& tr = ggml_traits(t);
  const std::vector<std::vector<uint8_t>> ws = random_block_copies(st.range(1), rows, cols, copies);
  const auto x = randn(cols, 7);
  std::vector<int8_t> xq(cols);
  std::vector<float> xd(cols / 32), y(rows);
  const auto& lin = kernels::linear_kernels_for(lv);
  if (int8) (tr.block_size == 256 ? lin.quantize_x_q8k : lin.quantize_x_q8)(x.data(), cols, xq.data(), xd.data());
  const auto& k = kernels::block_row_kernels_for(lv);
  int64_t c = 0;
  for (auto _ : st) {
    kernels::BlockRows b;
    b.type = t;
    b.data = ws[static_cast<size_t>(c)].data();
    b.rows = rows;
    b.cols = cols;
    b.row_bytes = cols / tr.block_size * tr.type_size;
    if (int8) k.gemv_i8(b, xq.data(), xd.data(), 1, y.data(), rows, 0, rows);
    else k.gemv(b, x.data(), 1, y.data(), rows, 0, rows);
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(ws[0].size()));
  st.SetLabel(std::string(simd_level_name(lv)) + " " + std::string(ggml_type_name(t)));
}

void BM_GemvBlocks(benchmark::State& st) { gemv_blocks(st, false); }
BENCHMARK(BM_GemvBlocks)
    ->ArgsProduct({{1}, {0, 1, 2, 3, 4, 5}, {576}, {1536}, {1, 200}})
    ->Unit(benchmark::kMicrosecond);

// The same blocks on 8-bit activations (gemv_i8: the GGUF default of generate / chat / serve),
// next to BM_GemvQ8I8 on the same shape; arguments as BM_GemvBlocks'.
void BM_GemvBlocksI8(benchmark::State& st) { gemv_blocks(st, true); }
BENCHMARK(BM_GemvBlocksI8)
    ->ArgsProduct({{1}, {0, 1, 2, 3, 4, 5}, {576}, {1536}, {1, 200}})
    ->Unit(benchmark::kMicrosecond);

// The fused GEMV beyond the fast shape, single-threaded, active SIMD level, 1536 rows,
// double-quantized: arg0 = compute dtype the weights are rounded to (0 fp32, 1 bf16, 2 fp16),
// arg1 = cols (576: whole 32-weight chunks per row; 580: rows start mid-chunk).
void BM_GemvQ4Rounded(benchmark::State& st) {
  const ComputeDType dts[] = {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16};
  const int64_t rows = 1536, cols = st.range(1);
  auto q = make_q4(rows, cols, 1);
  q->m.round_to = dts[st.range(0)];
  auto x = randn(cols, 2);
  std::vector<float> y(rows);
  const auto& k = kernels::active_linear_kernels();
  for (auto _ : st) {
    k.gemv_q4(q->m, x.data(), y.data(), 0, rows);
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(st.iterations() * rows * cols / 2);
}
BENCHMARK(BM_GemvQ4Rounded)->ArgsProduct({{0, 1, 2}, {576, 580}})->Unit(benchmark::kMicrosecond);

// Dequantizing 16-row panels to float32 (what prompt processing and training feed their
// GEMMs), single-threaded, active SIMD level, 1536 x 576 double-quantized; arg0 = compute dtype
// as above. Bytes are the float32 written.
void BM_DequantQ4(benchmark::State& st) {
  const ComputeDType dts[] = {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16};
  const int64_t rows = 1536, cols = 576;
  auto q = make_q4(rows, cols, 1);
  q->m.round_to = dts[st.range(0)];
  std::vector<float> buf(16 * cols);
  const auto& k = kernels::active_linear_kernels();
  for (auto _ : st) {
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
      k.dequant_rows_q4(q->m, r0, r0 + 16, buf.data());
      benchmark::DoNotOptimize(buf.data());
    }
  }
  st.SetBytesProcessed(st.iterations() * rows * cols * 4);
}
BENCHMARK(BM_DequantQ4)->DenseRange(0, 2)->Unit(benchmark::kMicrosecond);

// Multi-token strategies, single-threaded, active SIMD level, 1536x576 NF4:
// arg0 = tokens, arg1 = 0: fused multi-token GEMV, 1: dequantize 16-row panels + GEMM.
void BM_Strategy(benchmark::State& st) {
  const int64_t T = st.range(0), rows = 1536, cols = 576;
  auto q = make_q4(rows, cols, 0);
  auto x = randn(T * cols, 3);
  std::vector<float> y(T * rows), buf(16 * cols);
  const auto& k = kernels::active_linear_kernels();
  for (auto _ : st) {
    if (st.range(1) == 0) {
      for (int64_t t = 0; t < T; t += kernels::kMaxGemvTokens)
        k.gemv_q4_multi(q->m, x.data() + t * cols, std::min<int64_t>(kernels::kMaxGemvTokens, T - t),
                        y.data() + t * rows, rows, 0, rows);
    } else {
      for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        k.dequant_rows_q4(q->m, r0, r0 + 16, buf.data());
        k.gemm_rows(x.data(), cols, T, buf.data(), cols, 16, cols, y.data() + r0, rows);
      }
    }
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(T * st.iterations()), benchmark::Counter::kIsRate);
  st.SetLabel(st.range(1) == 0 ? "fused multi-token gemv" : "dequantize 16 rows + row-tile gemm");
}
BENCHMARK(BM_Strategy)->ArgsProduct({{2, 4, 8, 16, 32, 64, 256}, {0, 1}})->Unit(benchmark::kMicrosecond);

// Whole-model decode: one token per iteration (the KV cache is reset every 256 tokens).
struct LoadedModel {
  ModelFiles files;
  std::unique_ptr<Model> model;
};

std::unique_ptr<LoadedModel> load(const std::string& path, bool quantize, ComputeDType dt) {
  if (!std::filesystem::exists(path)) return nullptr;
  auto m = std::make_unique<LoadedModel>();
  m->files = open_model_files(path);
  ModelLoadOptions opt;
  opt.quant.quantize = quantize;
  opt.compute_dtype = dt;
  m->model = std::make_unique<Model>(Model::load(m->files.spec, *m->files.tensors, opt));
  return m;
}

std::string data_dir() {
  const char* d = std::getenv("QLORA_DATA_DIR");
  return d && *d ? d : QLORA_DEFAULT_DATA_DIR;
}
std::string smollm2() {
  const char* d = std::getenv("QLORA_MODELS_DIR");
  return (d && *d ? std::string(d) : std::string(QLORA_SOURCE_DIR) + "/models") + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// arg0: 0 = stories260K, 1 = SmolLM2; arg1: 0 = --quant none, 1 = nf4; arg2: 0 = fp32, 1 = bf16.
void BM_Decode(benchmark::State& st) {
  const std::string path = st.range(0) == 0 ? data_dir() + "/stories260K/stories260K.bin" : smollm2();
  const ComputeDType dt = st.range(2) ? ComputeDType::BF16 : ComputeDType::F32;
  static std::map<std::tuple<int64_t, int64_t, int64_t>, std::unique_ptr<LoadedModel>> cache;
  auto& slot = cache[{st.range(0), st.range(1), st.range(2)}];
  if (!slot) slot = load(path, st.range(1) != 0, dt);
  if (!slot) {
    st.SkipWithError(("missing " + path).c_str());
    return;
  }
  const Model& m = *slot->model;
  InferenceState state(m.spec(), 256);
  std::vector<float> logits(m.spec().vocab);
  int tok = 1;
  for (auto _ : st) {
    if (state.position() >= 256) state.reset();
    forward(m, state, std::span<const int>(&tok, 1), logits.data());
    tok = (tok * 31 + 7) % static_cast<int>(m.spec().vocab);
  }
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(st.iterations()), benchmark::Counter::kIsRate);
  st.SetLabel(std::string(st.range(0) ? "SmolLM2-135M" : "stories260K") + (st.range(1) ? " nf4" : " dense") +
              (st.range(2) ? " bf16" : " fp32"));
}
BENCHMARK(BM_Decode)->ArgsProduct({{0, 1}, {0, 1}, {0, 1}})->Unit(benchmark::kMillisecond);

// Prompt processing: arg0 model, arg1 prompt tokens (nf4, fp32 compute).
void BM_Prompt(benchmark::State& st) {
  const std::string path = st.range(0) == 0 ? data_dir() + "/stories260K/stories260K.bin" : smollm2();
  static std::map<int64_t, std::unique_ptr<LoadedModel>> cache;
  auto& slot = cache[st.range(0)];
  if (!slot) slot = load(path, true, ComputeDType::F32);
  if (!slot) {
    st.SkipWithError(("missing " + path).c_str());
    return;
  }
  const Model& m = *slot->model;
  const int64_t T = st.range(1);
  std::vector<int> toks(T);
  for (int64_t t = 0; t < T; ++t) toks[t] = static_cast<int>((t * 131 + 5) % m.spec().vocab);
  std::vector<float> logits(m.spec().vocab);
  for (auto _ : st) {
    InferenceState state(m.spec(), T);
    forward(m, state, toks, logits.data());
  }
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(T * st.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Prompt)->ArgsProduct({{0, 1}, {8, 16, 32, 128}})->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
