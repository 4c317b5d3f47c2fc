#include "model/block_scratch.h"

#include <algorithm>

#include "model/backend.h"
#include "model/ops.h"
#include "model/ops_backward.h"

namespace qlora {

namespace {
int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }  // 64 bytes
}  // namespace

int64_t BlockScratchFloats::total() const {
  return padded(scores) + padded(raw_scores) + padded(dprobs) + padded(weight_tile) + padded(lora.x) +
         padded(lora.y) + padded(lora.drop) + padded(lora.h);
}

BlockScratchFloats block_scratch_floats(const BlockProgram& p, const BlockScratchQuery& q) {
  const ModelSpec& s = p.spec();
  BlockScratchFloats f;
  if (!q.training) f.scores = attention_scratch_floats(q.tokens, std::max(q.keys, q.tokens), s.n_heads);
  if (q.backward) {
    f.raw_scores = attention_backward_scratch_floats(q.longest, q.longest, s.attn_softcap);
    f.dprobs = s.n_heads * q.longest * q.longest;
    for (int64_t l = 0; l < s.n_layers; ++l)  // (Gemma 4's layers differ in shape)
      for (const BlockLinearSpec& li : s.block_linears(l))
        if (li.module) f.weight_tile = std::max(f.weight_tile, linear_backward_tile_floats(li.in, li.out));
    // (project_out's input gradient goes through the same tile: (E, C))
    if (s.projects_embeddings())
      f.weight_tile = std::max(f.weight_tile, linear_backward_tile_floats(s.hidden, s.embed_width()));
  }
  for (const BlockScratchQuery::Lora& l : q.lora)
    f.lora.cover(q.tokens, l.in, l.out, l.r, q.training && q.lora_dropout, q.backward);
  return f;
}

BlockScratch BlockScratch::carve(float* arena, const BlockScratchFloats& f) {
  BlockScratch s;
  float* at = arena;
  auto take = [&](int64_t n) -> float* {
    if (n <= 0) return nullptr;
    float* p = at;
    at += padded(n);
    return p;
  };
  s.scores = take(f.scores);
  s.raw_scores = take(f.raw_scores);
  s.dprobs = take(f.dprobs);
  s.weight_tile = take(f.weight_tile);
  s.lora.x = take(f.lora.x);
  s.lora.y = take(f.lora.y);
  s.lora.drop = take(f.lora.drop);
  s.lora.h = take(f.lora.h);
  return s;
}

}  // namespace qlora
