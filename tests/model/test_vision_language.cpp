// Vision-language checkpoints (formats/hf_wrapper.h): Gemma 3 4B+ (gemma3), Mistral Small
// 3.1 (mistral3) and LLaVA (llava), whose language model runs here on text. The fixtures
// (tools/make_family_fixtures.py gemma3 mistral3 llava) are transformers' own saves of tiny
// random models with a vision tower; test_families.cpp runs the whole family suite on them
// (logits, NF4, PEFT adapters, gradients, loss curves, merges, bitsandbytes checkpoints).
// Here: what is particular to the wrapper.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "export/merge.h"
#include "formats/hf_config.h"
#include "formats/hf_wrapper.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "lora/adapter_loader.h"
#include "lora/lora.h"
#include "lora/lora_model.h"
#include "lora/peft_adapter.h"
#include "model/model.h"
#include "model/model_fixture_logits.h"
#include "model/model_test_util.h"

using namespace qlora;
using namespace qlora::test;
using nlohmann::json;

namespace {

std::string family_dir(const std::string& f) { return std::string(QLORA_FIXTURE_DIR) + "/families/" + f; }



std::vector<int> fixture_prompt(const std::string& f) {
  return json::parse(read_file(family_dir(f) + "/reference.json")).at("prompt").get<std::vector<int>>();
}

std::vector<float> fixture_logits(const std::string& f, const char* which) {
  const SafeTensorsFile l(family_dir(f) + "/logits.safetensors");
  return l.to_float(l.at(which));
}

// float32 rounding of the same forward (test_families.cpp's bounds: Gemma 4's unscaled,
// peaked attention takes the looser one there).
void expect_logits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0, peak = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    peak = std::max(peak, std::fabs(double(want[i])));
  }
  EXPECT_LE(worst, (what.starts_with("gemma4") ? 1.2e-5 : 4e-6) * peak) << what;
}

// A copy of the safetensors file `from` with each key passed through `rename`.
void write_renamed(const std::string& from, const std::string& to, std::string (*rename)(const std::string&)) {
  const SafeTensorsFile f(from);
  SafeTensorsWriter w;
  for (const SafeTensorInfo& t : f.tensors()) {
    const auto d = f.data(t);
    w.add_owned(rename(t.name), t.dtype, t.shape, std::vector<uint8_t>(d.begin(), d.end()));
  }
  w.write(to);
}

const char* const kWrapped[] = {"gemma3", "mistral3", "llava", "qwen2_5_vl", "qwen3_vl", "gemma4", "lfm2_vl"};

TEST(VisionLanguage, TheSpecIsTheLanguageModelsWithTheWrapperNamed) {
  const struct {
    const char* fixture;
    const char* family;
    bool tied;
  } cases[] = {{"gemma3", "gemma3_text", true},
               // (Mistral Small 3.1's form: no tie_word_embeddings in config.json, whose class
               // default ties, but the file holds lm_head: transformers unties it, and so do we)
               {"mistral3", "mistral", false},
               {"llava", "llama", false},
               // (text_config's own model_types, qwen2_5_vl_text / qwen3_vl_text, run as qwen2 / qwen3;
               // their multimodal rotary is the plain one on text)
               {"qwen2_5_vl", "qwen2", false},
               {"qwen3_vl", "qwen3", false},
               // (Gemma 4: a vision tower and its embedder, embed_vision, beside the language model)
               {"gemma4", "gemma4_text", true},
               // (LFM2-VL: a SigLIP2 tower and a projector beside LFM2)
               {"lfm2_vl", "lfm2", true}};
  for (const auto& c : cases) {
    const ModelFiles files = open_model_files(family_dir(c.fixture));
    EXPECT_EQ(files.spec.hf_wrapper, c.fixture);
    EXPECT_EQ(files.spec.family, c.family);
    EXPECT_EQ(files.spec.tied_embeddings, c.tied) << c.fixture;
    EXPECT_FALSE(files.tensors->other_part_names().empty()) << c.fixture << ": the vision tower's tensors";
    for (const std::string& n : files.tensors->names())
      EXPECT_TRUE(n.starts_with("model.") || n.starts_with("lm_head.")) << n;
  }
}

// PEFT's all-linear on the wrapper model adapts the vision tower too. Text-only runs never
// reach it: the adapter loads with those modules set aside and gives PeftModel's logits.
TEST(VisionLanguage, AllLinearAdapterRunsItsLanguageModelPart) {
  for (const char* f : kWrapped) {
    Model m = load_unquantized(family_dir(f));
    const LoadedAdapter a = load_adapter(family_dir(f) + "/vision_adapter", m);
    EXPECT_FALSE(a.other_part_modules.empty()) << f;
    for (const std::string& p : a.other_part_modules) EXPECT_EQ(p.find("language_model"), std::string::npos) << p;
    for (const LoraLayer& l : a.lora->layers()) EXPECT_TRUE(l.module_path.starts_with("model.language_model.")) << l.module_path;
    m.set_adapter(a.lora.get());
    expect_logits(all_prompt_logits(m, fixture_prompt(f)), fixture_logits(f, "vision_peft_logits"), std::string(f) + " vision adapter");
    m.set_adapter(nullptr);
  }
}

// Adapters saved with transformers < 4.52 name the language model "language_model.model.";
// they load as the same adapter.
TEST(VisionLanguage, OlderTransformersAdapterKeysLoad) {
  const std::string f = "gemma3";
  TempDir tmp("vl_old_keys");
  const std::string dir = tmp.path("adapter");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(family_dir(f) + "/initial_adapter/adapter_config.json", dir + "/adapter_config.json");
  write_renamed(family_dir(f) + "/initial_adapter/adapter_model.safetensors", dir + "/adapter_model.safetensors",
                [](const std::string& k) {
                  std::string s = k;
                  const std::string from = "base_model.model.model.language_model.", to = "base_model.model.language_model.model.";
                  if (s.starts_with(from)) s = to + s.substr(from.size());
                  return s;
                });
  Model m = load_unquantized(family_dir(f));
  const LoadedAdapter a = load_adapter(dir, m);
  EXPECT_TRUE(a.other_part_modules.empty());
  m.set_adapter(a.lora.get());
  expect_logits(all_prompt_logits(m, fixture_prompt(f)), fixture_logits(f, "peft_logits"), "gemma3 old adapter keys");
  m.set_adapter(nullptr);
}

// transformers' module paths as file names ("model.language_model.", "model.vision_tower.")
// load as the same model, and a merge writes the vision part back under the names it had.
TEST(VisionLanguage, ModulePathFormFilesLoadAndMergeKeepsTheVisionPart) {
  const std::string f = "llava";
  TempDir tmp("vl_module_form");
  const std::string dir = tmp.path("model");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(family_dir(f) + "/config.json", dir + "/config.json");
  write_renamed(family_dir(f) + "/model.safetensors", dir + "/model.safetensors", [](const std::string& k) {
    if (k.starts_with("language_model.model.")) return "model.language_model." + k.substr(21);
    if (k.starts_with("language_model.lm_head.")) return k.substr(15);
    return "model." + k;
  });
  const Model m = load_unquantized(dir);
  expect_logits(all_prompt_logits(m, fixture_prompt(f)), fixture_logits(f, "logits"), "llava module-path names");

  ModelFiles files = open_model_files(dir);
  HfExportOptions eo;
  eo.dtype = DType::F32;
  eo.log = false;
  write_merged_hf_dir(m, files, {}, tmp.path("merged"), eo, false);
  const SafeTensorsFile src(dir + "/model.safetensors"), out(tmp.path("merged/model.safetensors"));
  int vision = 0;
  for (const SafeTensorInfo& t : src.tensors()) {
    if (t.name.starts_with("model.language_model.") || t.name.starts_with("lm_head.")) continue;
    ++vision;
    ASSERT_NE(out.find(t.name), nullptr) << t.name << " was not carried over";
    EXPECT_EQ(out.to_float(out.at(t.name)), src.to_float(t)) << t.name;
  }
  EXPECT_GT(vision, 0);
  const json cfg = json::parse(read_file(tmp.path("merged/config.json")));
  EXPECT_EQ(cfg.at("model_type"), "llava");
  EXPECT_EQ(cfg.at("text_config").at("model_type"), "llama");
  EXPECT_TRUE(cfg.contains("vision_config"));
  expect_logits(all_prompt_logits(load_unquantized(tmp.path("merged")), fixture_prompt(f)), fixture_logits(f, "logits"),
                "llava merged");
}

// Qwen2.5-VL's older config.json keeps the language model's keys at the top level, beside
// vision_config, its rotary as rope_scaling {"type": "mrope"}: the same model.
TEST(VisionLanguage, Qwen25VlFlatConfigLoads) {
  const std::string f = "qwen2_5_vl";
  json cfg = json::parse(read_file(family_dir(f) + "/config.json"));
  json flat = cfg.at("text_config");
  flat.erase("model_type");
  flat.erase("rope_parameters");
  flat["rope_theta"] = cfg.at("text_config").at("rope_parameters").at("rope_theta");
  flat["rope_scaling"] = {{"type", "mrope"}, {"mrope_section", {2, 3, 3}}};
  flat["model_type"] = "qwen2_5_vl";
  flat["vision_config"] = cfg.at("vision_config");
  flat["architectures"] = cfg.at("architectures");
  TempDir tmp("vl_flat");
  const std::string dir = tmp.path("model");
  std::filesystem::create_directories(dir);
  write_file(dir + "/config.json", flat.dump(2));
  std::filesystem::create_symlink(family_dir(f) + "/model.safetensors", dir + "/model.safetensors");
  const Model m = load_unquantized(dir);
  EXPECT_EQ(m.spec().family, "qwen2");
  expect_logits(all_prompt_logits(m, fixture_prompt(f)), fixture_logits(f, "logits"), "qwen2_5_vl flat config");
}

TEST(VisionLanguage, ConfigsThatDoNotDescribeALanguageModelAreRefused) {
  const json base = json::parse(read_file(family_dir("gemma3") + "/config.json"));
  auto expect_refused = [](const json& j, const std::string& needle) {
    try {
      spec_from_hf_config(j, "config.json");
      ADD_FAILURE() << "accepted: " << j.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  json no_text = base;
  no_text.erase("text_config");
  expect_refused(no_text, "text_config");
  json nested = base;
  nested["text_config"]["model_type"] = "llava";
  expect_refused(nested, "not a language model");
  json unknown = base;
  unknown["text_config"]["model_type"] = "no_such_model";
  expect_refused(unknown, "no_such_model");
}

// PEFT's target_modules as one string is a regular expression over whole module paths
// (re.fullmatch); "q_proj" alone matches none, and Python-only syntax is refused by name.
TEST(VisionLanguage, RegexTargetModulesFullMatchModulePaths) {
  const Model m = load_unquantized(family_dir("gemma3"));
  LoraConfig c;
  c.r = 4;
  c.dropout = 0.0;
  c.target_regex = R"(.*language_model.*\.(q_proj|down_proj))";
  const LoraModel lm(m, c);
  EXPECT_EQ(lm.layers().size(), 2u * static_cast<size_t>(m.spec().n_layers));
  for (const LoraLayer& l : lm.layers())
    EXPECT_TRUE(l.module_path.ends_with(".q_proj") || l.module_path.ends_with(".down_proj")) << l.module_path;
  c.target_regex = "q_proj";
  EXPECT_THROW(LoraModel(m, c), Error);
  json cfg = json::parse(read_file(family_dir("gemma3") + "/initial_adapter/adapter_config.json"));
  cfg["target_modules"] = "(?P<name>q_proj)";
  try {
    parse_peft_adapter_config(cfg, "adapter_config.json");
    ADD_FAILURE() << "a Python-only pattern was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular expression"), std::string::npos) << e.what();
  }
}

// Module names such as q_proj would also adapt the vision tower in PEFT: an adapter trained
// on the language model lists its modules by full path.
TEST(VisionLanguage, SavedAdapterNamesOnlyTheLanguageModel) {
  const Model m = load_unquantized(family_dir("mistral3"));
  LoraConfig c;
  c.r = 4;
  c.dropout = 0.0;
  c.target_modules = {"q_proj", "v_proj"};
  const LoraModel lm(m, c);
  TempDir tmp("vl_save");
  save_peft_adapter(tmp.path("a"), lm.config(), "base", lm.layers());
  const json cfg = json::parse(read_file(tmp.path("a/adapter_config.json")));
  ASSERT_TRUE(cfg.at("target_modules").is_array());
  EXPECT_EQ(cfg.at("target_modules").size(), 2u * static_cast<size_t>(m.spec().n_layers));
  for (const auto& t : cfg.at("target_modules"))
    EXPECT_TRUE(t.get<std::string>().starts_with("model.language_model.layers.")) << t;
}

}  // namespace
