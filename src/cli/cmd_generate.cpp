// `qlora generate`: load a model (quantizing it to 4-bit on the way in unless --quant none)
// and continue a prompt, streaming the text to stdout; statistics go to stderr.
// --adapter DIR applies a PEFT LoRA adapter (as `qlora train` or PEFT save_pretrained
// writes it) on top of the frozen weights, unmerged, as PEFT does in eval mode.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/dtype.h"
#include "base/error.h"
#include "base/parallel.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "cli/model_flags.h"
#include "cli/sampling_flags.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "lora/peft_adapter.h"
#include "memory/memory_plan.h"
#include "model/generate.h"
#include "model/model.h"
#include "quant/blockwise.h"
#include "lora/adapter_loader.h"
#include "train/chat_template.h"
#include "lora/lora_model.h"

namespace {

struct Options {
  qlora::cli::ModelFlags m;
  std::string prompt, adapter;
  int64_t n = 128;
  int64_t parallel = 1;  // --parallel: continuations generated at once
  qlora::cli::SamplingFlags s;
  bool no_echo = false;
  bool ignore_eos = false;  // --ignore-eos (always on for a random model)
  bool escape = false;
  bool chat = false;     // --chat: the prompt is a user message rendered with the chat template
  std::string system;    // --system: a system message before it
  bool quiet = false;
  std::string max_memory;  // --max-memory: refuse up front when the planner says it cannot fit
};

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// --parallel N: N continuations of the prompt decoded together (seeds seed, seed + 1, ...),
// printed one after another once all have finished.
int run_parallel(const Options& o, const qlora::Model& model, const qlora::Tokenizer& tok, const std::string& prompt,
                 const std::vector<int>& prompt_ids, qlora::GenerationOptions gen) {
  gen.echo_prompt = false;
  std::vector<std::vector<int>> prompts(static_cast<size_t>(o.parallel), prompt_ids);
  std::vector<qlora::GenerationOptions> opts;
  for (int64_t i = 0; i < o.parallel; ++i) {
    opts.push_back(gen);
    opts.back().sampling.seed = gen.sampling.seed + static_cast<uint64_t>(i);
  }
  const qlora::BatchGenerationResult b = qlora::generate_batch(model, &tok, prompts, opts);
  for (size_t i = 0; i < b.results.size(); ++i) {
    const qlora::GenerationResult& r = b.results[i];
    std::printf("%s=== %zu/%zu: %zu tokens, stop: %s ===\n%s%s\n", i ? "\n" : "", i + 1, b.results.size(),
                r.output_ids.size(), qlora::stop_reason_name(r.stop), o.no_echo ? "" : prompt.c_str(), r.text.c_str());
  }
  std::fflush(stdout);
  if (!o.quiet) {
    int64_t forked = 0;
    for (const qlora::GenerationResult& r : b.results) forked += r.prompt_tokens_reused > 0;
    std::fprintf(stderr, "\nprompt: %zu tokens in %.3f s (run once; %lld continuations forked from it)\n",
                 prompt_ids.size(), b.prompt_seconds, static_cast<long long>(forked));
    std::fprintf(stderr,
                 "generation: %lld tokens in %lld batched passes, %.3f s (%.1f tokens/s over all %lld sequences)\n",
                 static_cast<long long>(b.decoded_tokens), static_cast<long long>(b.decode_passes), b.decode_seconds,
                 b.decode_tokens_per_second(), static_cast<long long>(o.parallel));
    std::fprintf(stderr, "threads: %d, peak memory: %.1f MiB\n", qlora::max_threads(), peak_rss_mib());
    qlora::cli::report_device_memory(model, o.quiet);
  }
  return 0;
}

int run(const Options& o, CLI::App& app) {
  using Clock = std::chrono::steady_clock;

  // Checked here rather than with CLI::NonNegativeNumber, whose message prints the range's
  // upper end, DBL_MAX, as 309 digits.
  if (o.n < 0) qlora::fail("-n/--n-predict", "must be >= 0 (got " + std::to_string(o.n) + ")");
  if (o.parallel < 1 || o.parallel > 64) qlora::fail("--parallel", "must be in 1..64");
  if (!o.system.empty() && !o.chat)
    qlora::fail("--system", "is the chat template's system message: give --chat too (without it the prompt is "
                            "continued as plain text)");
  qlora::ModelLoadOptions load = qlora::cli::load_options(o.m);

  const auto t_load = Clock::now();
  qlora::ModelFiles files = qlora::open_model_files(o.m.model, o.m.tokenizer);
  if (!files.tokenizer)
    qlora::fail(o.m.model, "no tokenizer found next to the model; pass --tokenizer PATH");
  qlora::cli::report_model(files, o.quiet);
  qlora::cli::add_load_progress(load, files, o.quiet);
  {
    // From the headers only, before anything model-sized is allocated.
    qlora::MemoryOptions mo =
        qlora::memory_options_for_run(o.m.model, load, qlora::MemoryMode::Generate, qlora::max_threads());
    mo.prompt_len = static_cast<int64_t>(files.tokenizer->encode(o.escape ? qlora::cli::unescape(o.prompt) : o.prompt).size());
    mo.new_tokens = o.n;
    mo.batch_size = o.parallel;
    qlora::cli::check_memory_fits(files.spec, mo, o.m, o.max_memory, "qlora generate");
  }
  qlora::Model model = qlora::Model::load(files.spec, *files.tensors, load);
  files.tensors.reset();  // unmap the source: the model holds its own weights now
  const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  if (!o.quiet)
    std::fprintf(stderr, "loaded in %.2f s: %s weights, compute %s%s, %.1f MiB\n", load_s,
                 qlora::cli::weights_description(o.m, model).c_str(), o.m.compute_dtype.c_str(),
                 qlora::cli::int8_activations_note(o.m, model).c_str(),
                 static_cast<double>(model.weight_bytes()) / (1024.0 * 1024.0));
  qlora::LoadedAdapter adapter;
  if (!o.adapter.empty()) {
    adapter = qlora::cli::load_adapter_reporting(model, o.adapter, o.quiet);
    model.set_adapter(adapter.lora.get());  // `adapter` lives as long as `model` is used
  }
  qlora::cli::attach_device(model, o.m, o.quiet);

  // Sampling: generation_config.json's values unless given on the command line.
  qlora::GenerationOptions gen = qlora::cli::generation_options(app, o.s, files.generation, o.n, o.escape);
  gen.echo_prompt = !o.no_echo;
  // A random model's eos is drawn by chance: -n tokens exactly, so timings compare.
  gen.ignore_eos = o.ignore_eos || files.format == qlora::ModelFormat::Random;

  std::string prompt = o.escape ? qlora::cli::unescape(o.prompt) : o.prompt;
  qlora::EncodeOptions enc;
  if (o.chat) {
    // As transformers' apply_chat_template(add_generation_prompt=True): the template
    // renders BOS itself when the model wants one, so encode adds no special tokens.
    const std::string& tpl = files.tokenizer->chat_template();
    if (tpl.empty()) qlora::fail(o.m.model, "--chat: the model has no chat template");
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (!o.system.empty())
      messages.push_back({{"role", "system"}, {"content", o.escape ? qlora::cli::unescape(o.system) : o.system}});
    messages.push_back({{"role", "user"}, {"content", prompt}});
    const qlora::Tokenizer& tok = *files.tokenizer;
    auto tok_text = [&](int32_t id) -> std::optional<std::string> {
      if (id < 0) return std::nullopt;
      return tok.token_text(id);
    };
    // Named by where the template came from, so that an error in it says which file (or GGUF
    // key) to fix.
    const std::string& where = tok.spec().chat_template_source;
    const qlora::train::ChatTemplate chat_tpl(tpl, where.empty() ? tok.spec().source + " chat template" : where);
    prompt = chat_tpl.render(messages, /*add_generation_prompt=*/true, tok_text(tok.bos_id()), tok_text(tok.eos_id()));
    enc.add_special_tokens = false;
  }
  const std::vector<int32_t> ids32 = files.tokenizer->encode(prompt, enc);
  const std::vector<int> prompt_ids(ids32.begin(), ids32.end());

  if (o.parallel > 1) return run_parallel(o, model, *files.tokenizer, prompt, prompt_ids, gen);

  const qlora::GenerationResult r =
      qlora::generate(model, files.tokenizer.get(), prompt_ids, gen, [](std::string_view s) {
        std::fwrite(s.data(), 1, s.size(), stdout);
        std::fflush(stdout);
      });
  std::fputc('\n', stdout);
  std::fflush(stdout);

  if (!o.quiet) {
    std::fprintf(stderr, "\nprompt: %zu tokens in %.3f s (%.1f tokens/s)\n", r.prompt_ids.size(), r.prompt_seconds,
                 r.prompt_tokens_per_second());
    std::fprintf(stderr, "generation: %zu tokens, %lld decode steps in %.3f s (%.1f tokens/s), stop: %s\n",
                 r.output_ids.size(), static_cast<long long>(r.decode_steps), r.decode_seconds,
                 r.decode_tokens_per_second(), qlora::stop_reason_name(r.stop));
    std::fprintf(stderr, "threads: %d, peak memory: %.1f MiB\n", qlora::max_threads(), peak_rss_mib());
    qlora::cli::report_device_memory(model, o.quiet);
  }
  return 0;
}

const bool kRegistered = qlora::cli::register_command(
    "generate", "Continue a prompt with a model loaded in 4-bit (or full precision)",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      qlora::cli::add_model_flags(app, o->m, "fp32, bf16 or fp16");
      qlora::cli::add_device_flag(app, o->m);
      qlora::cli::add_decode_flags(app, o->m);
      qlora::cli::add_adapter_flag(app, o->adapter);
      app.add_option("--prompt,-p", o->prompt, "Text to continue");
      app.add_option("-n,--n-predict", o->n, "Number of new tokens")->capture_default_str();
      app.add_option("--parallel", o->parallel,
                     "Generate this many continuations at once, decoded together in one batched pass per token "
                     "(sampling seeds --seed, --seed + 1, ...; as transformers' num_return_sequences); printed "
                     "when all have finished")
          ->capture_default_str();
      qlora::cli::add_sampling_flags(app, o->s, "Random seed", "Stop before this string (repeatable)");
      qlora::cli::add_bool_flag(app, "--ignore-eos", o->ignore_eos,
                                "Generate exactly -n tokens, past any end-of-generation token (always on for "
                                "random: models)");
      qlora::cli::add_bool_flag(app, "--chat", o->chat,
                                "Send the prompt as a user message through the model's chat template");
      app.add_option("--system", o->system, "With --chat: a system message before the prompt");
      qlora::cli::add_bool_flag_pair(
          app, "--echo", "--no-echo", [o](bool on) { o->no_echo = !on; },
          "Print the prompt before the continuation (default: on)", "Do not print the prompt before the continuation");
      qlora::cli::add_bool_flag(app, "--escape,-e", o->escape,
                                "Process \\n, \\t, \\\\ escapes in the prompt and stop strings");
      qlora::cli::add_bool_flag(app, "--quiet,-q", o->quiet, "No statistics on stderr");
      app.add_option("--max-memory", o->max_memory,
                     "Refuse to start (with the planner's breakdown) when the run needs more than this (e.g. 8GB)");
      return [o, &app] { return run(*o, app); };
    });

}  // namespace
