#include "serve/server.h"

#include <httplib.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "formats/tokenizer.h"
#include "train/chat_template.h"

namespace qlora::serve {

namespace {

using Clock = std::chrono::steady_clock;

// One request on its way through the queue and the worker.
struct Job {
  CompletionRequest req;
  const LoraModel* adapter = nullptr;
  std::string model_name, id;
  int64_t created = 0;
  std::vector<int> prompt_ids;
  std::atomic<bool> cancelled{false};
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::pair<int, std::string>> pieces;  // (choice, text) not yet sent (streaming)
  bool done = false;
  bool failed = false;  // the server shut down before it ran, or generation threw
  std::string error;
  std::vector<GenerationResult> results;  // one per choice (req.n), filled as each ends
  int remaining = 0;                      // choices still generating
  int64_t completion_tokens() const {
    int64_t n = 0;
    for (const GenerationResult& r : results) n += static_cast<int64_t>(r.output_ids.size());
    return n;
  }
};

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^ (++counter * 0x9E3779B97F4A7C15ull);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%016llx", prefix, static_cast<unsigned long long>(n));
  return buf;
}

// Debian's cpp-httplib 0.11 is compiled with a listen backlog of 5: a burst of more
// simultaneous connections overflows it and the kernel drops the extra handshakes (the
// clients then see their connection reset). Calling listen() again on the bound socket
// raises the backlog; the library does not expose the socket, so it is found by its port.
void widen_listen_backlog(int port) {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    const int fd = std::atoi(e->d_name);
    if (fd <= 2) continue;
    int listening = 0;
    socklen_t len = sizeof listening;
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage addr{};
    socklen_t alen = sizeof addr;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) continue;
    int p = -1;
    if (addr.ss_family == AF_INET) p = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    else if (addr.ss_family == AF_INET6) p = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    if (p == port) ::listen(fd, SOMAXCONN);
  }
  ::closedir(d);
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(e.body(), "application/json");
}

}  // namespace

struct Server::Impl {
  Model& model;
  const Tokenizer& tok;
  std::map<std::string, const LoraModel*> adapters;
  ServeOptions opt;
  httplib::Server http;
  int bound_port = -1;
  std::mutex tok_mutex;  // the tokenizer and the chat template, used from handler threads
  std::unique_ptr<train::ChatTemplate> chat_tpl;

  std::mutex qm;
  std::condition_variable qcv;
  std::deque<std::shared_ptr<Job>> queue;
  bool stopping = false;
  std::atomic<bool> cancel_running{false};
  std::atomic<bool> worker_done{false};
  std::atomic<bool> listening{false}, listener_done{false};
  size_t running = 0;  // generations in the worker's slots (guarded by qm)
  const LoraModel* running_adapter = nullptr;  // the adapter they share (guarded by qm)
  size_t slot_count = 1;  // opt.parallel, or 1 where the model cannot decode a batch
  Server::Stats stats;    // (guarded by qm)
  std::thread listener, grace;  // (the model runs on run()'s thread)

  Impl(Model& m, const Tokenizer& t, std::map<std::string, const LoraModel*> a, ServeOptions o)
      : model(m), tok(t), adapters(std::move(a)), opt(std::move(o)) {
    slot_count = can_forward_batch(model) ? std::max<size_t>(1, opt.parallel) : 1;
    if (!tok.chat_template().empty()) {
      const std::string& where = tok.spec().chat_template_source;
      chat_tpl = std::make_unique<train::ChatTemplate>(tok.chat_template(),
                                                       where.empty() ? tok.spec().source + " chat template" : where);
    }
  }

  void log_line(const std::string& what) {
    if (opt.log) std::fprintf(stderr, "%s\n", what.c_str());
  }

  // Ends a job with the error that stopped it (or, error null, as it stands).
  static void finish_job(Job& job, GenerationResult* /*unused*/, const std::string* error) {
    std::lock_guard<std::mutex> lk(job.m);
    if (job.done) return;  // (answered already)
    if (error) {
      job.failed = true;
      job.error = *error;
    }
    job.done = true;
    job.cv.notify_all();
  }
  // One choice of a job ended; the job is answered when its last choice has.
  static void finish_choice(Job& job, int index, GenerationResult&& r) {
    std::lock_guard<std::mutex> lk(job.m);
    if (job.done) return;
    job.results[static_cast<size_t>(index)] = std::move(r);
    if (--job.remaining > 0) return;
    job.done = true;
    job.cv.notify_all();
  }

  // The worker: up to opt.parallel generations at once (the slots), started in queue order;
  // each step decodes one token of every running one through forward_batch, so the weights
  // are read once for all of them. The slots share one adapter (the model applies one): a
  // request for another waits until the running ones have finished, and nothing behind it
  // starts before it.
  void work() {
    struct Slot {
      std::shared_ptr<Job> job;
      std::unique_ptr<Generation> gen;
      int index = 0;                 // the job's choice this slot generates
      bool* cache_in_use = nullptr;  // its prompt cache's flag, cleared when the request ends
      int forks_pending = 0;         // (choice 0) the job's other choices, forked once its prompt ran
      bool ended = false;            // answered (or failed): dropped from the slots
    };
    std::vector<Slot> slots;
    // Each slot's keys and values outlive its request (llama.cpp's cache_prompt): a new request
    // takes the free cache sharing the longest prefix with its prompt under the same adapter (a
    // chat resending its history runs only the new turn), else the least recently used one.
    struct Cached {
      PromptCache cache;
      const LoraModel* adapter = nullptr;
      bool in_use = false;
      uint64_t last_used = 0;
    };
    std::vector<Cached> caches(slot_count);
    uint64_t uses = 0;
    auto take_cache = [&](const Job& job) -> Cached* {
      Cached* best = nullptr;
      size_t best_len = 0;
      for (Cached& c : caches) {
        if (c.in_use) continue;
        size_t n = 0;
        if (c.adapter == job.adapter)
          while (n < c.cache.ids.size() && n < job.prompt_ids.size() && c.cache.ids[n] == job.prompt_ids[n]) ++n;
        if (!best || n > best_len || (n == best_len && c.last_used < best->last_used)) {
          best = &c;
          best_len = n;
        }
      }
      best->in_use = true;
      best->last_used = ++uses;
      if (best->adapter != job.adapter) best->cache.ids.clear();  // (keys and values of another adapter)
      best->adapter = job.adapter;
      return best;
    };
    // A request ends: its answer, its prompt cache free again (emptied after an error: its
    // keys and values may be half written).
    auto end_slot = [&](Slot& sl, GenerationResult* r, const std::string* error) {
      sl.ended = true;
      if (sl.cache_in_use) {
        *sl.cache_in_use = false;
        if (error)
          for (Cached& c : caches)
            if (&c.in_use == sl.cache_in_use) {
              c.cache.ids.clear();
              if (c.cache.state) c.cache.state->reset();
            }
      }
      if (error) {
        sl.job->cancelled = true;  // (its other choices stop at their next token)
        finish_job(*sl.job, nullptr, error);
      } else if (r) {
        finish_choice(*sl.job, sl.index, std::move(*r));
      }
    };
    // Choice i of a job samples with seed + i and streams under index i.
    auto options_for = [this](const std::shared_ptr<Job>& job, int i) {
      GenerationOptions gen = job->req.gen;
      gen.sampling.seed += static_cast<uint64_t>(i);
      gen.cancelled = [this, job] { return job->cancelled.load() || cancel_running.load(); };
      return gen;
    };
    auto stream_for = [](const std::shared_ptr<Job>& job, int i) -> TextCallback {
      return [job, i](std::string_view piece) {
        if (piece.empty()) return;
        std::lock_guard<std::mutex> lk(job->m);
        job->pieces.emplace_back(i, std::string(piece));
        job->cv.notify_all();
      };
    };
    // After a prompt chunk or a decoding step: a job whose prompt has run forks its other
    // choices (before its first choice decodes anything), and every generation that has
    // stopped is answered and leaves the slots.
    auto settle = [&](std::vector<Slot>& all) {
      std::vector<Slot> added;
      for (Slot& sl : all) {
        if (sl.ended || sl.gen->prefilling() || sl.forks_pending == 0) continue;
        const int n = sl.job->req.n;
        try {
          for (int i = n - sl.forks_pending; i < n; ++i)
            added.push_back({sl.job,
                             sl.gen->can_fork() ? sl.gen->fork(options_for(sl.job, i), stream_for(sl.job, i))
                                                : std::make_unique<Generation>(model, &tok, sl.job->prompt_ids,
                                                                               options_for(sl.job, i),
                                                                               stream_for(sl.job, i)),
                             i, nullptr, 0, false});
        } catch (const std::exception& e) {
          const std::string msg = e.what();
          end_slot(sl, nullptr, &msg);
        }
        sl.forks_pending = 0;
      }
      for (Slot& a : added) all.push_back(std::move(a));
      std::vector<Slot> keep;
      for (Slot& sl : all) {
        if (!sl.ended && !sl.gen->prefilling() && !sl.gen->running()) {
          try {
            GenerationResult r = sl.gen->finish();
            end_slot(sl, &r, nullptr);
          } catch (const std::exception& e) {
            const std::string msg = e.what();
            end_slot(sl, nullptr, &msg);
          }
        }
        if (!sl.ended) keep.push_back(std::move(sl));
      }
      all.swap(keep);
    };
    InferenceState work_state(model, 1);
    std::vector<float> logits;
    std::vector<std::shared_ptr<Job>> starting;
    for (;;) try {
      starting.clear();
      {
        std::unique_lock<std::mutex> lk(qm);
        if (slots.empty()) qcv.wait(lk, [&] { return stopping || !queue.empty(); });
        if (slots.empty() && queue.empty()) {  // stopping, nothing left
          worker_done = true;
          return;
        }
        const LoraModel* adapter = slots.empty() ? (queue.empty() ? nullptr : queue.front()->adapter) : model.adapter();
        // A job takes one slot per choice; one asking for more choices than there are slots
        // runs when nothing else does.
        size_t taken = slots.size();
        while (!queue.empty() && queue.front()->adapter == adapter) {
          const size_t n = static_cast<size_t>(queue.front()->req.n);
          if (taken + n > slot_count && taken > 0) break;
          starting.push_back(queue.front());
          queue.pop_front();
          taken += n;
        }
        running = taken;
        running_adapter = adapter;
      }
      for (const std::shared_ptr<Job>& job : starting) {
        const int n = job->req.n;
        {
          std::lock_guard<std::mutex> lk(job->m);
          job->results.assign(static_cast<size_t>(n), GenerationResult{});
          job->remaining = n;
        }
        Cached* pc = take_cache(*job);
        try {
          model.set_adapter(job->adapter);  // (the same for every slot)
          // The prompt runs in chunks between the other slots' decoding steps (below).
          auto g = std::make_unique<Generation>(model, &tok, job->prompt_ids, options_for(job, 0), stream_for(job, 0),
                                                can_forward_batch(model) ? &pc->cache : nullptr,
                                                static_cast<int64_t>(opt.prefill_chunk));
          slots.push_back({job, std::move(g), 0, &pc->in_use, n - 1, false});
        } catch (const std::exception& e) {
          pc->in_use = false;
          pc->cache.ids.clear();  // (its keys and values may be half written)
          if (pc->cache.state) pc->cache.state->reset();
          const std::string msg = e.what();
          finish_job(*job, nullptr, &msg);
        }
      }
      settle(slots);
      uint64_t chunks_run = 0;
      // One chunk of one prompt (the oldest still running its prompt): the decoding slots wait
      // at most one chunk per step for a new request's prompt.
      for (Slot& sl : slots) {
        if (!sl.gen->prefilling()) continue;
        try {
          ++chunks_run;
          sl.gen->prefill_step();
        } catch (const std::exception& e) {
          const std::string msg = e.what();
          end_slot(sl, nullptr, &msg);
        }
        break;
      }
      settle(slots);
      std::vector<Slot*> decoding;
      for (Slot& sl : slots)
        if (sl.gen->running()) decoding.push_back(&sl);
      const size_t stepped = decoding.size();
      bool stepped_ok = false;
      if (!decoding.empty()) {
        // One token of every decoding generation: alone through forward(), together through
        // forward_batch. An error fails the requests of this step, not the server.
        const int64_t V = model.spec().vocab;
        std::vector<Generation*> gens;
        for (Slot* sl : decoding) gens.push_back(sl->gen.get());
        std::string error;
        try {
          forward_next_tokens(model, work_state, gens, logits);
          stepped_ok = true;
        } catch (const std::exception& e) {
          error = e.what();
        }
        for (size_t i = 0; i < decoding.size(); ++i) {
          Slot& sl = *decoding[i];
          if (!error.empty()) {
            end_slot(sl, nullptr, &error);
            continue;
          }
          try {
            sl.gen->advance(logits.data() + i * static_cast<size_t>(V));
          } catch (const std::exception& e) {
            const std::string msg = e.what();
            end_slot(sl, nullptr, &msg);
          }
        }
        settle(slots);
      }
      if (slots.empty()) model.set_adapter(nullptr);
      {
        std::lock_guard<std::mutex> lk(qm);
        running = 0;
        for (const Slot& sl : slots) running += 1 + static_cast<size_t>(sl.forks_pending);
        stats.prompt_chunks += chunks_run;
        if (stepped && stepped_ok) {
          ++stats.decode_steps;
          stats.decoded_tokens += stepped;
          stats.largest_batch = std::max(stats.largest_batch, stepped);
        }
      }
    } catch (...) {
      // Something no request's own error handling caught (out of memory outside a
      // generation, say): fail every request in hand or waiting, and stop serving, rather than
      // leave their handlers waiting for an answer that never comes.
      const std::string msg = "the generation worker failed; the server is stopping";
      for (Slot& sl : slots) finish_job(*sl.job, nullptr, &msg);
      for (const std::shared_ptr<Job>& j : starting) finish_job(*j, nullptr, &msg);
      std::deque<std::shared_ptr<Job>> waiting;
      {
        std::lock_guard<std::mutex> lk(qm);
        stopping = true;
        waiting.swap(queue);
        running = 0;
      }
      for (const std::shared_ptr<Job>& j : waiting) finish_job(*j, nullptr, &msg);
      log_line(msg);
      worker_done = true;
      http.stop();
      return;
    }
  }

  // Parses `body` (the request's), resolves the model, tokenizes and enqueues; an ApiError when
  // any of it fails.
  std::variant<std::shared_ptr<Job>, ApiError> admit(Endpoint ep, const std::string& body) {
    auto parsed = parse_request(ep, body, opt.limits);
    if (auto* e = std::get_if<ApiError>(&parsed)) return *e;
    auto job = std::make_shared<Job>();
    job->req = std::move(std::get<CompletionRequest>(parsed));
    job->model_name = job->req.model.empty() ? opt.base_name : job->req.model;
    if (job->model_name != opt.base_name) {
      auto it = adapters.find(job->model_name);
      if (it == adapters.end()) {
        ApiError e;
        e.status = 404;
        e.param = "model";
        e.code = "model_not_found";
        std::string names = opt.base_name;
        for (const auto& [n, a] : adapters) names += ", " + n;
        e.message = "the model " + excerpt(job->model_name) + " does not exist (models: " + names + ")";
        return e;
      }
      job->adapter = it->second;
    }
    try {
      std::lock_guard<std::mutex> lk(tok_mutex);
      std::string prompt;
      EncodeOptions enc;
      if (ep == Endpoint::ChatCompletions) {
        if (!chat_tpl) {
          ApiError e;
          e.message = "this model has no chat template: use /v1/completions";
          return e;
        }
        auto text = [&](int32_t id) -> std::optional<std::string> {
          if (id < 0) return std::nullopt;
          return tok.token_text(id);
        };
        prompt = chat_tpl->render(job->req.messages, true, text(tok.bos_id()), text(tok.eos_id()));
        enc.add_special_tokens = false;  // the template renders BOS itself
      } else {
        prompt = job->req.prompt;
      }
      const std::vector<int32_t> ids = tok.encode(prompt, enc);
      job->prompt_ids.assign(ids.begin(), ids.end());
    } catch (const Error& e) {
      ApiError a;
      a.message = safe_message(e.what(), 300);
      return a;
    }
    const int64_t ctx = model.spec().max_positions;
    if (static_cast<int64_t>(job->prompt_ids.size()) + job->req.gen.max_new_tokens > ctx) {
      ApiError e;
      e.param = ep == Endpoint::ChatCompletions ? "messages" : "prompt";
      e.code = "context_length_exceeded";
      e.message = "the prompt (" + std::to_string(job->prompt_ids.size()) + " tokens) plus max_tokens (" +
                  std::to_string(job->req.gen.max_new_tokens) + ") exceeds the context of " + std::to_string(ctx) +
                  " tokens";
      return e;
    }
    job->id = random_id(ep == Endpoint::ChatCompletions ? "chatcmpl" : "cmpl");
    job->created = static_cast<int64_t>(std::time(nullptr));
    {
      std::lock_guard<std::mutex> lk(qm);
      if (stopping) {
        ApiError e;
        e.status = 503;
        e.type = "server_error";
        e.message = "the server is shutting down";
        return e;
      }
      // Waiting requests beyond the running ones; a free slot takes the next at once (not one
      // of another adapter's: the slots share one).
      const size_t free_slots =
          running > 0 && job->adapter != running_adapter ? 0 : slot_count - std::min(running, slot_count);
      if (queue.size() >= opt.max_queue + free_slots) {
        ApiError e;
        e.status = 503;
        e.type = "server_error";
        e.code = "queue_full";
        e.message = "the server is busy (" + std::to_string(queue.size()) + " requests waiting); retry later";
        return e;
      }
      queue.push_back(job);
    }
    qcv.notify_one();
    return job;
  }

  void complete(Endpoint ep, const httplib::Request& req, const std::string& body, httplib::Response& res) {
    const auto t0 = Clock::now();
    auto admitted = admit(ep, body);
    if (auto* e = std::get_if<ApiError>(&admitted)) {
      send_error(res, *e);
      log_line(req.method + " " + req.path + " " + std::to_string(e->status) + " " + e->message.substr(0, 120));
      return;
    }
    std::shared_ptr<Job> job = std::get<std::shared_ptr<Job>>(admitted);
    auto finish_log = [this, &req, job, t0](int status) {
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      char buf[256];
      std::snprintf(buf, sizeof buf, " %d model=%s prompt=%zu completion=%lld %s %.2fs", status,
                    job->model_name.c_str(), job->prompt_ids.size(), static_cast<long long>(job->completion_tokens()),
                    job->failed || job->results.empty() ? "failed" : stop_reason_name(job->results[0].stop), s);
      log_line(req.method + " " + req.path + (job->req.stream ? " (stream)" : "") + buf);
    };
    if (!job->req.stream) {
      std::unique_lock<std::mutex> lk(job->m);
      job->cv.wait(lk, [&] { return job->done; });
      if (job->failed) {
        ApiError e;
        e.status = 503;
        e.type = "server_error";
        e.message = job->error.empty() ? "the server shut down before the request ran" : safe_message(job->error, 300);
        send_error(res, e);
        finish_log(e.status);
        return;
      }
      const auto body = completion_response(job->req, job->id, job->model_name, job->created, job->results,
                                            static_cast<int64_t>(job->prompt_ids.size()));
      res.set_content(body.dump(), "application/json");
      finish_log(200);
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job, finish_log, first = std::vector<bool>(static_cast<size_t>(job->req.n), true)](
            size_t, httplib::DataSink& sink) mutable {
          for (;;) {
            std::deque<std::pair<int, std::string>> out;
            bool done;
            {
              std::unique_lock<std::mutex> lk(job->m);
              job->cv.wait(lk, [&] { return job->done || !job->pieces.empty(); });
              out.swap(job->pieces);
              done = job->done;
            }
            for (const auto& [i, p] : out) {
              const std::string ev = stream_chunk(job->req, job->id, job->model_name, job->created, p, std::nullopt,
                                                  first[static_cast<size_t>(i)], i);
              first[static_cast<size_t>(i)] = false;
              if (!sink.write(ev.data(), ev.size())) {
                job->cancelled = true;  // the client went away: stop generating for it
                return false;
              }
            }
            if (!done) continue;
            std::string tail;
            if (job->failed) {
              ApiError e;
              e.type = "server_error";
              e.message = job->error.empty() ? "the server shut down" : safe_message(job->error, 300);
              tail = "data: " + e.body() + "\n\n";
            } else {
              for (size_t i = 0; i < job->results.size(); ++i)
                tail += stream_chunk(job->req, job->id, job->model_name, job->created, "", job->results[i].stop,
                                     first[i], static_cast<int>(i));
              if (job->req.include_usage)
                tail += stream_usage_chunk(job->req, job->id, job->model_name, job->created,
                                           static_cast<int64_t>(job->prompt_ids.size()), job->completion_tokens(),
                                           job->results.empty() ? 0 : job->results[0].prompt_tokens_reused);
            }
            tail += kStreamDone;
            sink.write(tail.data(), tail.size());
            sink.done();
            finish_log(200);
            return true;
          }
        });
  }

  void routes() {
    http.set_payload_max_length(opt.max_body_bytes);
    http.new_task_queue = [this] { return new httplib::ThreadPool(static_cast<size_t>(opt.http_threads)); };
    http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"status":"ok"})", "application/json");
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      nlohmann::ordered_json data = nlohmann::ordered_json::array();
      data.push_back({{"id", opt.base_name}, {"object", "model"}, {"created", 0}, {"owned_by", "qlora"}});
      for (const auto& [n, a] : adapters)
        data.push_back({{"id", n}, {"object", "model"}, {"created", 0}, {"owned_by", "qlora"}, {"parent", opt.base_name}});
      res.set_content(nlohmann::ordered_json{{"object", "list"}, {"data", data}}.dump(), "application/json");
    });
    // The body is read as it comes whatever its Content-Type: curl's -d sends JSON labelled
    // application/x-www-form-urlencoded, which httplib's own reading would refuse past 8 KB as
    // "too large" (its form limit). --max-body bounds it here too: httplib checks a declared
    // Content-Length (set_payload_max_length), the receiver a chunked body as it grows.
    // (multipart/form-data would go to httplib's part parser, which this reader does not feed.)
    auto post = [this](Endpoint ep) {
      return [this, ep](const httplib::Request& q, httplib::Response& s, const httplib::ContentReader& read) {
        if (q.is_multipart_form_data()) {
          ApiError e;
          e.status = 415;
          e.message = "the request body must be JSON (Content-Type: application/json), not multipart/form-data";
          send_error(s, e);
          log_line(q.method + " " + excerpt(q.path, 60) + " 415");
          return;
        }
        std::string body;
        const bool whole = read([&](const char* data, size_t n) {
          if (body.size() + n > opt.max_body_bytes) {
            s.status = 413;
            return false;
          }
          body.append(data, n);
          return true;
        });
        if (!whole) {  // (too large: 413; the error handler writes the body)
          if (s.status < 400) s.status = 400;
          return;
        }
        complete(ep, q, body, s);
      };
    };
    http.Post("/v1/chat/completions", post(Endpoint::ChatCompletions));
    http.Post("/v1/completions", post(Endpoint::Completions));
    // Another method on them: 405 naming the one they take, not "no such endpoint".
    for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
      auto wrong_method = [this](const httplib::Request& q, httplib::Response& s) {
        ApiError e;
        e.status = 405;
        e.message = q.method + " " + excerpt(q.path, 60) + ": this endpoint takes POST with a JSON body";
        send_error(s, e);
        s.set_header("Allow", "POST");
        log_line(q.method + " " + excerpt(q.path, 60) + " 405");
      };
      http.Get(path, wrong_method);
      http.Put(path, wrong_method);
      http.Delete(path, wrong_method);
    }
    // Errors httplib produces itself (unknown path 404, body too large 413, ...) get
    // OpenAI's error body too.
    http.set_error_handler([this](const httplib::Request& q, httplib::Response& res) {
      if (!res.body.empty()) return;
      ApiError e;
      e.status = res.status;
      e.message = res.status == 413 ? "the request body is larger than " + std::to_string(opt.max_body_bytes) + " bytes"
                  : res.status == 404 ? "no such endpoint: " + excerpt(q.path)
                                      : "HTTP error " + std::to_string(res.status);
      res.set_content(e.body(), "application/json");
      log_line(q.method + " " + excerpt(q.path, 60) + " " + std::to_string(res.status));
    });
  }
};

Server::Server(Model& model, const Tokenizer& tokenizer, std::map<std::string, const LoraModel*> adapters,
               ServeOptions opt)
    : impl_(std::make_unique<Impl>(model, tokenizer, std::move(adapters), std::move(opt))) {
  impl_->routes();
}

Server::~Server() {
  stop();
  if (impl_->listener.joinable()) impl_->listener.join();
  impl_->worker_done = true;
  if (impl_->grace.joinable()) impl_->grace.join();
}

void Server::bind() {
  Impl& s = *impl_;
  if (s.opt.port == 0) {
    s.bound_port = s.http.bind_to_any_port(s.opt.host);
  } else {
    s.bound_port = s.http.bind_to_port(s.opt.host, s.opt.port) ? s.opt.port : -1;
  }
  if (s.bound_port < 0)
    fail(s.opt.host + ":" + std::to_string(s.opt.port), "cannot listen here (address in use, or not this machine's)");
  widen_listen_backlog(s.bound_port);
}

int Server::port() const { return impl_->bound_port; }

Server::Stats Server::stats() const {
  std::lock_guard<std::mutex> lk(impl_->qm);
  return impl_->stats;
}

void Server::run() {
  Impl& s = *impl_;
  if (s.bound_port < 0) bind();
  // The model runs on this thread, the HTTP listener on another. This thread loaded the
  // model, so its OpenMP team already exists; a second thread running the model would start
  // a second team, and with more OpenMP threads than cores libgomp stops spinning between
  // parallel regions altogether (its throttled spin count is 0 under OMP_WAIT_POLICY=passive,
  // whatever GOMP_SPINCOUNT says): a request decoded at 80 tok/s instead of 180 (SmolLM2, 2
  // threads), its time in futex wake-ups.
  s.listener = std::thread([&s] {
    {
      std::lock_guard<std::mutex> lk(s.qm);
      if (!s.stopping) s.listening = true;
    }
    if (s.listening) s.http.listen_after_bind();
    // No new requests now: let the worker drain what is running, then end.
    {
      std::lock_guard<std::mutex> lk(s.qm);
      s.stopping = true;
    }
    s.qcv.notify_all();
    s.listener_done = true;
  });
  s.work();
  // cpp-httplib's stop() does nothing until the listener is running: a stop() that came
  // between this thread's start and the listener's is repeated until the listener ends.
  while (s.listening && !s.listener_done) {
    s.http.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (s.listener.joinable()) s.listener.join();
}

void Server::stop() {
  Impl& s = *impl_;
  std::deque<std::shared_ptr<Job>> dropped;
  {
    std::lock_guard<std::mutex> lk(s.qm);
    if (s.stopping) return;
    s.stopping = true;
    dropped.swap(s.queue);
  }
  s.qcv.notify_all();
  for (auto& job : dropped) {  // waiting requests: answered 503 by their handlers
    std::lock_guard<std::mutex> lk(job->m);
    job->failed = true;
    job->done = true;
    job->cv.notify_all();
  }
  // The running request gets shutdown_grace_s to finish, then is cancelled.
  const double grace = s.opt.shutdown_grace_s;
  s.grace = std::thread([&s, grace] {
    const auto until = Clock::now() + std::chrono::duration<double>(grace);
    while (Clock::now() < until && !s.worker_done) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s.cancel_running = true;
  });
  s.http.stop();
}

}  // namespace qlora::serve
