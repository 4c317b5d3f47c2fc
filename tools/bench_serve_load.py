#!/usr/bin/env python3
"""Concurrent clients against an OpenAI-compatible server (`qlora serve`, llama.cpp's server):
C clients, each sending R completions one after another (greedy, ignore_eos, max_tokens N,
prompts that differ per request), all clients at once. Prints JSON: the completion tokens
per second over the whole run (every client's tokens / wall clock), requests per second,
and the median and worst request latency. Standard library only.

  python3 tools/bench_serve_load.py --url http://127.0.0.1:8080 --clients 4 --requests 4 --max-tokens 64
  python3 tools/bench_serve_load.py --url http://127.0.0.1:8080 --two-turn-chat TEXT_FILE
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request

TOPICS = ["the sea", "a lighthouse", "winter in the mountains", "a small bakery", "the first train",
          "an old library", "a garden at night", "the city market", "a long bridge", "a letter from home"]


def post(url, body, timeout):
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def two_turn_chat(url, long_text, timeout):
    """A chat of two turns, the second resending the first (as chat clients do): wall time and
    usage of each (usage.prompt_tokens_details.cached_tokens: the slot's reused keys/values)."""
    def chat(messages):
        body = {"messages": messages, "max_tokens": 16, "temperature": 0}
        req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=timeout) as r:
            j = json.loads(r.read())
        return j, time.perf_counter() - t0
    msgs = [{"role": "user", "content": "Summarize this text: " + long_text}]
    j1, t1 = chat(msgs)
    msgs += [j1["choices"][0]["message"], {"role": "user", "content": "Now in one sentence."}]
    j2, t2 = chat(msgs)
    return {"turn1_s": round(t1, 3), "turn1_usage": j1["usage"], "turn2_s": round(t2, 3), "turn2_usage": j2["usage"]}


def stall(url, long_text, timeout):
    """One client streams 200 tokens; 0.3 s in, another sends a long prompt (the file's text).
    The streaming client's largest gap between two tokens says how long the new prompt held
    the running request up (`qlora serve --prefill-chunk`)."""
    times = []

    def streamer():
        body = {"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True}
        req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            for line in r:
                if line.startswith(b"data: {"):
                    times.append(time.perf_counter())

    th = threading.Thread(target=streamer)
    th.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    r = post(url, {"prompt": long_text, "max_tokens": 8, "temperature": 0}, timeout)
    long_s = time.perf_counter() - t0
    th.join()
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"stream_tokens": len(times), "max_gap_s": round(max(gaps), 3) if gaps else None,
            "median_gap_s": round(statistics.median(gaps), 4) if gaps else None,
            "long_prompt_tokens": r["usage"]["prompt_tokens"], "long_request_s": round(long_s, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=4, help="per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--two-turn-chat", metavar="TEXT_FILE",
                    help="instead: one two-turn chat about the file's text (prompt caching across turns)")
    ap.add_argument("--stall", metavar="TEXT_FILE",
                    help="instead: how long a long prompt (the file's text) holds up a streaming request")
    a = ap.parse_args()
    if a.stall:
        print(json.dumps(stall(a.url, open(a.stall).read(), a.timeout)))
        return
    if a.two_turn_chat:
        print(json.dumps(two_turn_chat(a.url, open(a.two_turn_chat).read(), a.timeout)))
        return

    latencies, tokens, errors = [], [], []
    lock = threading.Lock()

    def client(c):
        for i in range(a.requests):
            topic = TOPICS[(c * a.requests + i) % len(TOPICS)]
            body = {"prompt": f"Write a short story about {topic}. Once upon a time,", "max_tokens": a.max_tokens,
                    "temperature": 0, "ignore_eos": True}
            if a.model:
                body["model"] = a.model
            t0 = time.perf_counter()
            try:
                r = post(a.url, body, a.timeout)
                n = r["usage"]["completion_tokens"]
            except Exception as e:  # noqa: BLE001 - reported, not raised
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens.append(n)

    t0 = time.perf_counter()
    th = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    print(json.dumps({
        "clients": a.clients, "requests_per_client": a.requests, "max_tokens": a.max_tokens,
        "wall_s": round(wall, 3), "completion_tokens": sum(tokens),
        "tokens_per_s": round(sum(tokens) / wall, 1), "requests_per_s": round(len(tokens) / wall, 3),
        "latency_median_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None, "errors": errors[:5],
        "n_errors": len(errors)}))


if __name__ == "__main__":
    main()
