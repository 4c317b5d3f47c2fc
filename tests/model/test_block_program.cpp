// The block program (model/block_program.h): one list of ops that inference, training and
// the planner all read. What is checked here is the bookkeeping the three rely on; the
// numbers the program computes are checked against transformers and PEFT per family in
// test_families.cpp and test_train_parity.cpp.
//   * inference slots never hand a buffer's storage to another while it is still read;
//   * training keeps exactly what the op backwards read;
//   * every family variant builds (plain llama, qk-norm, sandwich norms) and its sizes add up.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "base/error.h"
#include "model/block_program.h"

using namespace qlora;

namespace {

ModelSpec base_spec() {
  ModelSpec s;
  s.hidden = 48;
  s.n_layers = 2;
  s.n_heads = 6;
  s.n_kv_heads = 2;
  s.head_dim = 8;
  s.ffn = 100;
  s.vocab = 64;
  s.max_positions = 64;
  return s;
}

std::vector<ModelSpec> variants() {
  ModelSpec plain = base_spec();
  ModelSpec qk = base_spec();
  qk.qk_norm = true;
  qk.head_dim = 16;  // q_dim 96 != hidden
  ModelSpec sandwich = base_spec();
  sandwich.sandwich_norms = true;
  sandwich.mlp = MlpKind::GeGLU;
  ModelSpec both = sandwich;
  both.qk_norm = true;
  return {plain, qk, sandwich, both};
}

int find(const BlockProgram& p, const std::string& name) {
  for (int b = 0; b < static_cast<int>(p.buffers().size()); ++b)
    if (p.buffers()[static_cast<size_t>(b)].name == name) return b;
  return -1;
}

}  // namespace

TEST(BlockProgram, InferenceSlotsHoldEveryBufferUntilItsLastRead) {
  for (const ModelSpec& s : variants()) {
    const BlockProgram p = BlockProgram::for_spec(s);
    const auto& slots = p.inference_slots();
    std::vector<int> owner(slots.slot_width.size(), -1);  // which buffer a slot holds now
    for (const BlockOp& o : p.ops()) {
      for (int in : {o.in0, o.in1, o.in2}) {
        if (in < 0 || in == p.input() || in == p.output()) continue;
        const int slot = slots.slot_of[static_cast<size_t>(in)];
        ASSERT_GE(slot, 0) << p.buffers()[static_cast<size_t>(in)].name;
        EXPECT_EQ(owner[static_cast<size_t>(slot)], in)
            << "buffer " << p.buffers()[static_cast<size_t>(in)].name << " was overwritten before it was read";
      }
      if (o.out == p.input() || o.out == p.output()) continue;
      const int slot = slots.slot_of[static_cast<size_t>(o.out)];
      ASSERT_GE(slot, 0);
      EXPECT_GE(slots.slot_width[static_cast<size_t>(slot)], p.buffers()[static_cast<size_t>(o.out)].width);
      for (int in : {o.in0, o.in1, o.in2}) {  // an op never writes over its own (other) input
        if (in >= 0 && in != o.out && in != p.input() && in != p.output()) {
          EXPECT_NE(slots.slot_of[static_cast<size_t>(in)], slot) << p.buffers()[static_cast<size_t>(o.out)].name;
        }
      }
      owner[static_cast<size_t>(slot)] = o.out;
    }
    // Sharing pays: fewer slots than buffers.
    EXPECT_LT(slots.slot_width.size(), p.buffers().size() - 4);
  }
}

TEST(BlockProgram, TrainingKeepsWhatTheBackwardReads) {
  const BlockProgram p = BlockProgram::for_spec(base_spec());
  std::set<std::string> saved, transient;
  for (const BlockBuffer& b : p.buffers()) (b.saved ? saved : transient).insert(b.name);
  // Norm inputs and rstd, Linear inputs (LoRA), attention's q, k, v and probabilities, both
  // gated-activation inputs; not the Linear outputs that only feed a residual add.
  EXPECT_EQ(saved, (std::set<std::string>{"x_in", "h_attn", "rstd_attn", "q", "k", "v", "probabilities", "attention",
                                          "x_mid", "h_mlp", "rstd_mlp", "gate", "up", "act"}));
  EXPECT_EQ(transient, (std::set<std::string>{"o_proj", "down_proj", "x_out"}));
  const int64_t T = 7;
  const ModelSpec& s = p.spec();
  EXPECT_EQ(p.saved_floats(T), T * (3 * s.hidden + 2 + 2 * s.q_dim() + 2 * s.kv_dim() + 3 * s.ffn) +
                                   s.n_heads * T * T);
  EXPECT_EQ(p.transient_floats(T), T * 2 * s.hidden);
}

TEST(BlockProgram, FamilyVariantsAreOpsNotFlagsAtRunTime) {
  const BlockProgram qk = BlockProgram::for_spec(variants()[1]);
  // The per-head norms read the projections; rotary then works on the norms' outputs.
  const int qpre = find(qk, "q_proj"), q = find(qk, "q");
  ASSERT_GE(qpre, 0);
  ASSERT_GE(q, 0);
  EXPECT_TRUE(qk.buffers()[static_cast<size_t>(qpre)].saved);
  EXPECT_EQ(find(qk, "rstd_q") >= 0, true);
  const BlockProgram sw = BlockProgram::for_spec(variants()[2]);
  int norms = 0;
  for (const BlockOp& o : sw.ops()) norms += o.kind == BlockOpKind::Norm;
  EXPECT_EQ(norms, 4);  // input, post-attention, pre-ffn, post-ffn
  EXPECT_EQ(find(BlockProgram::for_spec(base_spec()), "o_normed"), -1);
}
