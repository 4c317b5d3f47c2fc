// Interoperability with checkpoints transformers itself saves for a bitsandbytes 4-bit model
// (issue 3). tests/quant/test_quant_state.cpp covers bnb.nn.Linear4bit state dicts built
// layer by layer; this file covers what a real AutoModelForCausalLM.save_pretrained of
// SmolLM2-135M loaded with BitsAndBytesConfig(load_in_4bit=True, ...) writes on top of that:
//
//   * two Linear layers cut byte for byte out of its model.safetensors (one double-quantized,
//     one not), with bitsandbytes' dequantization of their first rows and the fp32 rows
//     they were quantized from;
//   * the tensor layout of the whole checkpoint (which tensors are 4-bit, the names, dtypes
//     and shapes of the quant-state tensors, no lm_head with tied embeddings);
//   * config.json's quantization_config for nf4+double quant, nf4 and fp4.
//
// The fixtures come from tools/check_bnb_interop.py --write-fixtures (which also runs the
// end-to-end checks CI cannot: transformers loading `qlora quantize` output and qlora
// generating from transformers' checkpoint).
#include <gtest/gtest.h>

#include <unistd.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/dtype.h"
#include "base/mapped_file.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "quant/quant_state.h"
#include "quant/quantize_checkpoint.h"

using namespace qlora;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string fixture(const std::string& name) { return std::string(QLORA_FIXTURE_DIR) + "/interop/" + name; }

const json& model_json() {
  static const json j = json::parse(read_text_file(fixture("smollm2_bnb_model.json")));
  return j;
}

fs::path tmp_root() {
  static const fs::path root = fs::temp_directory_path() / ("qlora_bnb_interop_test_" + std::to_string(::getpid()));
  // Removed when the test program exits.
  static const struct Cleanup {
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(root, ec);
    }
  } cleanup;
  return root;
}

std::string tmp_dir(const std::string& name) {
  auto d = tmp_root() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::vector<uint8_t> bytes_of(const SafeTensorsFile& f, const std::string& name) {
  auto d = f.data(f.at(name));
  return {d.begin(), d.end()};
}

std::vector<float> floats_of(const SafeTensorsFile& f, const std::string& name) {
  const SafeTensorInfo& t = f.at(name);
  EXPECT_EQ(t.dtype, DType::F32) << name;
  auto d = f.data(t);
  std::vector<float> v(d.size() / 4);
  if (!v.empty()) std::memcpy(v.data(), d.data(), v.size() * 4);
  return v;
}

int64_t first_bit_mismatch(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) return static_cast<int64_t>(i);
  return -1;
}

struct Layer {
  std::string weight, checkpoint;
  QuantType type;
  bool nested;
  int blocksize;
  std::vector<int64_t> shape;
  int64_t rows;
};

std::vector<Layer> layers() {
  SafeTensorsFile ref(fixture("smollm2_bnb_reference.safetensors"));
  std::vector<Layer> out;
  for (const json& l : json::parse(ref.metadata().at("layers")))
    out.push_back({l["weight"], l["checkpoint"], quant_type_from_string(l["quant_type"].get<std::string>()),
                   l["nested"], l["blocksize"], l["shape"].get<std::vector<int64_t>>(), l["rows"]});
  return out;
}

// (name, dtype, shape) of a layout entry; the quant-state JSON's length depends on the
// digits of nested_offset, so its shape is left out (-1).
using Entry = std::tuple<std::string, std::string, std::vector<int64_t>>;
Entry entry(const std::string& name, const std::string& dtype, std::vector<int64_t> shape) {
  if (name.find(".quant_state.bitsandbytes__") != std::string::npos) shape = {-1};
  return {name, dtype, shape};
}
std::set<Entry> layout_entries(const json& layout) {
  std::set<Entry> s;
  for (const char* part : {"non_layer", "layer0"})
    for (const json& e : layout[part]) s.insert(entry(e[0], e[1], e[2].get<std::vector<int64_t>>()));
  return s;
}

QuantizeOptions options_for(const json& o) {
  QuantizeOptions opt;
  opt.type = quant_type_from_string(o["quant_type"].get<std::string>());
  opt.double_quant = o["double_quant"];
  opt.blocksize = o["blocksize"];
  opt.compute_dtype = compute_dtype_from_string(o["compute_dtype"].get<std::string>());
  return opt;
}

}  // namespace

// The layers transformers saved read back to exactly what bitsandbytes dequantizes.
TEST(BnbCheckpointInterop, ReadsLayersTransformersSaved) {
  SafeTensorsFile f(fixture("smollm2_bnb_layers.safetensors"));
  SafeTensorsFile ref(fixture("smollm2_bnb_reference.safetensors"));
  const auto ls = layers();
  ASSERT_EQ(ls.size(), 2u);
  EXPECT_NE(ls[0].nested, ls[1].nested) << "the fixture should hold one nested and one plain state";
  for (const Layer& l : ls) {
    SCOPED_TRACE(l.weight + " from " + l.checkpoint);
    ASSERT_TRUE(is_4bit_in_safetensors(f, l.weight));
    const Quantized4bit q = read_4bit_from_safetensors(f, l.weight);
    EXPECT_EQ(q.state.type, l.type);
    EXPECT_EQ(q.state.nested, l.nested);
    EXPECT_EQ(q.state.blocksize, l.blocksize);
    EXPECT_EQ(q.state.dtype, ComputeDType::F32);
    EXPECT_EQ(q.state.shape, l.shape);
    EXPECT_EQ(static_cast<int64_t>(q.packed.size()), q.state.numel() / 2);

    std::vector<float> out(static_cast<size_t>(q.state.numel()));
    dequantize_tensor_4bit(q, out.data());
    out.resize(static_cast<size_t>(l.rows * l.shape[1]));
    const std::vector<float> want = floats_of(ref, l.weight + ".dequantized_rows");
    EXPECT_EQ(first_bit_mismatch(out, want), -1);
  }
}

// Our quantizer turns the fp32 rows into the very codes transformers saved (codes are
// computed from the float absmax, before any double quantization, so rows that fill whole
// blocks reproduce the saved prefix), and for a plain state the very absmax too.
TEST(BnbCheckpointInterop, QuantizingTheSourceRowsGivesTheSavedCodes) {
  SafeTensorsFile f(fixture("smollm2_bnb_layers.safetensors"));
  SafeTensorsFile ref(fixture("smollm2_bnb_reference.safetensors"));
  for (const Layer& l : layers()) {
    SCOPED_TRACE(l.weight);
    const std::vector<float> src = floats_of(ref, l.weight + ".source_rows");
    const std::vector<int64_t> shape = {l.rows, l.shape[1]};
    ASSERT_EQ((l.rows * l.shape[1]) % l.blocksize, 0);
    const Quantized4bit mine = quantize_tensor_4bit(src.data(), shape, l.type, l.blocksize, false, ComputeDType::F32);
    const Quantized4bit saved = read_4bit_from_safetensors(f, l.weight);
    ASSERT_LE(mine.packed.size(), saved.packed.size());
    EXPECT_TRUE(std::equal(mine.packed.begin(), mine.packed.end(), saved.packed.begin()));
    if (!l.nested) {
      ASSERT_LE(mine.state.absmax.size(), saved.state.absmax.size());
      const std::vector<float> prefix(saved.state.absmax.begin(),
                                      saved.state.absmax.begin() + static_cast<int64_t>(mine.state.absmax.size()));
      EXPECT_EQ(first_bit_mismatch(mine.state.absmax, prefix), -1);
    }
  }
}

// Writing the state back gives transformers' tensors byte for byte, quant-state JSON included.
TEST(BnbCheckpointInterop, RewritesTheSavedBytesExactly) {
  SafeTensorsFile f(fixture("smollm2_bnb_layers.safetensors"));
  for (const Layer& l : layers()) {
    SCOPED_TRACE(l.weight);
    SafeTensorsWriter w;
    write_4bit_to_safetensors(w, l.weight, read_4bit_from_safetensors(f, l.weight));
    const std::string p = tmp_dir("rewrite") + "/layer.safetensors";
    w.write(p);
    SafeTensorsFile g(p);
    size_t count = 0;
    for (const SafeTensorInfo& t : f.tensors()) {
      if (t.name != l.weight && t.name.rfind(l.weight + ".", 0) != 0) continue;
      ++count;
      const SafeTensorInfo* o = g.find(t.name);
      ASSERT_NE(o, nullptr) << "we do not write " << t.name;
      EXPECT_EQ(o->dtype, t.dtype) << t.name;
      EXPECT_EQ(o->shape, t.shape) << t.name;
      const auto a = bytes_of(g, t.name), b = bytes_of(f, t.name);
      EXPECT_EQ(a, b) << t.name
                      << (t.name.find("quant_state") != std::string::npos
                              ? "\n ours:   " + std::string(a.begin(), a.end()) + "\n theirs: " +
                                    std::string(b.begin(), b.end())
                              : std::string());
    }
    EXPECT_EQ(count, g.tensors().size()) << "we write tensors transformers does not";
    EXPECT_EQ(count, l.nested ? 6u : 4u);
  }
}

// The whole-model layout: from the fp32 checkpoint's tensors, `qlora quantize` picks the
// same tensors to quantize as transformers (not the embeddings, not the norms; lm_head is
// tied and absent from both) and writes the same quant-state tensors with the same dtypes
// and shapes.
TEST(BnbCheckpointInterop, WholeModelLayoutMatchesTransformersSavePretrained) {
  const json& m = model_json();
  const json& src = m["source_layout"];
  for (const auto& [name, saved] : m["saved_layout"].items()) {
    SCOPED_TRACE(name);
    const QuantizeOptions opt = options_for(m["options"][name]);
    EXPECT_EQ(saved["n_layers"], src["n_layers"]);
    EXPECT_EQ(saved["metadata"], json({{"format", "pt"}}));

    std::set<Entry> ours;
    SafeTensorsWriter w;
    for (const char* part : {"non_layer", "layer0"}) {
      for (const json& e : src[part]) {
        const std::string n = e[0];
        const DType dt = *dtype_from_name(e[1].get<std::string>());
        const auto shape = e[2].get<std::vector<int64_t>>();
        if (!should_quantize_4bit(n, dt, shape, opt)) {
          ours.insert(entry(n, e[1], shape));
          continue;
        }
        int64_t numel = 1;
        for (auto d : shape) numel *= d;
        std::vector<float> x(static_cast<size_t>(numel));
        for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 97) - 48) * 1e-3f;
        write_4bit_to_safetensors(w, n, quantize_tensor_4bit(x.data(), shape, opt.type, opt.blocksize,
                                                             opt.double_quant, opt.compute_dtype));
      }
    }
    const std::string p = tmp_dir("layout_" + name) + "/layer0.safetensors";
    w.write(p);
    SafeTensorsFile g(p);
    for (const SafeTensorInfo& t : g.tensors()) ours.insert(entry(t.name, std::string(dtype_name(t.dtype)), t.shape));

    const std::set<Entry> theirs = layout_entries(saved);
    for (const Entry& e : theirs) EXPECT_TRUE(ours.count(e)) << "transformers writes " << std::get<0>(e) << " "
                                                             << std::get<1>(e) << ", we do not";
    for (const Entry& e : ours) EXPECT_TRUE(theirs.count(e)) << "we write " << std::get<0>(e) << " "
                                                             << std::get<1>(e) << ", transformers does not";
    // Whole file: the layer-0 pattern repeats n_layers times (the generator checked that).
    const int64_t per_layer = static_cast<int64_t>(saved["layer0"].size());
    EXPECT_EQ(saved["n_tensors"].get<int64_t>(),
              static_cast<int64_t>(saved["non_layer"].size()) + per_layer * saved["n_layers"].get<int64_t>());
  }
}

// What the loader expects of a model (ModelSpec::tensors) is what transformers saved:
// every tensor present under its name, 4-bit ones with their original shape in the quant
// state, and no lm_head.weight because the embeddings are tied.
TEST(BnbCheckpointInterop, ModelSpecFindsEveryTensorOfTheSavedModel) {
  const json& m = model_json();
  const ModelSpec spec = spec_from_hf_config(m["config"], "smollm2_bnb_model.json:config");
  EXPECT_TRUE(spec.tied_embeddings);
  std::map<std::string, std::vector<int64_t>> saved;
  for (const char* part : {"non_layer", "layer0"})
    for (const json& e : m["saved_layout"]["nf4-dq"][part]) saved[e[0]] = e[2].get<std::vector<int64_t>>();
  int64_t checked = 0;
  for (const TensorSpec& t : spec.tensors()) {
    if (t.name.rfind("model.layers.", 0) == 0 && t.name.rfind("model.layers.0.", 0) != 0) continue;
    ++checked;
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(saved.count(t.name)) << "missing from transformers' checkpoint";
    if (saved.count(t.name + ".quant_state.bitsandbytes__nf4")) {
      int64_t numel = 1;
      for (auto d : t.shape) numel *= d;
      EXPECT_EQ(saved[t.name], (std::vector<int64_t>{numel / 2, 1}));  // packed uint8 codes
    } else {
      EXPECT_EQ(saved[t.name], t.shape);
    }
  }
  EXPECT_EQ(checked, 2 + 9);  // embed_tokens, norm; 2 norms + 7 Linear in layer 0
  EXPECT_FALSE(saved.count("lm_head.weight"));
}

// `qlora quantize` on a directory writes the quantization_config transformers writes, but
// for llm_int8_skip_modules: transformers saves null (and keeps the output embeddings in
// full precision by itself on load), we save ["lm_head"]; both load the same model.
TEST(BnbCheckpointInterop, QuantizationConfigMatchesTransformers) {
  const json& m = model_json();
  json base = m["config"];
  base.erase("quantization_config");
  for (const auto& [name, theirs] : m["quantization_config"].items()) {
    SCOPED_TRACE(name);
    const std::string in = tmp_dir("qc_in_" + name), out = tmp_dir("qc_out_" + name);
    {
      std::ofstream(in + "/config.json") << base.dump(2);
      SafeTensorsWriter w;
      std::vector<float> x(64 * 4);
      for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) * 0.01f - 1.0f;
      w.add_vector("model.layers.0.mlp.up_proj.weight", DType::F32, {4, 64}, x);
      w.write(in + "/model.safetensors");
    }
    quantize_checkpoint(in, out, options_for(m["options"][name]));
    const json cfg = json::parse(read_text_file(out + "/config.json"));
    ASSERT_TRUE(cfg.contains("quantization_config"));
    const json& ours = cfg["quantization_config"];
    std::set<std::string> keys;
    for (const auto& [k, v] : ours.items()) keys.insert(k);
    for (const auto& [k, v] : theirs.items()) keys.insert(k);
    for (const std::string& k : keys) {
      ASSERT_TRUE(ours.contains(k)) << "we do not write " << k;
      ASSERT_TRUE(theirs.contains(k)) << "transformers does not write " << k;
      if (k == "llm_int8_skip_modules" && theirs[k].is_null() && ours[k] == json::array({"lm_head"})) continue;
      EXPECT_EQ(ours[k], theirs[k]) << k;
    }
    json rest = cfg;
    rest.erase("quantization_config");
    EXPECT_EQ(rest, base) << "the rest of config.json is copied unchanged";
  }
}

// transformers >= 5 writes rope_theta inside "rope_parameters" only
// ({"rope_theta": 100000.0, "rope_type": "default"}); read at the top level alone, SmolLM2
// runs with the default 10000 and generates different text (tools/check_bnb_interop.py,
// check d). Enable once src/formats/hf_config.cpp reads rope_parameters.
TEST(BnbCheckpointInterop, ReadsRopeThetaFromTransformers5RopeParameters) {
  const json& m = model_json();
  ASSERT_FALSE(m["config"].contains("rope_theta"));
  ASSERT_TRUE(m["config"].contains("rope_parameters"));
  const ModelSpec spec = spec_from_hf_config(m["config"], "smollm2_bnb_model.json:config");
  EXPECT_EQ(spec.rope_theta, m["config"]["rope_parameters"]["rope_theta"].get<float>());
}
