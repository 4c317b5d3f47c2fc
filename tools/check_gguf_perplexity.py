#!/usr/bin/env python3
"""llama.cpp's loss / perplexity of a GGUF on a plain text file, chunked as `qlora eval` does.

`qlora eval --data FILE.txt --seq-len N` tokenizes the text as one document (EOS appended),
cuts it into chunks of N + 1 tokens overlapping by one (the last one shorter), so every token
but the first is a target once, and averages the next-token loss over them; this
does the same with llama-cpp-python (a fresh KV cache per chunk), so the two numbers are
the same quantity from two engines on the same file:

    .refenv/bin/python tools/check_gguf_perplexity.py MODEL.gguf FILE.txt [--seq-len 256] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import llama_cpp
    llm = llama_cpp.Llama(args.model, n_ctx=args.seq_len + 8, n_batch=args.seq_len + 8, n_threads=args.threads,
                          logits_all=True, verbose=False)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    tokens = llm.tokenize(text.encode(), add_bos=add_bos, special=True) + [llm.token_eos()]
    nll, count = 0.0, 0
    for start in range(0, len(tokens) - 1, args.seq_len):
        chunk = tokens[start:start + args.seq_len + 1]
        if len(chunk) < 2:
            break
        llm.reset()
        llm.eval(chunk[:-1])
        logits = np.array(llm.scores[: len(chunk) - 1], dtype=np.float64)
        m = logits.max(axis=-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
        nll += float(np.sum(logz - logits[np.arange(len(chunk) - 1), chunk[1:]]))
        count += len(chunk) - 1
    loss = nll / count
    print(json.dumps({"model": args.model, "engine": "llama.cpp", "tokens": len(tokens), "targets": count,
                      "loss": round(loss, 4), "perplexity": round(math.exp(loss), 3)}))


if __name__ == "__main__":
    main()
