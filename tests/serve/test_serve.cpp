// `qlora serve` (serve/server.h) on stories260K with two LoRA adapters, talked to over
// loopback HTTP with cpp-httplib's client, as an application would:
//  - /health, /v1/models (base + adapters);
//  - chat and text completions, streamed and not: the streamed deltas add up to the
//    non-streamed text, events end with [DONE]; usage counts;
//  - multi-LoRA: the "model" field picks the adapter; two adapters answer differently;
//  - errors: 400 (malformed JSON, bad values, naming the field), 404 (unknown model or
//    path), 413 (body too large), 503 (queue full), all with OpenAI's error body;
//  - a bounded load test: 3 waves of 50 concurrent requests, all answered, memory flat;
//  - a graceful shutdown in the middle of a request.
// Pure request/response rules are tested without sockets at the end (openai_api.h).
#include <gtest/gtest.h>

#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/process_memory.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "serve/openai_api.h"
#include "serve/server.h"
#include "lora/adapter_loader.h"

using namespace qlora;
using namespace qlora::test;
using json = nlohmann::json;

namespace {

std::string fixture(const std::string& rel) { return std::string(QLORA_FIXTURE_DIR) + "/train_parity/" + rel; }

// A ChatML-like template: stories260K ships none.
constexpr const char* kTemplate =
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}";

struct Fixture {
  ModelFiles files = open_model_files(stories_bin());
  Model model = [&] {
    ModelLoadOptions o;
    o.quant.quantize = true;
    o.quant.blocksize = 64;
    return Model::load(files.spec, *files.tensors, o);
  }();
  std::unique_ptr<Tokenizer> tok = [&] {
    TokenizerSpec s = files.tokenizer->spec();
    s.chat_template = kTemplate;
    return std::make_unique<Tokenizer>(s);
  }();
  LoadedAdapter a1 = load_adapter(fixture("stories260k/initial_adapter"), model);
  LoadedAdapter a2 = load_adapter(fixture("qlora_adapter"), model);
};

struct Running {
  std::unique_ptr<serve::Server> server;
  std::thread thread;
  int port = 0;
  Running(Fixture& fx, serve::ServeOptions opt) {
    opt.port = 0;
    opt.base_name = "stories";
    opt.log = std::getenv("QLORA_SERVE_LOG") != nullptr;
    server = std::make_unique<serve::Server>(fx.model, *fx.tok,
                                             std::map<std::string, const LoraModel*>{
                                                 {"peft", fx.a1.lora.get()}, {"ours", fx.a2.lora.get()}},
                                             opt);
    server->bind();
    port = server->port();
    thread = std::thread([this] { server->run(); });
  }
  ~Running() {
    server->stop();
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }
};

json chat_body(const std::string& model, const std::string& user, int max_tokens = 24, bool stream = false) {
  return {{"model", model},
          {"messages", {{{"role", "user"}, {"content", user}}}},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"stream", stream}};
}

}  // namespace

TEST(Serve, EndpointsAdaptersStreamingAndErrors) {
  Fixture fx;
  serve::ServeOptions opt;
  opt.max_body_bytes = 4000;
  Running srv(fx, opt);
  httplib::Client c = srv.client();

  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  const json m = json::parse(models->body);
  ASSERT_EQ(m["data"].size(), 3u);
  EXPECT_EQ(m["data"][0]["id"], "stories");

  // Non-streamed and streamed answers of each model; adapters change the answer.
  std::map<std::string, std::string> answers;
  for (const std::string model : {"stories", "peft", "ours"}) {
    auto r = c.Post("/v1/chat/completions", chat_body(model, "Once upon a time").dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["object"], "chat.completion");
    EXPECT_EQ(j["model"], model);
    EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
    EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(j["usage"]["completion_tokens"], 24);
    answers[model] = j["choices"][0]["message"]["content"];

    std::string events;
    auto s = c.Post("/v1/chat/completions", chat_body(model, "Once upon a time", 24, true).dump(), "application/json");
    ASSERT_TRUE(s);
    ASSERT_EQ(s->status, 200);
    EXPECT_NE(s->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    std::string text;
    size_t n_events = 0;
    bool done = false, role_first = false;
    for (size_t a = 0, b; (b = s->body.find("\n\n", a)) != std::string::npos; a = b + 2) {
      const std::string ev = s->body.substr(a, b - a);
      ASSERT_EQ(ev.rfind("data: ", 0), 0u) << ev;
      if (ev == "data: [DONE]") {
        done = true;
        continue;
      }
      const json d = json::parse(ev.substr(6));
      if (n_events++ == 0) role_first = d["choices"][0]["delta"].value("role", "") == "assistant";
      if (d["choices"][0]["delta"].contains("content")) text += d["choices"][0]["delta"]["content"].get<std::string>();
    }
    EXPECT_TRUE(done);
    EXPECT_TRUE(role_first);
    EXPECT_GT(n_events, 3u);
    EXPECT_EQ(text, answers[model]) << model;
  }
  EXPECT_NE(answers["stories"], answers["peft"]);
  EXPECT_NE(answers["peft"], answers["ours"]);

  // Text completions.
  auto t = c.Post("/v1/completions", R"({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})",
                  "application/json");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->status, 200) << t->body;
  EXPECT_EQ(json::parse(t->body)["object"], "text_completion");

  // Errors, each with OpenAI's error body.
  struct Bad {
    std::string path, body;
    int status;
    std::string says;
  };
  const std::vector<Bad> bad = {
      {"/v1/chat/completions", "{not json", 400, "not valid JSON"},
      {"/v1/chat/completions", R"({"messages": []})", 400, "'messages' must be a non-empty array"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "temperature": 9})", 400,
       "'temperature' must be in [0, 2]"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000})", 400,
       "'max_tokens'"},
      {"/v1/chat/completions", R"({"model": "nope", "messages": [{"role": "user", "content": "x"}]})", 404,
       "does not exist"},
      {"/v1/completions", R"({"prompt": 5})", 400, "'prompt' must be a string"},
      {"/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"" + std::string(5000, 'x') + "\"}]}",
       413, "larger than"},
      {"/v1/nothing", "{}", 404, "no such endpoint"},
      {"/v1/chat/completions",
       R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]})",
       400, "tool calling is not supported"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})",
       400, "'response_format'"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})", 400,
       "log-probabilities"},
      {"/v1/completions", R"({"prompt": "x", "echo": true})", 400, "echoing the prompt"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": null}]})", 400, "a user message needs text"},
  };
  for (const Bad& b : bad) {
    auto r = c.Post(b.path, b.body, "application/json");
    ASSERT_TRUE(r) << b.path;
    EXPECT_EQ(r->status, b.status) << b.body.substr(0, 80) << " -> " << r->body;
    const json e = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(e.is_object() && e.contains("error")) << r->body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(b.says), std::string::npos) << r->body;
  }

  // Another method on a POST endpoint: 405 naming POST, OpenAI's error body.
  auto g = c.Get("/v1/chat/completions");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 405) << g->body;
  EXPECT_EQ(g->get_header_value("Allow"), "POST");
  EXPECT_NE(g->body.find("takes POST"), std::string::npos) << g->body;
}

// curl's -d labels the JSON application/x-www-form-urlencoded: read as JSON whatever the label,
// past httplib's own 8 KB limit for forms (--max-body is what bounds it).
TEST(Serve, JsonBodyLabelledAsAFormIsReadAsJson) {
  Fixture fx;
  serve::ServeOptions opt;
  opt.max_body_bytes = 100000;
  Running srv(fx, opt);
  httplib::Client c = srv.client();
  json body = chat_body("stories", "Once upon a time", 4);
  body["user"] = std::string(12000, 'u');  // (OpenAI's end-user id: a long body that adds no tokens)
  const std::string text = body.dump();
  ASSERT_GT(text.size(), 8192u);
  auto r = c.Post("/v1/chat/completions", text, "application/x-www-form-urlencoded");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body.substr(0, 300);
  EXPECT_EQ(json::parse(r->body, nullptr, false).value("object", ""), "chat.completion") << r->body.substr(0, 300);
  // and --max-body still holds for it
  body["user"] = std::string(120000, 'u');
  auto big = c.Post("/v1/chat/completions", body.dump(), "application/x-www-form-urlencoded");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413) << big->body.substr(0, 300);
}

// SmolLM2 (~40 tokens/s here): slow enough that a request is still running when the next
// one arrives or the server is stopped.
struct Smol {
  ModelFiles files = open_model_files(smollm2_gguf());
  Model model = [&] {
    ModelLoadOptions o;
    o.quant.quantize = true;
    return Model::load(files.spec, *files.tensors, o);
  }();
};

std::unique_ptr<serve::Server> smol_server(Smol& s, serve::ServeOptions opt, std::thread& th) {
  opt.port = 0;
  opt.log = false;
  auto srv = std::make_unique<serve::Server>(s.model, *s.files.tokenizer, std::map<std::string, const LoraModel*>{},
                                             opt);
  srv->bind();
  th = std::thread([p = srv.get()] { p->run(); });
  return srv;
}

TEST(Serve, QueueFullIs503) {
  if (!std::filesystem::exists(smollm2_gguf())) GTEST_SKIP() << smollm2_gguf() << " is absent";
  Smol s;
  serve::ServeOptions opt;
  opt.max_queue = 0;  // only the running request
  opt.parallel = 1;
  std::thread th;
  auto srv = smol_server(s, opt, th);
  const int port = srv->port();
  std::atomic<int> long_status{0};
  std::thread busy([&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    auto r = c.Post("/v1/completions",
                    R"({"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0, "ignore_eos": true})",
                    "application/json");
    long_status = r ? r->status : -1;
  });
  // Until the long request decodes (a fixed sleep raced a loaded machine's start-up: under
  // ctest -j2 the second request sometimes came first).
  for (int i = 0; i < 20000 && srv->stats().decoded_tokens == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_GT(srv->stats().decoded_tokens, 0u);
  httplib::Client c("127.0.0.1", port);
  auto r = c.Post("/v1/completions", R"({"prompt": "Once", "max_tokens": 4})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_NE(r->body.find("queue_full"), std::string::npos) << r->body;
  busy.join();
  EXPECT_EQ(long_status, 200);
  srv->stop();
  th.join();
}

TEST(Serve, ParallelSlotsAnswerEachRequestAsAlone) {
  // Requests for the base model and both adapters, sent at once to 4 slots: each answer is
  // the one it gets alone (1 slot, one request after the other), and the worker did decode
  // several requests in one step. A long request goes first so that the others join it.
  // Twice: with prompts run whole, and in chunks of 3 tokens between the decoding steps (each
  // compared with the same chunking alone: the chunk size, not the traffic, fixes the numbers).
  Fixture fx;
  struct Req {
    std::string model, prompt;
    int max_tokens;
  };
  const std::vector<Req> reqs = {{"stories", "Once upon a time", 400},
                                 {"stories", "The cat sat on the mat and looked at the big red ball", 40},
                                 {"stories", "Lily went to", 60},
                                 {"peft", "Once upon a time", 40},
                                 {"stories", "A big dog ran to the park with his friend Tom and they played", 50},
                                 {"ours", "The sun", 30},
                                 {"stories", "Tom", 30}};
  auto post = [](int port, const Req& r) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    const json body = {{"model", r.model},    {"prompt", r.prompt},  {"max_tokens", r.max_tokens},
                       {"temperature", 0},    {"ignore_eos", true}};
    auto res = c.Post("/v1/completions", body.dump(), "application/json");
    if (!res || res->status != 200) {
      ADD_FAILURE() << r.model << " " << r.prompt << ": " << (res ? res->body : "no response");
      return std::string();
    }
    const json j = json::parse(res->body);
    EXPECT_EQ(j["usage"]["completion_tokens"], r.max_tokens) << "ignore_eos";
    return j["choices"][0]["text"].get<std::string>();
  };
  for (size_t chunk : {size_t{256}, size_t{3}}) {
    std::vector<std::string> alone;
    {
      serve::ServeOptions opt;
      opt.parallel = 1;
      opt.prefill_chunk = chunk;
      Running srv(fx, opt);
      for (const Req& r : reqs) alone.push_back(post(srv.port, r));
      EXPECT_EQ(srv.server->stats().largest_batch, 1u);
    }
    serve::ServeOptions opt;
    opt.parallel = 4;
    opt.prefill_chunk = chunk;
    Running srv(fx, opt);
    std::vector<std::string> got(reqs.size());
    std::vector<std::thread> th;
    th.emplace_back([&] { got[0] = post(srv.port, reqs[0]); });
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (size_t i = 1; i < reqs.size(); ++i) th.emplace_back([&, i] { got[i] = post(srv.port, reqs[i]); });
    for (auto& t : th) t.join();
    for (size_t i = 0; i < reqs.size(); ++i)
      EXPECT_EQ(got[i], alone[i]) << reqs[i].model << " " << reqs[i].prompt << " chunk " << chunk;
    const serve::Server::Stats st = srv.server->stats();
    std::printf("[ serve ] chunk %zu: %llu decode steps for %llu tokens, largest batch %zu, %llu prompt chunks\n", chunk,
                static_cast<unsigned long long>(st.decode_steps), static_cast<unsigned long long>(st.decoded_tokens),
                st.largest_batch, static_cast<unsigned long long>(st.prompt_chunks));
    EXPECT_GE(st.largest_batch, 2u);
    EXPECT_LE(st.largest_batch, 4u);
    EXPECT_LT(st.decode_steps, st.decoded_tokens);
    if (chunk == 3) {
      EXPECT_GE(st.prompt_chunks, 20u);  // the long prompts ran in pieces
    }
  }
}

TEST(Serve, SlotsKeepTheirPromptsKeysAndValues) {
  // A request extending an earlier prompt + answer (a chat resending its history) reuses that
  // slot's keys and values: usage.prompt_tokens_details.cached_tokens says how many, and the
  // answer is the one a fresh server gives. Another adapter's request reuses nothing.
  Fixture fx;
  auto post = [](int port, const std::string& model, const std::string& prompt) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    const json body = {{"model", model}, {"prompt", prompt}, {"max_tokens", 20}, {"temperature", 0}};
    auto r = c.Post("/v1/completions", body.dump(), "application/json");
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    return r && r->status == 200 ? json::parse(r->body) : json::object();
  };
  serve::ServeOptions opt;
  Running srv(fx, opt);
  const json a = post(srv.port, "stories", "Once upon a time");
  ASSERT_TRUE(a.contains("usage"));
  EXPECT_EQ(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  const std::string second = "Once upon a time" + a["choices"][0]["text"].get<std::string>() + " Then";
  const json b = post(srv.port, "stories", second);
  const int64_t cached = b["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>();
  std::printf("[ serve ] second prompt %lld tokens, %lld of them cached\n",
              static_cast<long long>(b["usage"]["prompt_tokens"].get<int64_t>()), static_cast<long long>(cached));
  EXPECT_GE(cached, 20);
  EXPECT_LT(cached, b["usage"]["prompt_tokens"].get<int64_t>());
  const json other = post(srv.port, "peft", second);
  EXPECT_EQ(other["usage"]["prompt_tokens_details"]["cached_tokens"], 0);  // another adapter's keys

  serve::ServeOptions fresh_opt;
  Running fresh(fx, fresh_opt);
  EXPECT_EQ(post(fresh.port, "stories", second)["choices"][0]["text"], b["choices"][0]["text"]);
  EXPECT_EQ(post(fresh.port, "peft", second)["choices"][0]["text"], other["choices"][0]["text"]);
}

TEST(Serve, SeveralChoicesPerRequest) {
  // "n": 3 choices of one prompt, decoded together (the prompt run once): greedy, all three
  // are the single answer; sampled, choice i is what a request with seed + i gives alone;
  // streamed, each choice's deltas add up to its text and each ends with its finish_reason;
  // usage counts the prompt once and every choice's tokens.
  Fixture fx;
  serve::ServeOptions opt;
  Running srv(fx, opt);
  httplib::Client c = srv.client();
  auto post = [&](const json& body) {
    auto r = c.Post("/v1/completions", body.dump(), "application/json");
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    return r && r->status == 200 ? json::parse(r->body) : json::object();
  };
  const json greedy = post({{"model", "stories"}, {"prompt", "Once upon a time"}, {"max_tokens", 24},
                            {"temperature", 0}, {"n", 3}});
  ASSERT_EQ(greedy["choices"].size(), 3u);
  const json one = post({{"model", "stories"}, {"prompt", "Once upon a time"}, {"max_tokens", 24}, {"temperature", 0}});
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(greedy["choices"][i]["index"], i);
    EXPECT_EQ(greedy["choices"][i]["text"], one["choices"][0]["text"]) << "choice " << i;
  }
  EXPECT_EQ(greedy["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);
  int64_t sum = 0;
  for (const json& ch : greedy["choices"]) sum += static_cast<int64_t>(ch["text"].get<std::string>().size() > 0);
  EXPECT_EQ(sum, 3);

  const json sampled = post({{"model", "peft"}, {"prompt", "Lily"}, {"max_tokens", 24}, {"temperature", 0.9},
                             {"seed", 40}, {"n", 3}});
  ASSERT_EQ(sampled["choices"].size(), 3u);
  int64_t tokens = 0;
  for (int i = 0; i < 3; ++i) {
    const json alone = post({{"model", "peft"}, {"prompt", "Lily"}, {"max_tokens", 24}, {"temperature", 0.9},
                             {"seed", 40 + i}});
    EXPECT_EQ(sampled["choices"][i]["text"], alone["choices"][0]["text"]) << "choice " << i;
    tokens += alone["usage"]["completion_tokens"].get<int64_t>();
  }
  EXPECT_EQ(sampled["usage"]["completion_tokens"], tokens);
  EXPECT_NE(sampled["choices"][0]["text"], sampled["choices"][1]["text"]);

  // Streamed: deltas per choice index.
  const json sbody = {{"model", "peft"}, {"prompt", "Lily"}, {"max_tokens", 24}, {"temperature", 0.9},
                      {"seed", 40},      {"n", 3},         {"stream", true}};
  auto r = c.Post("/v1/completions", sbody.dump(), "application/json");
  ASSERT_TRUE(r && r->status == 200);
  std::vector<std::string> text(3);
  std::vector<int> finished(3, 0);
  size_t pos = 0;
  while ((pos = r->body.find("data: ", pos)) != std::string::npos) {
    const size_t end = r->body.find("\n\n", pos);
    const std::string ev = r->body.substr(pos + 6, end - pos - 6);
    pos = end;
    if (ev == "[DONE]") break;
    const json j = json::parse(ev);
    for (const json& ch : j["choices"]) {
      const int i = ch["index"].get<int>();
      text[static_cast<size_t>(i)] += ch["text"].get<std::string>();
      if (!ch["finish_reason"].is_null()) ++finished[static_cast<size_t>(i)];
    }
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(text[static_cast<size_t>(i)], sampled["choices"][i]["text"]) << "streamed choice " << i;
    EXPECT_EQ(finished[static_cast<size_t>(i)], 1) << "choice " << i;
  }
}

TEST(Serve, SlotsFullThenQueueFullIs503) {
  // Two slots and no queue: two long requests run, a third is answered 503 at once.
  Fixture fx;
  serve::ServeOptions opt;
  opt.parallel = 2;
  opt.max_queue = 0;
  Running srv(fx, opt);
  std::vector<std::thread> th;
  std::atomic<int> ok{0};
  for (int i = 0; i < 2; ++i)
    th.emplace_back([&] {
      httplib::Client c = srv.client();
      auto r = c.Post("/v1/completions",
                      R"({"model": "stories", "prompt": "Once", "max_tokens": 480, "temperature": 0, "ignore_eos": true})",
                      "application/json");
      if (r && r->status == 200) ++ok;
    });
  // Wait until both run (the worker has taken them: a third request finds no free slot).
  for (int i = 0; i < 400 && srv.server->stats().largest_batch < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(srv.server->stats().largest_batch, 2u);
  httplib::Client c = srv.client();
  auto r = c.Post("/v1/completions", R"({"model": "stories", "prompt": "Hi", "max_tokens": 4})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  for (auto& t : th) t.join();
  EXPECT_EQ(ok, 2);
}

TEST(Serve, GracefulShutdownMidRequest) {
  if (!std::filesystem::exists(smollm2_gguf())) GTEST_SKIP() << smollm2_gguf() << " is absent";
  Smol s;
  serve::ServeOptions opt;
  opt.shutdown_grace_s = 0.3;
  std::thread th;
  auto srv = smol_server(s, opt, th);
  const int port = srv->port();
  std::atomic<int> status{0};
  std::string finish;
  std::thread client([&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    auto r = c.Post("/v1/completions", R"({"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0})",
                    "application/json");
    if (r) {
      status = r->status;
      const json j = json::parse(r->body, nullptr, false);
      if (j.contains("choices")) finish = j["choices"][0]["finish_reason"];
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const auto t0 = std::chrono::steady_clock::now();
  srv->stop();  // no new connections; the running request gets 0.3 s, then is cancelled
  th.join();
  client.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(status, 200);
  EXPECT_EQ(finish, "cancelled");
  EXPECT_LT(secs, 5.0);
  // After the shutdown nothing answers.
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(1, 0);
  EXPECT_FALSE(c.Get("/health"));
}

TEST(Serve, LoadIsServedWithFlatMemory) {
  Fixture fx;
  serve::ServeOptions opt;
  opt.max_queue = 64;
  opt.http_threads = 16;
  Running srv(fx, opt);
  auto wave = [&] {
    std::vector<std::thread> th;
    std::atomic<int> ok{0};
    for (int i = 0; i < 50; ++i)
      th.emplace_back([&, i] {
        httplib::Client c("127.0.0.1", srv.port);
        c.set_read_timeout(60, 0);
        const json body = chat_body(i % 3 == 0 ? "stories" : i % 3 == 1 ? "peft" : "ours", "Hi " + std::to_string(i), 8,
                                    i % 2 == 0);
        auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
        if (r && r->status == 200) ++ok;
        else ADD_FAILURE() << "request " << i << ": " << (r ? std::to_string(r->status) + " " + r->body
                                                           : "no response: " + httplib::to_string(r.error()));
      });
    for (auto& t : th) t.join();
    return ok.load();
  };
  EXPECT_EQ(wave(), 50);
  const int64_t rss1 = current_rss_bytes();
  EXPECT_EQ(wave(), 50);
  EXPECT_EQ(wave(), 50);
  const int64_t rss2 = current_rss_bytes();
  std::printf("RSS after 50 requests %.1f MB, after 150 %.1f MB\n", rss1 / 1e6, rss2 / 1e6);
  EXPECT_LT(rss2 - rss1, 16'000'000);
}

TEST(OpenAiApi, RequestRules) {
  serve::Limits lim;
  auto ok = serve::parse_request(serve::Endpoint::ChatCompletions,
                                 R"({"model": "m", "messages": [{"role": "developer", "content": [{"type": "text",
                                 "text": "be brief"}]}, {"role": "user", "content": "hi"}], "stop": ["\n", "x"],
                                 "max_completion_tokens": 7, "seed": 3, "stream": true,
                                 "stream_options": {"include_usage": true}})",
                                 lim);
  ASSERT_TRUE(std::holds_alternative<serve::CompletionRequest>(ok));
  const auto& r = std::get<serve::CompletionRequest>(ok);
  EXPECT_EQ(r.messages[0]["role"], "system");
  EXPECT_EQ(r.messages[0]["content"], "be brief");
  EXPECT_EQ(r.gen.max_new_tokens, 7);
  EXPECT_EQ(r.gen.stop_strings.size(), 2u);
  EXPECT_TRUE(r.stream && r.include_usage);
  EXPECT_EQ(r.gen.sampling.temperature, 1.0f);  // OpenAI's default
  for (const char* body : {R"({"messages": [{"role": "robot", "content": "x"}]})",
                           R"({"messages": [{"role": "user", "content": "x"}], "n": 0})",
                           R"({"messages": [{"role": "user", "content": "x"}], "n": 9})",
                           R"({"messages": [{"role": "user", "content": "x"}], "n": 1.5})",
                           R"({"messages": [{"role": "user", "content": "x"}], "stop": [""]})",
                           R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5})",
                           R"({"messages": [{"role": "user", "content": "x"}], "top_p": 0})", R"([1, 2])"}) {
    auto e = serve::parse_request(serve::Endpoint::ChatCompletions, body, lim);
    ASSERT_TRUE(std::holds_alternative<serve::ApiError>(e)) << body;
    EXPECT_EQ(std::get<serve::ApiError>(e).status, 400) << body;
    EXPECT_NE(std::get<serve::ApiError>(e).body().find("\"error\""), std::string::npos);
  }
}
