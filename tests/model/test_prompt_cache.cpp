// generate() with a PromptCache (model/generate.h), as `qlora chat` uses it between turns:
// a prompt that extends the previous prompt + answer runs only its new tokens, and every
// answer is the one generate() gives without a cache (stories260K, greedy); an unrelated
// prompt reuses only the shared prefix; a failed call empties the cache.
#include <gtest/gtest.h>

#include "base/error.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/model_test_util.h"

using namespace qlora;
using namespace qlora::test;

namespace {

std::vector<int> ids_of(const Tokenizer& t, const std::string& s, bool bos) {
  EncodeOptions e;
  e.add_special_tokens = bos;
  const auto v = t.encode(s, e);
  return {v.begin(), v.end()};
}

}  // namespace

TEST(PromptCache, ReusesTheSharedPrefixAndChangesNoAnswer) {
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.quantize = false;
  const Model model = Model::load(f.spec, *f.tensors, o);
  const Tokenizer& tok = *f.tokenizer;
  GenerationOptions g;
  g.max_new_tokens = 30;
  g.sampling.temperature = 0;
  PromptCache cache;

  const std::vector<int> a = ids_of(tok, "Once upon a time", true);
  const GenerationResult r1 = generate(model, &tok, a, g, {}, &cache);
  EXPECT_EQ(r1.prompt_tokens_reused, 0);
  EXPECT_EQ(r1.output_ids, generate(model, &tok, a, g).output_ids);
  EXPECT_EQ(cache.ids.size(), a.size() + static_cast<size_t>(r1.decode_steps));

  // The next turn: everything so far, then new text.
  std::vector<int> b = a;
  b.insert(b.end(), r1.output_ids.begin(), r1.output_ids.end());
  const std::vector<int> more = ids_of(tok, " The next day, Lily", false);
  b.insert(b.end(), more.begin(), more.end());
  const GenerationResult r2 = generate(model, &tok, b, g, {}, &cache);
  EXPECT_EQ(r2.prompt_tokens_reused, static_cast<int64_t>(a.size()) + r1.decode_steps);
  EXPECT_EQ(r2.output_ids, generate(model, &tok, b, g).output_ids);

  // An unrelated prompt: only the common start (BOS) is reused.
  const std::vector<int> c = ids_of(tok, "Tom had a big dog", true);
  const GenerationResult r3 = generate(model, &tok, c, g, {}, &cache);
  EXPECT_LE(r3.prompt_tokens_reused, 1);
  EXPECT_EQ(r3.output_ids, generate(model, &tok, c, g).output_ids);

  // A failing call leaves an empty cache behind, not a wrong one.
  GenerationOptions bad = g;
  bad.sampling.temperature = -1;
  EXPECT_THROW(generate(model, &tok, c, bad, {}, &cache), Error);
  EXPECT_TRUE(cache.ids.empty());
  EXPECT_EQ(generate(model, &tok, c, g, {}, &cache).output_ids, r3.output_ids);
}
