#pragma once
// Attention for many queries at once (prefill, training) as per-head GEMMs: the paths behind
// ops.h attention_forward and ops_backward.h attention_backward from kAttentionGemmMinTokens
// queries on, which have the full contracts (shapes, windows, ALiBi, softcap). Internal to
// those two files.
//
// How it runs:
//  - Causal row blocks: queries [t0, t1) need keys [0, q_pos0 + t1) only, so the products of
//    each block stop there (at 256 tokens in blocks of 64: 62.5% of the dense work).
//  - Threads: with the probabilities kept (training), the heads are split over the threads in
//    ONE parallel region, each head's products single-threaded inside it; per-head products
//    each threaded on their own cost a parallel region apiece (~33 us each under a passive
//    OpenMP wait policy here, hundreds per layer; bench/RESULTS.md session 13).
//  - The products are float32 (model/gemm.h) in every compute dtype, on the values the block
//    gives (bf16 values in bf16 compute). The bf16 GEMM (model/gemm_bf16.h) was measured on
//    these shapes (K or N = head_dim 64, products of 64 x 256) with every operand rounded to
//    bf16 as torch's bf16 attention does: 14 ms per Llama 1.1B layer (forward + backward, 256
//    tokens) against 9.4 ms here on AVX-512 BF16 dot products, its per-call packing and the
//    transposes its missing Xᵀ form needs outweighing the faster dot products.
#include <cstdint>

namespace qlora {

struct AlibiBias;

// The forward. att (NH, T, Tk) when not null, else scratch (T, Tk) (one head: the heads then
// run one after another, each product threaded).
void attention_forward_gemm(float* out, float* att, float* scratch, const float* q, const float* k, const float* v,
                            int64_t T, int64_t Tk, int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS,
                            const int32_t* key_start, float scale, float softcap, const AlibiBias* alibi,
                            const float* sinks = nullptr);

// The backward: dq, dk, dv accumulate; datt (NH, T, Tk) scratch for the score gradients; raw
// (T, Tk) the softcap's recomputed scores of one head (softcap > 0 only: the heads then run
// one after another).
void attention_backward_gemm(float* dq, float* dk, float* dv, float* datt, float* raw, const float* dout,
                             const float* q, const float* k, const float* v, const float* att, int64_t T, int64_t Tk,
                             int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start,
                             float scale, float softcap);

}  // namespace qlora
