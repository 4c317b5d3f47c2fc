#!/usr/bin/env python3
"""`qlora serve` driven by the official OpenAI Python client and by curl, as users do.

Starts the real server (stories260K with two LoRA adapters; SmolLM2 for chat when fetched)
on a free loopback port and checks: completions by model name (adapters answer differently
from each other and from the base), chat completions streamed and not (deltas add up to
the whole answer), errors surfacing as the client's exceptions (404 model, 400 parameter),
curl's view of /health, malformed JSON (400) and an oversized body (413), and SIGTERM in the
middle of a streamed answer (the stream ends, the server exits 0). Prints requests/s and
time-to-first-token. Exit 77 (skipped) when the openai package is missing.

    .testenv/bin/python tests/serve/serve_openai_client.py --qlora build/qlora
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

try:
    import openai
except ImportError:
    print("skipped: the openai package is not installed (scripts/test.sh makes .testenv)")
    sys.exit(77)

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("QLORA_DATA_DIR", ROOT.parent / "shared" / "data"))
FIX = ROOT / "tests" / "fixtures" / "train_parity"
SMOL = Path(os.environ.get("QLORA_MODELS_DIR", ROOT / "models")) / "SmolLM2-135M-Instruct.Q4_1.gguf"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


class Server:
    def __init__(self, qlora, args):
        self.p = subprocess.Popen([qlora, "serve", "--port", "0", *args], stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "OMP_WAIT_POLICY": "passive"})
        self.log = []
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline:
            line = self.p.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise SystemExit("server did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def _drain(self):
        for line in self.p.stderr:
            self.log.append(line)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=30)


def curl(*args):
    r = subprocess.run(["curl", "-s", "-o", "/dev/stderr", "-w", "%{http_code}", *args], capture_output=True, text=True)
    return int(r.stdout or 0), r.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=str(ROOT / "build" / "qlora"))
    args = ap.parse_args()
    stories = ["--model", str(DATA / "stories260K" / "stories260K.bin"), "--tokenizer",
               str(DATA / "stories260K" / "tok512.bin"), "--alias", "stories",
               "--adapter", f"peft={FIX / 'stories260k' / 'initial_adapter'}", "--adapter", f"ours={FIX / 'qlora_adapter'}",
               "--max-body", "4KB"]
    s = Server(args.qlora, stories)
    c = s.client
    ids = [m.id for m in c.models.list().data]
    check(ids == ["stories", "ours", "peft"], f"/v1/models lists the base and both adapters: {ids}")
    texts = {}
    for name in ("stories", "peft", "ours"):
        r = c.completions.create(model=name, prompt="Once upon a time", max_tokens=24, temperature=0)
        texts[name] = r.choices[0].text
        check(r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length", f"completion from {name}")
    check(len(set(texts.values())) == 3, "the base and the two adapters give three different answers")
    r = c.completions.create(model="peft", prompt="Once upon a time", max_tokens=24, temperature=0.9, seed=7, n=3)
    check(len(r.choices) == 3 and [ch.index for ch in r.choices] == [0, 1, 2]
          and 0 < r.usage.completion_tokens <= 3 * 24 and len({ch.text for ch in r.choices}) > 1,
          f"n=3 gives three sampled choices: {[ch.text[:20] for ch in r.choices]}")
    check(r.usage.prompt_tokens_details is not None, "usage.prompt_tokens_details.cached_tokens is reported")
    try:
        c.completions.create(model="nope", prompt="x", max_tokens=4)
        check(False, "unknown model is an error")
    except openai.NotFoundError as e:
        check("does not exist" in str(e), "unknown model: openai.NotFoundError (404)")
    try:
        c.completions.create(model="stories", prompt="x", max_tokens=4, temperature=7)
        check(False, "temperature 7 is an error")
    except openai.BadRequestError as e:
        check("temperature" in str(e), "temperature 7: openai.BadRequestError (400)")
    code, body = curl(s.url + "/health")
    check(code == 200 and json.loads(body)["status"] == "ok", "curl /health")
    code, body = curl("-X", "POST", s.url + "/v1/completions", "-H", "Content-Type: application/json", "-d", "{oops")
    check(code == 400 and "not valid JSON" in body, "curl: malformed JSON is 400")
    code, body = curl("-X", "POST", s.url + "/v1/completions", "-d", json.dumps({"prompt": "x" * 6000}))
    check(code == 413, f"curl: a body over --max-body is 413 (got {code})")
    # Throughput of short requests, one client after another.
    t0 = time.time()
    n = 20
    for i in range(n):
        c.completions.create(model="peft", prompt=f"Tim {i}", max_tokens=8, temperature=0)
    rps = n / (time.time() - t0)
    check(s.stop() == 0, "SIGTERM: the stories server exits 0")
    check(any("POST /v1/completions 200 model=peft" in l for l in s.log), "one log line per request")
    result = {"stories260K_requests_per_s_8_tokens": round(rps, 1)}

    if SMOL.exists():
        s = Server(args.qlora, ["--model", str(SMOL), "--alias", "smollm2"])
        msgs = [{"role": "user", "content": "Name three colors."}]
        whole = s.client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=16, temperature=0)
        t0 = time.time()
        ttft = None
        parts = []
        for ch in s.client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=16, temperature=0,
                                                   stream=True):
            if ch.choices and ch.choices[0].delta.content:
                if ttft is None:
                    ttft = time.time() - t0
                parts.append(ch.choices[0].delta.content)
        check("".join(parts) == whole.choices[0].message.content,
              f"chat: streamed deltas equal the whole answer ({whole.choices[0].message.content!r})")
        result["smollm2_time_to_first_token_s"] = round(ttft, 3)
        # SIGTERM while an answer streams: it ends cleanly, the server exits 0.
        got, finish = [], []

        def long_stream():
            try:
                for ch in s.client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=400,
                                                           temperature=0, stream=True):
                    if ch.choices and ch.choices[0].delta.content:
                        got.append(ch.choices[0].delta.content)
                    if ch.choices and ch.choices[0].finish_reason:
                        finish.append(ch.choices[0].finish_reason)
            except Exception as e:  # noqa: BLE001 - reported below
                finish.append(f"error: {e}")
        th = threading.Thread(target=long_stream)
        th.start()
        while not got and th.is_alive():
            time.sleep(0.05)
        t0 = time.time()
        rc = s.stop()
        th.join(timeout=30)
        check(rc == 0 and finish and finish[0] in ("length", "stop", "cancelled"),
              f"SIGTERM mid-stream: stream ended with {finish[:1]}, server exit {rc} in {time.time() - t0:.1f} s")
    print(json.dumps(result))
    print(f"{0 if failures else 1} passed, {len(failures)} failed")  # one test, for ctest logs
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
