// The CUDA kernels against the GPU's own ceilings, measured in the same run:
//   copy      cudaMemcpy device-to-device (bytes read + written per second): the bandwidth ceiling
//   launch    a one-element kernel launched from the host and replayed in a CUDA graph: the
//             floor under every kernel time below ("graph" columns are replayed in graphs)
//   dequant   NF4 (+ double quant) -> bf16, as a fraction of the copy bandwidth
//   gemv      the fused 4-bit GEMV (decode, 1 token) in bytes of weights per second, as a
//             fraction of the copy bandwidth; weights cycle through more memory than the L2
//   decode    a 7B-shaped layer stack's 7 Linears x 32 layers per token (weights only):
//             tokens/s and the bandwidth bound (4-bit weight bytes / copy bandwidth)
//   gemm      cuBLAS bf16 GEMM (float32 accumulation) on the Linear shapes of prefill and
//             training, and dequantize + GEMM, whose ratio is what 4-bit costs there
// Random weights (say so). Prints one JSON object per line; bench/RESULTS.md keeps them.
//   bench_cuda_kernels [--quick]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/blas.h"
#include "cuda/cuda_error.h"
#include "cuda/device_buffer.h"
#include "cuda/device_weights.h"
#include "cuda/kernels.h"
#include "quant/quant_state.h"

using namespace qlora;
using namespace qlora::cuda;

namespace {

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    QLORA_CUDA_CHECK(cudaEventCreate(&a));
    QLORA_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  // Median seconds of `reps` timed runs of f (after 2 warm-ups), each run `inner` calls.
  template <class F>
  double median(F f, int reps = 7, int inner = 1, cudaStream_t st = nullptr) {
    for (int i = 0; i < 2; ++i) f();
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
      QLORA_CUDA_CHECK(cudaEventRecord(a, st));
      for (int i = 0; i < inner; ++i) f();
      QLORA_CUDA_CHECK(cudaEventRecord(b, st));
      QLORA_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0;
      QLORA_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms / 1e3 / inner);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

// Median seconds per call of f(stream), `inner` calls captured into one CUDA graph and the
// graph replayed: the GPU's own time per kernel, without the host's launch cost (which on
// a small kernel can exceed the kernel). Decode replays such a graph per token.
template <class F>
double graph_median(Timer& tm, F f, int inner, int reps = 9) {
  cudaStream_t st;
  QLORA_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaGraph_t g;
  QLORA_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < inner; ++i) f(st);
  QLORA_CUDA_CHECK(cudaStreamEndCapture(st, &g));
  cudaGraphExec_t exec;
  QLORA_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
  const double t = tm.median([&] { QLORA_CUDA_CHECK(cudaGraphLaunch(exec, st)); }, reps, 1, st) / inner;
  QLORA_CUDA_CHECK(cudaStreamSynchronize(st));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
  return t;
}

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// A quantized (rows, cols) weight; quantizing big random matrices on the host is slow, so
// one is made per shape and copied on the device to fill memory.
Quantized4bit make_q4(int64_t rows, int64_t cols) {
  const std::vector<float> w = randn(static_cast<size_t>(rows * cols), static_cast<uint32_t>(rows + cols));
  return quantize_tensor_4bit(w.data(), {rows, cols}, QuantType::NF4, 64, /*double_quant=*/true, ComputeDType::BF16);
}

void line(const std::string& json) { std::printf("%s\n", json.c_str()); std::fflush(stdout); }

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  try {
    if (device_count() == 0) {
      std::fprintf(stderr, "bench_cuda_kernels: no CUDA device\n");
      return 77;
    }
    QLORA_CUDA_CHECK(cudaSetDevice(0));
    cudaDeviceProp prop{};
    QLORA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    char buf[2048];
    std::snprintf(buf, sizeof buf, "{\"gpu\": \"%s\", \"sm\": %d%d, \"l2_mib\": %.0f, \"mem_gib\": %.1f}", prop.name,
                  prop.major, prop.minor, prop.l2CacheSize / 1048576.0, prop.totalGlobalMem / 1073741824.0);
    line(buf);
    Timer tm;

    // copy bandwidth
    const size_t copy_bytes = size_t{1} << (quick ? 28 : 31);
    DeviceBuffer<uint8_t> src(copy_bytes), dst(copy_bytes);
    QLORA_CUDA_CHECK(cudaMemset(src.data(), 1, copy_bytes));
    const double t_copy = tm.median([&] { QLORA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice, nullptr)); });
    const double copy_bw = 2.0 * copy_bytes / t_copy;
    std::snprintf(buf, sizeof buf, "{\"bench\": \"copy\", \"bytes\": %zu, \"gb_per_s\": %.1f}", copy_bytes, copy_bw / 1e9);
    line(buf);
    src = DeviceBuffer<uint8_t>();
    dst = DeviceBuffer<uint8_t>();

    // The launch floor: a one-element kernel, launched from the host and replayed in a graph.
    {
      DeviceBuffer<float> one(1);
      auto tiny = [&](cudaStream_t st) { axpy(one.data(), 0.0f, one.data(), 1, st); };
      const double t_host = tm.median([&] { tiny(nullptr); }, 9, 64);
      const double t_graph = graph_median(tm, tiny, 64);
      std::snprintf(buf, sizeof buf, "{\"bench\": \"launch_floor\", \"host_launch_us\": %.2f, \"graph_us\": %.2f}",
                    t_host * 1e6, t_graph * 1e6);
      line(buf);
    }

    // Linear shapes of a Llama-7B block: (out, in)
    const int64_t H = 4096, F = 11008;
    struct Shape { const char* name; int64_t rows, cols; };
    const Shape shapes[] = {{"q/k/v/o 4096x4096", H, H},     {"gate/up 11008x4096", F, H}, {"down 4096x11008", H, F},
                            {"smollm2 gate/up 1536x576", 1536, 576}, {"smollm2 down 576x1536", 576, 1536}};
    for (const Shape& sh : shapes) {
      const Quantized4bit q = make_q4(sh.rows, sh.cols);
      // Enough copies to exceed the L2 several times, cycled so each launch reads from DRAM.
      const int64_t one = static_cast<int64_t>(q.packed.size());
      const int copies = static_cast<int>(std::max<int64_t>(2, (static_cast<int64_t>(prop.l2CacheSize) * 8) / one + 1));
      std::vector<DeviceQ4> ws;
      for (int c = 0; c < copies; ++c) ws.push_back(upload_q4(q, sh.rows, sh.cols, ComputeDType::BF16));
      const double wbytes = static_cast<double>(ws[0].bytes());
      const int64_t n = sh.rows * sh.cols;
      DeviceBuffer<uint16_t> out16(static_cast<size_t>(n));
      int c = 0;
      auto dq = [&](cudaStream_t st) { dequantize_q4(ws[c++ % copies].view, DenseType::BF16, out16.data(), st); };
      const double t_dq = tm.median([&] { dq(nullptr); }, 9, 4);
      const double t_dq_graph = graph_median(tm, dq, 16);
      const double dq_bytes = wbytes + 2.0 * n;
      DeviceBuffer<float> x(static_cast<size_t>(sh.cols)), y(static_cast<size_t>(sh.rows));
      QLORA_CUDA_CHECK(cudaMemset(x.data(), 0, x.bytes()));
      // The GEMV with each kernel that can run the shape, bf16-rounded weights (bf16
      // compute) and float32 weights (absmax factored out); "auto" is what the runner uses.
      std::string gemv;
      for (const GemvQ4Kernel k : {GemvQ4Kernel::Auto, GemvQ4Kernel::Tiled, GemvQ4Kernel::Staged}) {
        for (const ComputeDType dt : {ComputeDType::BF16, ComputeDType::F32}) {
          Q4Device v0 = ws[0].view;
          v0.round_to = dt;
          if (k != GemvQ4Kernel::Auto && gemv_q4_auto(v0, 1) != k &&
              !(k == GemvQ4Kernel::Staged && sh.cols * 36 * 4 / 32 <= 200 * 1024))
            continue;
          auto gv = [&](cudaStream_t st) {
            Q4Device v = ws[c++ % copies].view;
            v.round_to = dt;
            gemv_q4(v, x.data(), 1, y.data(), sh.rows, st, k);
          };
          const double t = tm.median([&] { gv(nullptr); }, 9, 16);
          const double tg = graph_median(tm, gv, 16);
          const char* kn = k == GemvQ4Kernel::Auto ? "" : k == GemvQ4Kernel::Tiled ? "tiled_" : "staged_";
          const char* dn = dt == ComputeDType::BF16 ? "" : "f32_";
          char part[256];
          std::snprintf(part, sizeof part,
                        ", \"gemv_%s%sus\": %.1f, \"gemv_%s%sof_copy\": %.3f, \"gemv_%s%sgraph_us\": %.1f, "
                        "\"gemv_%s%sgraph_of_copy\": %.3f",
                        kn, dn, t * 1e6, kn, dn, wbytes / t / copy_bw, kn, dn, tg * 1e6, kn, dn, wbytes / tg / copy_bw);
          gemv += part;
        }
      }
      std::snprintf(buf, sizeof buf,
                    "{\"bench\": \"nf4\", \"shape\": \"%s\", \"weight_bytes\": %.0f, \"dequant_bf16_us\": %.1f, "
                    "\"dequant_gb_per_s\": %.1f, \"dequant_of_copy\": %.3f, \"dequant_graph_us\": %.1f, "
                    "\"dequant_graph_of_copy\": %.3f%s}",
                    sh.name, wbytes, t_dq * 1e6, dq_bytes / t_dq / 1e9, dq_bytes / t_dq / copy_bw, t_dq_graph * 1e6,
                    dq_bytes / t_dq_graph / copy_bw, gemv.c_str());
      line(buf);
    }

    // decode: 32 layers x 7 Linears, distinct weights (3.5 GB of NF4)
    {
      const int layers = quick ? 4 : 32;
      const Quantized4bit qa = make_q4(H, H), qg = make_q4(F, H), qd = make_q4(H, F);
      std::vector<DeviceQ4> w;
      for (int l = 0; l < layers; ++l) {
        for (int i = 0; i < 4; ++i) w.push_back(upload_q4(qa, H, H, ComputeDType::BF16));
        for (int i = 0; i < 2; ++i) w.push_back(upload_q4(qg, F, H, ComputeDType::BF16));
        w.push_back(upload_q4(qd, H, F, ComputeDType::BF16));
      }
      double bytes = 0;
      for (const DeviceQ4& d : w) bytes += static_cast<double>(d.bytes());
      DeviceBuffer<float> x(static_cast<size_t>(F)), y(static_cast<size_t>(F));
      QLORA_CUDA_CHECK(cudaMemset(x.data(), 0, x.bytes()));
      // One token = one graph of all the layers' GEMVs, as the runner's decode replays.
      const double t = graph_median(tm, [&](cudaStream_t st) {
        for (const DeviceQ4& d : w) gemv_q4(d.view, x.data(), 1, y.data(), d.view.rows, st);
      }, 1, 5);
      std::snprintf(buf, sizeof buf,
                    "{\"bench\": \"decode_linears\", \"layers\": %d, \"weight_gb\": %.2f, \"ms_per_token\": %.3f, "
                    "\"tok_per_s\": %.1f, \"bound_tok_per_s\": %.1f, \"of_bound\": %.3f}",
                    layers, bytes / 1e9, t * 1e3, 1.0 / t, copy_bw / bytes, (bytes / t) / copy_bw);
      line(buf);
    }

    // cuBLAS bf16 GEMM, and dequantize + GEMM
    {
      Blas blas;
      struct G { int64_t M, N, K; };
      const G gs[] = {{512, H, H}, {512, F, H}, {2048, F, H}, {4096, H, F}};
      for (const G& g : gs) {
        DeviceBuffer<uint16_t> a(static_cast<size_t>(g.M * g.K)), b(static_cast<size_t>(g.N * g.K));
        DeviceBuffer<float> c(static_cast<size_t>(g.M * g.N));
        QLORA_CUDA_CHECK(cudaMemset(a.data(), 0, a.bytes()));
        QLORA_CUDA_CHECK(cudaMemset(b.data(), 0, b.bytes()));
        const double t_g = tm.median([&] {
          blas.gemm16_nt(DenseType::BF16, g.M, g.N, g.K, 1.0f, a.data(), g.K, b.data(), g.K, 0.0f, c.data(), g.N);
        }, 9, 4);
        const Quantized4bit q = make_q4(g.N, g.K);
        DeviceQ4 w = upload_q4(q, g.N, g.K, ComputeDType::BF16);
        const double t_dg = tm.median([&] {
          dequantize_q4(w.view, DenseType::BF16, b.data(), nullptr);
          blas.gemm16_nt(DenseType::BF16, g.M, g.N, g.K, 1.0f, a.data(), g.K, b.data(), g.K, 0.0f, c.data(), g.N);
        }, 9, 4);
        const double flop = 2.0 * g.M * g.N * g.K;
        std::snprintf(buf, sizeof buf,
                      "{\"bench\": \"gemm_bf16\", \"M\": %lld, \"N\": %lld, \"K\": %lld, \"gemm_us\": %.1f, "
                      "\"tflop_per_s\": %.1f, \"dequant_gemm_us\": %.1f, \"dequant_gemm_tflop_per_s\": %.1f, "
                      "\"dequant_overhead\": %.3f}",
                      static_cast<long long>(g.M), static_cast<long long>(g.N), static_cast<long long>(g.K),
                      t_g * 1e6, flop / t_g / 1e12, t_dg * 1e6, flop / t_dg / 1e12, t_dg / t_g - 1.0);
        line(buf);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_kernels: %s\n", e.what());
    return 1;
  }
  return 0;
}
