// Tables of rows the model only gathers (Gemma 4's per-layer embedding, 262144 x 8960 values
// in Gemma 4 E2B) are held as the file stores them where that loses nothing: a 16-bit
// checkpoint's table in its 16 bits with float32 compute (its values widen exactly), a GGUF's
// quantized one in 8 bits; and tables are read a slab of rows at a time (no float32 copy of
// the whole tensor). The memory planner's rule (gathered_table_bytes) is checked against what
// the loader holds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/float_formats.h"
#include "export/merge_gguf.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "memory/memory_plan.h"
#include "model/central_difference.h"
#include "model/lora_step_compare.h"
#include "model/model.h"
#include "model/quant_linear.h"

using namespace qlora;
namespace fs = std::filesystem;

namespace {

const std::string kFixture = std::string(QLORA_FIXTURE_DIR) + "/families/gemma4_e";
const std::string kPle = "model.embed_tokens_per_layer.weight";

std::vector<float> randn(int64_t n, uint32_t seed) { return testing_util::randn(static_cast<size_t>(n), seed); }

// Largest |a - b| relative to the largest |b|.
double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, peak = 1e-30;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    peak = std::max(peak, double(std::fabs(b[i])));
  }
  return worst / peak;
}

std::vector<float> all_rows(const DenseWeight& w) {
  std::vector<float> v(static_cast<size_t>(w.rows() * w.cols()));
  w.rows_to_f32(0, w.rows(), v.data());
  return v;
}

std::string temp_dir(const char* stem) {
  std::string t = "/tmp/" + std::string(stem) + "_XXXXXX";
  if (!mkdtemp(t.data())) throw Error("mkdtemp failed");
  return t;
}

// A fixture's checkpoint with every tensor stored as `dtype` (BF16 or F16), in a new directory.
std::string sixteen_bit_copy(DType dtype, const std::string& fixture = kFixture) {
  const std::string dir = temp_dir("qlora_ple16");
  fs::copy_file(fixture + "/config.json", dir + "/config.json");
  const SafeTensorsFile in(fixture + "/model.safetensors");
  SafeTensorsWriter w;
  for (const SafeTensorInfo& t : in.tensors()) {
    const std::vector<float> v = in.to_float(t);
    std::vector<uint16_t> h(v.size());
    convert_from_f32(dtype, v.data(), h.data(), v.size());
    w.add_vector(t.name, dtype, t.shape, h);
  }
  w.write(dir + "/model.safetensors");
  return dir;
}

std::vector<float> logits_of(const Model& m, const std::vector<int>& prompt) {
  InferenceState st(m, 32);
  std::vector<float> out(prompt.size() * static_cast<size_t>(m.spec().vocab));
  forward(m, st, prompt, out.data(), true);
  return out;
}

// Every tensor of `src` in memory (get()'s values): a source that says nothing of how they were
// stored, so the loader holds them in the compute dtype.
MemoryTensorSource in_memory(const TensorSource& src) {
  MemoryTensorSource m;
  for (const std::string& n : src.names()) m.add(n, src.shape(n), src.get(n));
  return m;
}

uint64_t ple_bytes_of(const std::string& path, const ModelLoadOptions& o) { return model_source_tables(path, o).ple_bytes; }
bool reads_rows_of(const std::string& path) { return model_source_tables(path, ModelLoadOptions{}).reads_rows; }

}  // namespace

TEST(DenseWeightFromRows, SlabsMatchTheWholeTensorInEveryDtype) {
  // 300 columns: slabs of 3495 rows, the last one short
  const int64_t rows = 8000, cols = 300;
  const std::vector<float> v = randn(rows * cols, 7);
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16}) {
    int calls = 0;
    const DenseWeight slabs = DenseWeight::from_rows(rows, cols, dt, [&](int64_t r0, int64_t r1, float* out) {
      ++calls;
      std::memcpy(out, v.data() + r0 * cols, static_cast<size_t>((r1 - r0) * cols) * sizeof(float));
    });
    const DenseWeight whole(v.data(), rows, cols, dt);
    EXPECT_EQ(slabs.dtype(), dt);
    EXPECT_EQ(slabs.bytes(), whole.bytes());
    EXPECT_EQ(all_rows(slabs), all_rows(whole)) << "dtype " << static_cast<int>(dt);
    EXPECT_EQ(calls, dt == ComputeDType::F32 ? 1 : 3);
  }
  EXPECT_THROW(DenseWeight::from_rows(rows, cols, ComputeDType::BF16,
                                      [](int64_t, int64_t, float*) { throw Error("m.safetensors: truncated"); }),
               Error);
}

TEST(TensorSourceRows, SafetensorsAndGgufRowsAreGetsRows) {
  for (const std::string& path : {kFixture, kFixture + "/model.gguf"}) {
    const ModelFiles f = open_model_files(path);
    for (const std::string& name : {kPle, std::string("model.embed_tokens.weight")}) {
      ASSERT_TRUE(f.tensors->reads_rows(name)) << path << " " << name;
      const std::vector<int64_t> s = f.tensors->shape(name);
      const std::vector<float> all = f.tensors->get(name);
      std::vector<float> part(static_cast<size_t>(7 * s[1]));
      f.tensors->get_rows(name, 5, 12, part.data());
      EXPECT_TRUE(std::equal(part.begin(), part.end(), all.begin() + 5 * s[1])) << path << " " << name;
      EXPECT_THROW(f.tensors->get_rows(name, 0, s[0] + 1, part.data()), Error);
    }
    // (a block Linear of a GGUF is not a table: its rows may be reordered by get())
    if (f.format == ModelFormat::Gguf) {
      EXPECT_FALSE(f.tensors->reads_rows("model.layers.0.self_attn.q_proj.weight"));
    }
  }
}

// A bf16 / fp16 checkpoint's per-layer table stays in its 16 bits with float32 compute: half
// the bytes, and the logits are those of the same values held in float32, bit for bit.
TEST(GatheredTables, SixteenBitPerLayerEmbeddingIsHeldAsStored) {
  for (DType dtype : {DType::BF16, DType::F16}) {
    const std::string dir = sixteen_bit_copy(dtype);
    const ModelFiles f = open_model_files(dir);
    ASSERT_TRUE(f.spec.ple());
    ModelLoadOptions o;
    o.quant.quantize = false;
    const Model kept = Model::load(f.spec, *f.tensors, o);
    const MemoryTensorSource mem = in_memory(*f.tensors);
    const Model wide = Model::load(f.spec, mem, o);
    const ComputeDType want = dtype == DType::BF16 ? ComputeDType::BF16 : ComputeDType::F16;
    const uint64_t n = static_cast<uint64_t>(f.spec.ple_vocab * f.spec.n_layers * f.spec.ple_dim);
    EXPECT_TRUE(kept.embed_per_layer().held_16bit());
    EXPECT_EQ(kept.embed_per_layer().dtype(), ComputeDType::F32);
    EXPECT_EQ(kept.embed_per_layer().held_dtype(), want);
    EXPECT_EQ(kept.embed_per_layer().bytes(), 2 * n);
    EXPECT_EQ(wide.embed_per_layer().bytes(), 4 * n);
    EXPECT_EQ(all_rows(kept.embed_per_layer()), all_rows(wide.embed_per_layer()));
    const std::vector<int> prompt = {2, 17, 42, 99, 3, 77, 18, 150};
    // (the tied head held in 16 bits multiplies a few tokens with the 16-bit GEMV, the float32
    // copy with the GEMM: the same products, summed in another order)
    EXPECT_LE(max_rel_diff(logits_of(kept, prompt), logits_of(wide, prompt)), 1e-5) << "the 16-bit tables changed the numbers";
    // the planner's rule, for this load and for bf16 compute (the compute dtype's 2 bytes)
    EXPECT_EQ(ple_bytes_of(dir, o), kept.embed_per_layer().bytes());
    ModelLoadOptions b = o;
    b.compute_dtype = ComputeDType::BF16;
    const Model bf = Model::load(f.spec, *f.tensors, b);
    EXPECT_EQ(bf.embed_per_layer().dtype(), ComputeDType::BF16);
    EXPECT_EQ(ple_bytes_of(dir, b), bf.embed_per_layer().bytes());
    fs::remove_all(dir);
  }
  // (the float32 fixture itself: float32, as stored)
  const ModelFiles f = open_model_files(kFixture);
  ModelLoadOptions o;
  o.quant.quantize = false;
  const Model m = Model::load(f.spec, *f.tensors, o);
  EXPECT_EQ(m.embed_per_layer().dtype(), ComputeDType::F32);
  EXPECT_EQ(ple_bytes_of(kFixture, o), m.embed_per_layer().bytes());
}

// A GGUF's per-layer table: BF16 kept in 16 bits, Q8_0 kept in 8 bits (its values exactly), Q4_0
// and Q4_K_M's type made Q8_0 of their values (or kept as blocks), and the planner says what
// the loader holds.
TEST(GatheredTables, GgufPerLayerEmbeddingStaysCompact) {
  // The fixture with per-layer inputs of 128 values (6 layers x 128 = 768 columns: whole Q8_0
  // blocks and K-quant super-blocks), the tensors that depend on it drawn at random.
  ModelFiles base_files = open_model_files(kFixture + "/model.gguf");
  ModelSpec spec = base_files.spec;
  const int64_t P = 128;
  spec.ple_dim = P;
  MemoryTensorSource mem;
  uint32_t seed = 1;
  for (const TensorSpec& t : spec.tensors()) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    const bool ple_shaped = base_files.tensors->shape(t.name) != t.shape;
    std::vector<float> v = ple_shaped ? randn(n, ++seed) : base_files.tensors->get(t.name);
    if (ple_shaped && t.name.find("norm") != std::string::npos) std::fill(v.begin(), v.end(), 1.0f);
    else if (ple_shaped) for (float& x : v) x *= 0.05f;
    mem.add(t.name, t.shape, std::move(v));
  }
  ModelLoadOptions o;
  o.quant.quantize = false;
  const Model source_model = Model::load(spec, mem, o);
  const std::string dir = temp_dir("qlora_pleq8");
  for (int kind = 0; kind < 4; ++kind) {
    const GgmlType type = kind == 0 ? GgmlType::Q8_0 : kind == 1 ? GgmlType::BF16 : GgmlType::Q4_0;
    const std::string path = dir + "/m_" + std::to_string(kind) + ".gguf";
    GgufExportOptions eo;
    eo.type = type;
    eo.q4_k_m = kind == 3;
    eo.log = false;
    base_files.spec = spec;
    write_merged_gguf(source_model, base_files, {}, path, eo, false);
    const ModelFiles f = open_model_files(path);
    ASSERT_EQ(f.spec.ple_dim, P);
    const Model kept = Model::load(f.spec, *f.tensors, o);
    ModelLoadOptions wide_o = o;
    wide_o.keep_q8_0_head = false;
    const Model wide = Model::load(f.spec, *f.tensors, wide_o);
    const uint64_t n = static_cast<uint64_t>(spec.ple_vocab * spec.n_layers * P);
    const std::vector<float> a = all_rows(kept.embed_per_layer()), b = all_rows(wide.embed_per_layer());
    if (kind == 1) {
      EXPECT_EQ(kept.embed_per_layer().held_dtype(), ComputeDType::BF16);
      EXPECT_EQ(kept.embed_per_layer().bytes(), 2 * n);
      EXPECT_EQ(wide.embed_per_layer().bytes(), 2 * n);  // (16 bits as stored either way)
    } else {
      EXPECT_TRUE(kept.embed_per_layer().packed()) << kind;
      EXPECT_LE(kept.embed_per_layer().bytes(), n + n / 32 * 4) << kind;
      EXPECT_EQ(wide.embed_per_layer().bytes(), 4 * n);  // (--dense-head: float32)
    }
    if (kind <= 1) {
      EXPECT_EQ(a, b) << "the values changed";
    } else {  // (Q8_0 of Q4_0's / Q4_K's values: within half an 8-bit step of each block's largest)
      EXPECT_LT(max_rel_diff(a, b), 1.0 / 127.0) << kind;
    }
    EXPECT_EQ(ple_bytes_of(path, o), kept.embed_per_layer().bytes());
    EXPECT_EQ(ple_bytes_of(path, wide_o), wide.embed_per_layer().bytes());
  }
  fs::remove_all(dir);
}

// The rule itself on the types a GGUF may hold (float32 compute, the decoding defaults).
TEST(GatheredTables, PlannerRuleCoversTheStoredTypes) {
  ModelLoadOptions o;
  const int64_t rows = 1000, cols = 512;
  const uint64_t n = rows * cols;
  EXPECT_EQ(gathered_table_bytes(GgmlType::F32, rows, cols, o), 4 * n);
  EXPECT_EQ(gathered_table_bytes(GgmlType::BF16, rows, cols, o), 2 * n);
  EXPECT_EQ(gathered_table_bytes(GgmlType::Q8_0, rows, cols, o), n + n / 8);
  EXPECT_EQ(gathered_table_bytes(GgmlType::Q4_K, rows, cols, o), n + n / 8);  // (re-quantized to Q8_0)
  EXPECT_EQ(gathered_table_bytes(GgmlType::Q2_K, rows, cols, o), static_cast<uint64_t>(*ggml_nbytes(GgmlType::Q2_K, n)));
  o.keep_q8_0_head = false;
  EXPECT_EQ(gathered_table_bytes(GgmlType::Q8_0, rows, cols, o), 4 * n);
  EXPECT_EQ(gathered_table_bytes(GgmlType::F16, rows, cols, o), 2 * n);
  o.compute_dtype = ComputeDType::BF16;
  EXPECT_EQ(gathered_table_bytes(GgmlType::F32, rows, cols, o), 2 * n);
}

namespace {

// A source that refuses get() of the tables (embeddings, head): loading must read them by rows.
class NoWholeTables : public TensorSource {
 public:
  explicit NoWholeTables(const TensorSource& in) : in_(in) {}
  std::vector<std::string> names() const override { return in_.names(); }
  bool has(const std::string& n) const override { return in_.has(n); }
  std::vector<int64_t> shape(const std::string& n) const override { return in_.shape(n); }
  std::vector<float> get(const std::string& n) const override {
    if (n == kPle || n == "model.embed_tokens.weight" || n == "lm_head.weight")
      throw Error("a float32 copy of the whole table '" + n + "' was made");
    return in_.get(n);
  }
  std::optional<ComputeDType> stored_16bit(const std::string& n) const override { return in_.stored_16bit(n); }
  bool reads_rows(const std::string& n) const override { return in_.reads_rows(n); }
  void get_rows(const std::string& n, int64_t r0, int64_t r1, float* out) const override { in_.get_rows(n, r0, r1, out); }
  std::string describe() const override { return in_.describe(); }

 private:
  const TensorSource& in_;
};

}  // namespace

// With a 16-bit compute dtype (and with float32), the tables are built a slab of rows at a time:
// get() of a whole table is never called.
TEST(GatheredTables, TablesAreReadByRowsWithoutAWholeFloat32Copy) {
  const std::string dir = sixteen_bit_copy(DType::BF16);
  const ModelFiles f = open_model_files(dir);
  const NoWholeTables src(*f.tensors);
  for (ComputeDType dt : {ComputeDType::BF16, ComputeDType::F32}) {
    ModelLoadOptions o;
    o.quant.quantize = false;
    o.compute_dtype = dt;
    EXPECT_NO_THROW(Model::load(f.spec, src, o)) << static_cast<int>(dt);
  }
  EXPECT_TRUE(reads_rows_of(dir));
  EXPECT_TRUE(reads_rows_of(dir + "/config.json"));  // (a bare config.json: its directory's weights)
  EXPECT_TRUE(reads_rows_of(kFixture + "/model.gguf"));
  EXPECT_FALSE(reads_rows_of("random:llama-tiny"));
  // A GGUF found by its magic bytes, whatever its name.
  const std::string renamed = dir + "/weights.bin";
  fs::copy_file(kFixture + "/model.gguf", renamed);
  EXPECT_TRUE(reads_rows_of(renamed));
  ModelLoadOptions o;
  EXPECT_EQ(ple_bytes_of(renamed, o), ple_bytes_of(kFixture + "/model.gguf", o));
  EXPECT_GT(ple_bytes_of(renamed, o), 0u);
  fs::remove_all(dir);
}

// A checkpoint whose untied head is stored quantized (bitsandbytes 8-bit: int8 codes and SCB) is
// read whole through get(): the planner keeps its float32 transient.
TEST(GatheredTables, QuantizedHeadIsNotReadByRows) {
  const std::string llama = std::string(QLORA_FIXTURE_DIR) + "/families/llama";
  const std::string dir = temp_dir("qlora_i8head");
  fs::copy_file(llama + "/config.json", dir + "/config.json");
  const SafeTensorsFile in(llama + "/model.safetensors");
  SafeTensorsWriter w;
  const SafeTensorInfo& head = in.at("lm_head.weight");
  for (const SafeTensorInfo& t : in.tensors())
    if (t.name != "lm_head.weight") w.add(t.name, t.dtype, t.shape, in.data(t));
  w.add_vector("lm_head.weight", DType::I8, head.shape, std::vector<int8_t>(static_cast<size_t>(head.numel()), 3));
  w.add_vector("lm_head.SCB", DType::F32, {head.shape[0]}, std::vector<float>(static_cast<size_t>(head.shape[0]), 1.0f));
  w.write(dir + "/model.safetensors");
  EXPECT_TRUE(reads_rows_of(llama));
  EXPECT_FALSE(reads_rows_of(dir));
  fs::remove_all(dir);
}

// The planner's load phase: a 16-bit compute dtype holds a float32 copy of the embedding while
// loading only when the source cannot read it by rows.
TEST(GatheredTables, PlannedLoadPeakDropsTheTableTransientForRowReadingSources) {
  ModelFiles f = open_model_files(kFixture);
  ModelLoadOptions load;
  load.compute_dtype = ComputeDType::BF16;
  MemoryOptions mo = memory_options_for_run(kFixture, load, MemoryMode::Generate, 1);
  EXPECT_TRUE(mo.source_reads_rows);
  // (Gemma's vocabulary: the embedding step is the load's peak)
  f.spec.vocab = f.spec.ple_vocab = 262144;
  const MemoryPlan by_rows = plan_memory(f.spec, mo);
  mo.source_reads_rows = false;
  const MemoryPlan whole = plan_memory(f.spec, mo);
  const uint64_t table = static_cast<uint64_t>(f.spec.vocab * f.spec.embed_width()) * 4;
  EXPECT_GT(whole.load_peak_bytes, by_rows.load_peak_bytes + table / 2);
  EXPECT_LE(whole.load_peak_bytes - by_rows.load_peak_bytes, table);
}

// A 16-bit checkpoint's embedding and untied head stay in 16 bits with float32 compute
// (DenseWeight::held_16bit): half the bytes. A decoded token's logits are their float32 copy's
// bit for bit (the same GEMV, each value widened on the way), a prompt's within float32
// summation order, and a LoRA step the same; --dense-head (keep_q8_0_head false) widens them.
TEST(HeldTables, SixteenBitEmbeddingAndHeadKeepTheirNumbers) {
  const std::string llama = std::string(QLORA_FIXTURE_DIR) + "/families/llama";
  for (DType dtype : {DType::BF16, DType::F16}) {
    const std::string dir = sixteen_bit_copy(dtype, llama);
    const ModelFiles f = open_model_files(dir);
    ASSERT_FALSE(f.spec.tied_embeddings);
    ModelLoadOptions o;
    o.quant.quantize = false;
    const Model kept = Model::load(f.spec, *f.tensors, o);
    const MemoryTensorSource mem = in_memory(*f.tensors);
    const Model wide = Model::load(f.spec, mem, o);
    ModelLoadOptions dense_o = o;
    dense_o.keep_q8_0_head = false;
    const Model dense = Model::load(f.spec, *f.tensors, dense_o);
    const uint64_t vc = static_cast<uint64_t>(f.spec.vocab * f.spec.embed_width());
    for (const DenseWeight* w : {&kept.embed_tokens(), &kept.lm_head()}) {
      EXPECT_TRUE(w->held_16bit());
      EXPECT_EQ(w->held_dtype(), dtype == DType::BF16 ? ComputeDType::BF16 : ComputeDType::F16);
      EXPECT_EQ(w->bytes(), 2 * vc);
    }
    EXPECT_EQ(dense.lm_head().bytes(), 4 * vc);
    EXPECT_FALSE(dense.embed_tokens().packed());
    EXPECT_EQ(all_rows(kept.lm_head()), all_rows(wide.lm_head()));
    EXPECT_EQ(all_rows(kept.embed_tokens()), all_rows(wide.embed_tokens()));
    // the planner's view of it, and of --dense-head: its items are the loaded tables' bytes
    const SourceTables t = model_source_tables(dir, o);
    EXPECT_TRUE(t.embed_16bit && t.head_16bit && t.reads_rows);
    EXPECT_FALSE(model_source_tables(dir, dense_o).head_16bit);
    for (const ModelLoadOptions* lo : {&o, &dense_o}) {
      const Model& m = lo == &o ? kept : dense;
      const MemoryPlan plan = plan_memory(f.spec, memory_options_for_run(dir, *lo, MemoryMode::Generate, 1));
      int seen = 0;
      for (const MemoryItem& it : plan.items) {
        if (it.name.rfind("embeddings (", 0) == 0) {
          EXPECT_EQ(it.bytes, m.embed_tokens().bytes()) << it.name;
          ++seen;
        }
        if (it.name.rfind("lm_head (", 0) == 0) {
          EXPECT_EQ(it.bytes, m.lm_head().bytes()) << it.name;
          ++seen;
        }
      }
      EXPECT_EQ(seen, 2);
    }

    const std::vector<int> prompt = {1, 17, 42, 99, 3, 77, 18};
    EXPECT_LE(max_rel_diff(logits_of(kept, prompt), logits_of(wide, prompt)), 1e-5) << "prompt logits";
    // one decoded token after the prompt: the GEMV
    auto next = [&](const Model& m) {
      InferenceState st(m, 16);
      forward(m, st, prompt, nullptr);
      std::vector<float> out(static_cast<size_t>(m.spec().vocab));
      const std::vector<int> one = {5};
      forward(m, st, one, out.data());
      return out;
    };
    EXPECT_EQ(next(kept), next(wide)) << "a decoded token's logits";
    // batched decoding (a few tokens: gemv_h16_multi, bit for bit the one-token GEMV per token:
    // test_linear_kernels): each sequence's logits those of decoding it alone, up to the
    // summation order of the other products (model.h forward_batch)
    {
      const Model nf4 = Model::load(f.spec, *f.tensors, ModelLoadOptions{});
      ASSERT_TRUE(nf4.lm_head().held_16bit());
      const Model& kept = nf4;
      const std::vector<int> toks = {5, 9, 33};
      std::vector<std::unique_ptr<InferenceState>> seqs;
      std::vector<InferenceState*> ptrs;
      for (size_t i = 0; i < toks.size(); ++i) {
        seqs.push_back(std::make_unique<InferenceState>(kept, 16));
        forward(kept, *seqs.back(), prompt, nullptr);
        ptrs.push_back(seqs.back().get());
      }
      InferenceState work(kept, 16);
      const int64_t V = kept.spec().vocab;
      std::vector<float> batch(toks.size() * static_cast<size_t>(V));
      forward_batch(kept, work, ptrs, toks, batch.data());
      for (size_t i = 0; i < toks.size(); ++i) {
        InferenceState alone(kept, 16);
        forward(kept, alone, prompt, nullptr);
        std::vector<float> one(static_cast<size_t>(V));
        forward(kept, alone, std::vector<int>{toks[i]}, one.data());
        const std::vector<float> row(batch.begin() + static_cast<std::ptrdiff_t>(i * V),
                                     batch.begin() + static_cast<std::ptrdiff_t>((i + 1) * V));
        EXPECT_LT(max_rel_diff(row, one), 1e-5) << "sequence " << i;
      }
    }
    test::expect_same_lora_step(kept, wide, prompt);
    fs::remove_all(dir);
  }
}

// An F16 GGUF's token embedding and output head (llama.cpp keeps them F16): held in 16 bits with
// float32 compute, the file's values exactly, and the planner says so.
TEST(HeldTables, F16GgufTablesAreHeldAsStored) {
  const std::string llama = std::string(QLORA_FIXTURE_DIR) + "/families/llama";
  ModelFiles src = open_model_files(llama + "/model.gguf");
  ModelLoadOptions o;
  o.quant.quantize = false;
  const Model base = Model::load(src.spec, *src.tensors, o);
  const std::string dir = temp_dir("qlora_f16gguf");
  const std::string path = dir + "/m.gguf";
  GgufExportOptions eo;
  eo.type = GgmlType::F16;
  eo.log = false;
  write_merged_gguf(base, src, {}, path, eo, false);
  const ModelFiles f = open_model_files(path);
  const Model kept = Model::load(f.spec, *f.tensors, o);
  ModelLoadOptions dense_o = o;
  dense_o.keep_q8_0_head = false;
  const Model dense = Model::load(f.spec, *f.tensors, dense_o);
  EXPECT_TRUE(kept.embed_tokens().held_16bit());
  EXPECT_EQ(kept.embed_tokens().held_dtype(), ComputeDType::F16);
  EXPECT_EQ(kept.lm_head().held_16bit(), !f.spec.tied_embeddings);
  EXPECT_FALSE(dense.embed_tokens().packed());
  EXPECT_EQ(all_rows(kept.embed_tokens()), all_rows(dense.embed_tokens()));
  EXPECT_EQ(all_rows(kept.lm_head()), all_rows(dense.lm_head()));
  EXPECT_TRUE(model_source_tables(path, o).embed_16bit);
  fs::remove_all(dir);
}
