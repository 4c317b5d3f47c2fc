#pragma once
// `qlora serve`: an HTTP server speaking the OpenAI API over one base model and any number of
// LoRA adapters (multi-LoRA serving: the request's "model" field picks the adapter by name,
// the base model's name picks none). Endpoints: POST /v1/chat/completions,
// POST /v1/completions (both with "stream": true as server-sent events), GET /v1/models,
// GET /health.
//
// One worker generates up to `parallel` requests at once (slots, as llama.cpp's server
// --parallel): every step decodes one token of each through one batched forward pass
// (forward_batch), so the weights are read once per step for all of them; each new request's
// prompt runs alone, prefill_chunk tokens between two decoding steps. The slots share one adapter at a time: a request
// for another model waits for the running ones to finish. A request asking for "n" choices
// takes n slots (its prompt pass run once, the choices fork()ed from it). Each slot keeps its
// last prompt's keys and values for a later request that shares the prefix. Up to max_queue
// more wait, and a request beyond that is answered 503 at once. Bodies over max_body_bytes are answered 413, malformed requests 400 (naming the
// field), unknown models 404. A streamed request whose client goes away is cancelled at
// the next token. stop() is graceful: no new connections, waiting requests answered 503,
// the running one finishes (cancelled after shutdown_grace_s). Each request logs one line.
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "model/model.h"
#include "serve/openai_api.h"

namespace qlora {
class Tokenizer;
}

namespace qlora::serve {

struct ServeOptions {
  std::string host = "127.0.0.1";  // as llama.cpp's server: loopback unless told otherwise
  int port = 8080;                 // 0: any free port (see Server::port())
  std::string base_name = "base";  // the "model" id of the base model
  size_t parallel = 4;             // requests generated at once (1 on a device runner)
  size_t prefill_chunk = 256;      // a new request's prompt runs this many tokens between decoding steps
  size_t max_queue = 16;           // requests waiting beyond the running ones
  size_t max_body_bytes = 1 << 20;
  Limits limits;
  int http_threads = 8;
  double shutdown_grace_s = 10.0;
  bool log = true;
};

class Server {
 public:
  // `model` and `tokenizer` are borrowed; `adapters` maps a model name to the adapter it
  // applies (borrowed). The model's chat template serves /v1/chat/completions (a model
  // without one answers those with 400).
  Server(Model& model, const Tokenizer& tokenizer, std::map<std::string, const LoraModel*> adapters,
         ServeOptions opt);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port. Throws Error naming the address when it cannot.
  void bind();
  int port() const;  // the bound port (after bind())
  // What the worker has done so far: decoding steps (one batched pass each), the tokens they
  // decoded, the most requests decoded in one step, and the prompt chunks run.
  struct Stats {
    uint64_t decode_steps = 0, decoded_tokens = 0, prompt_chunks = 0;
    size_t largest_batch = 0;
  };
  Stats stats() const;
  // Serves until stop(); returns when every request has been answered. The model runs on
  // the calling thread (call it from the thread that loaded the model: see server.cpp).
  void run();
  // Graceful shutdown; may be called from any thread (not from a signal handler).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qlora::serve
