// `qlora serve`: the model (and any LoRA adapters, each under its own name) behind an
// OpenAI-compatible HTTP API (serve/server.h). Host and port as llama.cpp's server takes
// them (--host 127.0.0.1 --port 8080). SIGTERM or Ctrl-C shut it down gracefully.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "cli/model_flags.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "base/parallel.h"
#include "memory/memory_plan.h"
#include "model/model.h"
#include "serve/server.h"
#include "lora/adapter_loader.h"

namespace {

std::atomic<bool> g_stop_requested{false};
extern "C" void on_stop_signal(int) { g_stop_requested = true; }

struct Options {
  qlora::cli::ModelFlags m;
  std::vector<std::string> adapters;  // NAME=DIR
  std::string host = "127.0.0.1", alias, max_body = "1MB";
  int port = 8080;
  int64_t max_queue = 16, max_tokens = 4096, http_threads = 8, parallel = 4, prefill_chunk = 256;
  bool quiet = false;
};

int run(const Options& o) {
  if (o.port < 0 || o.port > 65535) qlora::fail("--port", "must be in 0..65535 (0: any free port)");
  if (o.max_queue < 0) qlora::fail("--max-queue", "must be >= 0");
  if (o.parallel < 1 || o.parallel > 64) qlora::fail("--parallel", "must be in 1..64");
  if (o.prefill_chunk < 1) qlora::fail("--prefill-chunk", "must be >= 1");
  if (o.max_tokens < 1) qlora::fail("--max-tokens", "must be >= 1");
  if (o.http_threads < 1 || o.http_threads > 256) qlora::fail("--http-threads", "must be in 1..256");
  qlora::serve::ServeOptions so;
  so.host = o.host;
  so.port = o.port;
  so.max_queue = static_cast<size_t>(o.max_queue);
  so.parallel = static_cast<size_t>(o.parallel);
  so.prefill_chunk = static_cast<size_t>(o.prefill_chunk);
  so.max_body_bytes = qlora::parse_memory_size(o.max_body, "--max-body");
  so.limits.max_tokens = o.max_tokens;
  so.limits.default_max_tokens = std::min<int64_t>(256, o.max_tokens);
  so.http_threads = static_cast<int>(o.http_threads);
  so.log = !o.quiet;
  so.base_name = o.alias.empty() ? std::filesystem::path(o.m.model).stem().string() : o.alias;
  std::vector<std::pair<std::string, std::string>> named;
  for (const std::string& a : o.adapters) {
    const size_t eq = a.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == a.size())
      qlora::fail("--adapter", "expected NAME=DIR, got " + qlora::excerpt(a));
    named.emplace_back(a.substr(0, eq), a.substr(eq + 1));
    if (named.back().first == so.base_name)
      qlora::fail("--adapter", "the name " + qlora::excerpt(named.back().first) + " is the base model's (--alias)");
  }

  const bool on_gpu = qlora::parse_device(o.m.device).cuda;
  qlora::ModelLoadOptions load = qlora::cli::load_options(o.m);  // (checks --device first)
  qlora::ModelFiles files = qlora::open_model_files(o.m.model, o.m.tokenizer);
  // The llama CUDA runner holds one adapter, fixed when the model moves to the GPU, while
  // serve switches adapters per request; the CUDA backend engine reads the adapter of each
  // call, so it serves them.
  if (on_gpu && !o.adapters.empty() &&
      qlora::cli::cuda_memory_engine(files.spec, load.quant.int8) == qlora::MemoryEngine::QloraCuda)
    qlora::fail("--adapter", "the llama CUDA engine serves the base model only (--device " + o.m.device +
                                 "); set QLORA_CUDA_ENGINE=backend to serve adapters by name on the GPU, or " +
                                 "merge an adapter with `qlora merge`");
  if (!files.tokenizer) qlora::fail(o.m.model, "no tokenizer found next to the model; pass --tokenizer PATH");
  if (!files.notice.empty()) std::fprintf(stderr, "warning: %s\n", files.notice.c_str());
  if (qlora::cli::wants_memory_check(o.m, "")) {
    // From the headers only: --parallel sequences at once, each up to --max-tokens past a
    // short prompt.
    qlora::MemoryOptions mo =
        qlora::memory_options_for_run(o.m.model, load, qlora::MemoryMode::Generate, qlora::max_threads());
    mo.prompt_len = 256;
    mo.new_tokens = o.max_tokens;
    mo.batch_size = on_gpu ? 1 : o.parallel;
    qlora::cli::check_memory_fits(files.spec, mo, o.m, "", "qlora serve");
  }
  qlora::Model model = qlora::Model::load(files.spec, *files.tensors, load);
  files.tensors.reset();
  qlora::cli::attach_device(model, o.m, o.quiet);
  std::vector<std::unique_ptr<qlora::LoadedAdapter>> loaded;
  std::map<std::string, const qlora::LoraModel*> adapters;
  for (const auto& [name, dir] : named) {
    if (adapters.count(name)) qlora::fail("--adapter", "the name " + qlora::excerpt(name) + " is given twice");
    loaded.push_back(std::make_unique<qlora::LoadedAdapter>(qlora::load_adapter(dir, model)));
    adapters[name] = loaded.back()->lora.get();
  }

  qlora::serve::Server server(model, *files.tokenizer, adapters, so);
  server.bind();
  if (!o.quiet)
    if (const std::string note = qlora::cli::int8_activations_note(o.m, model); !note.empty())
      std::fprintf(stderr, "%s\n", note.substr(2).c_str());  // (", decoding ..." -> "decoding ...")
  {  // always printed, --quiet included: with --port 0 it is the only way to learn the port
    std::string names = so.base_name;
    for (const auto& [n, a] : adapters) names += ", " + n;
    std::fprintf(stderr, "serving %s on http://%s:%d (models: %s); OpenAI API at /v1, /health; Ctrl-C to stop\n",
                 o.m.model.c_str(), so.host.c_str(), server.port(), names.c_str());
  }
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  std::atomic<bool> served{false};
  std::thread watcher([&] {
    while (!served) {
      if (g_stop_requested) {
        if (!o.quiet) std::fprintf(stderr, "shutting down: finishing the running request\n");
        server.stop();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  server.run();
  served = true;
  watcher.join();
  if (!o.quiet) std::fprintf(stderr, "stopped\n");
  return 0;
}

const bool kRegistered = qlora::cli::register_command(
    "serve", "Serve the model (and LoRA adapters by name) over an OpenAI-compatible HTTP API",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      qlora::cli::add_model_flags(app, o->m, "Compute dtype: fp32, bf16 or fp16");
      qlora::cli::add_device_flag(app, o->m);
      qlora::cli::add_decode_flags(app, o->m);
      app.add_option("--adapter,-a", o->adapters,
                     "NAME=DIR: a PEFT adapter served as model NAME (repeatable: multi-LoRA serving)");
      app.add_option("--host", o->host, "Address to listen on")->capture_default_str();
      app.add_option("--port", o->port, "Port (0: any free port)")->capture_default_str();
      app.add_option("--alias", o->alias, "The base model's name in requests (default: the model file's stem)");
      app.add_option("--parallel", o->parallel,
                     "Requests generated at once, their tokens decoded together in one batched pass (as "
                     "llama.cpp's server --parallel); 1 on the llama CUDA engine")
          ->capture_default_str();
      app.add_option("--prefill-chunk", o->prefill_chunk,
                     "A new request's prompt runs this many tokens at a time between the other requests' "
                     "decoding steps, so that they stall at most one chunk per step")
          ->capture_default_str();
      app.add_option("--max-queue", o->max_queue, "Requests that may wait; more are answered 503")
          ->capture_default_str();
      app.add_option("--max-tokens", o->max_tokens, "Largest max_tokens a request may ask for")->capture_default_str();
      app.add_option("--max-body", o->max_body, "Largest request body; larger ones are answered 413")
          ->capture_default_str();
      app.add_option("--http-threads", o->http_threads, "Connections handled at once")->capture_default_str();
      qlora::cli::add_bool_flag(app, "--quiet,-q", o->quiet, "No log lines (the listening address is still printed)");
      return [o] { return run(*o); };
    });

}  // namespace
