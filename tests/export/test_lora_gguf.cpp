// `qlora export-adapter` (export/lora_gguf.h): PEFT's stories260K adapter written as
// llama.cpp's LoRA GGUF and read back by our GGUF parser: the metadata llama.cpp checks
// (general.type adapter, adapter.type lora, adapter.lora.alpha as float32, the base's
// architecture), and for every adapted Linear lora_a = A exactly and lora_b = B with q/k rows
// in llama.cpp's rotary order (undone here to compare). llama.cpp itself applying the file
// to a base GGUF: tools/check_merge_gguf.py.
#include <gtest/gtest.h>

#include <cmath>

#include "base/error.h"
#include "export/lora_gguf.h"
#include "formats/gguf.h"
#include "formats/model_loader.h"
#include "lora/lora.h"
#include "model/model.h"
#include "model/model_test_util.h"

using namespace qlora;
using namespace qlora::test;

TEST(LoraGguf, PeftAdapterRoundTripsInLlamaCppLayout) {
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.quantize = true;
  const Model model = Model::load(f.spec, *f.tensors, o);
  const LoadedAdapter a =
      load_adapter(std::string(QLORA_FIXTURE_DIR) + "/train_parity/stories260k/initial_adapter", model);
  TempDir tmp("lora_gguf");
  write_lora_gguf(a, f.spec, tmp.path("a.gguf"), GgmlType::F32, false);
  EXPECT_THROW(write_lora_gguf(a, f.spec, tmp.path("a.gguf"), GgmlType::F32, false), Error);  // exists

  const GgufFile g(tmp.path("a.gguf"));
  EXPECT_EQ(g.get_string("general.type"), "adapter");
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_string("adapter.type"), "lora");
  EXPECT_EQ(g.at("adapter.lora.alpha").type, GgufValueType::F32);
  EXPECT_EQ(g.get_f32("adapter.lora.alpha"), static_cast<float>(a.lora->config().alpha));
  EXPECT_EQ(g.tensors().size(), 2 * a.lora->layers().size());
  for (const LoraLayer& L : a.lora->layers()) {
    const std::string base = *hf_to_gguf_tensor_name(L.module_path + ".weight");
    const GgufTensorInfo& ta = g.tensor(base + ".lora_a");
    const GgufTensorInfo& tb = g.tensor(base + ".lora_b");
    EXPECT_EQ(ta.dims, (std::vector<int64_t>{L.in, L.r})) << base;   // ne0 = in: what llama.cpp checks
    EXPECT_EQ(tb.dims, (std::vector<int64_t>{L.r, L.out})) << base;  // ne1 = out
    EXPECT_EQ(g.tensor_to_f32(ta), L.A) << base;
    std::vector<float> b = g.tensor_to_f32(tb);
    const bool q = L.module_path.ends_with("q_proj"), k = L.module_path.ends_with("k_proj");
    if (q || k) {
      std::vector<float> hf(b.size());
      unpermute_rope_rows(b, hf, L.out, L.r, q ? f.spec.n_heads : f.spec.n_kv_heads);
      EXPECT_NE(b, L.B) << base << ": q/k rows are reordered";
      b.swap(hf);
    }
    EXPECT_EQ(b, L.B) << base;
  }
}
