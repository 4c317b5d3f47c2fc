#!/usr/bin/env python3
"""Prompt and decode speed of llama.cpp (through llama-cpp-python) on a GGUF model.

The reference point for `qlora generate`'s speed (bench/bench_generate.sh): the same
prompt, the same number of generated tokens, greedy, 1 and 2 threads.

Per thread count and repetition: a fresh context; the whole prompt goes through
llama_decode in one batch (n_batch = n_ubatch >= prompt length), then n_gen - 1
single-token llama_decode calls, each on the argmax of the previous logits (the first
generated token comes from the prompt's logits, as in `qlora generate`, whose decode count
is n_gen - 1 too). End-of-generation tokens are ignored, so every run decodes the same
number of tokens. Times are llama.cpp's own (llama_perf_context: t_p_eval_ms and
t_eval_ms, the time inside llama_decode and the logits sync); the wall clock of the Python
loop (argmax included) is reported too. The median over repetitions is printed as JSON.

  .refenv/bin/python tools/bench_llamacpp.py --model models/X.gguf --threads 1 2
  .refenv/bin/python tools/bench_llamacpp.py --model models/X.gguf --threads 1 2 --parallel 1 4 8
  .refenv/bin/python tools/bench_llamacpp.py --requantize-q4_0 IN.gguf OUT.gguf
  .refenv/bin/python tools/bench_llamacpp.py --tensor-types models/X.gguf
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import time

import numpy as np

import llama_cpp as L

# ~128 tokens of plain English for the SmolLM2 tokenizer (bench_generate.sh passes the same
# text to `qlora generate`).
DEFAULT_PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg, a goldsmith from Mainz, combined several existing technologies into a "
    "single machine. Movable metal type, oil-based ink and a wooden press adapted from "
    "those used to make wine allowed a small workshop to produce hundreds of identical "
    "pages in a day. Within fifty years, presses were running in more than two hundred "
    "European cities, and millions of books had been printed. The consequences were "
    "enormous: scholars could compare the same text, scientists could share their "
    "results, and ordinary people began to read. In this essay, we will look at three"
)


def _silence_llama_log():
    # llama.cpp logs every load to stderr; keep the JSON output clean.
    @L.llama_log_callback
    def _cb(level, text, user_data):
        pass

    L.llama_log_set(_cb, ctypes.c_void_p(0))
    return _cb  # keep a reference alive


def tensor_types(path):
    """{tensor name: (ggml type name, shape, bytes)} from the GGUF, via the gguf package."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    return {t.name: (t.tensor_type.name, [int(x) for x in t.shape], int(t.n_bytes)) for t in r.tensors}


def summarize_types(path):
    """Short human summary: type of token_embd / output and counts of the rest."""
    types = tensor_types(path)
    counts = {}
    for name, (ty, _, _) in types.items():
        if name.startswith("blk."):
            kind = name.split(".", 2)[2]
            counts.setdefault(ty, set()).add(kind)
    out = {
        "token_embd": types.get("token_embd.weight", ("-",))[0],
        "output": types.get("output.weight", ("tied to token_embd",))[0],
        "blocks": {ty: sorted(kinds) for ty, kinds in counts.items()},
        "file_bytes": os.path.getsize(path),
    }
    return out


def bytes_per_token(path):
    """Weight bytes llama.cpp reads to decode one token: every tensor except token_embd,
    of which one row is read (gathered) -- unless there is no output.weight, in which case
    token_embd is the output matrix and is read whole."""
    types = tensor_types(path)
    tied = "output.weight" not in types
    total = 0
    for name, (_, shape, nbytes) in types.items():
        if name == "token_embd.weight" and not tied:
            total += nbytes // shape[-1]  # one row
        else:
            total += nbytes
    return total


def requantize_q4_0(src, dst, threads):
    p = L.llama_model_quantize_default_params()
    p.ftype = L.LLAMA_FTYPE_MOSTLY_Q4_0
    p.allow_requantize = True
    p.nthread = threads
    rc = L.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc})")


def tokenize(vocab, text):
    data = text.encode()
    buf = (L.llama_token * (len(data) + 16))()
    n = L.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
    if n < 0:
        raise RuntimeError("tokenize failed")
    return list(buf[:n])


def clear_memory(ctx):
    if hasattr(L, "llama_memory_clear") and hasattr(L, "llama_get_memory"):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
    elif hasattr(L, "llama_kv_self_clear"):
        L.llama_kv_self_clear(ctx)
    else:
        L.llama_kv_cache_clear(ctx)


def run_once(ctx, vocab_n, prompt_ids, n_gen):
    clear_memory(ctx)
    L.llama_perf_context_reset(ctx)
    arr = (L.llama_token * len(prompt_ids))(*prompt_ids)
    tok = (L.llama_token * 1)()

    def argmax_last():
        ptr = L.llama_get_logits_ith(ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(vocab_n,))))

    t0 = time.perf_counter()
    if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(prompt_ids))) != 0:
        raise RuntimeError("llama_decode (prompt) failed")
    out = [argmax_last()]
    t1 = time.perf_counter()
    for _ in range(n_gen - 1):
        tok[0] = out[-1]
        if L.llama_decode(ctx, L.llama_batch_get_one(tok, 1)) != 0:
            raise RuntimeError("llama_decode failed")
        out.append(argmax_last())
    t2 = time.perf_counter()
    perf = L.llama_perf_context(ctx)
    return {
        "prompt_tokens": len(prompt_ids),
        "decode_steps": n_gen - 1,
        "prompt_tps": perf.n_p_eval / (perf.t_p_eval_ms / 1e3) if perf.t_p_eval_ms > 0 else None,
        "decode_tps": perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms > 0 else None,
        "perf_n_p_eval": perf.n_p_eval,
        "perf_n_eval": perf.n_eval,
        "wall_prompt_tps": len(prompt_ids) / (t1 - t0),
        "wall_decode_tps": (n_gen - 1) / (t2 - t1),
        "output_ids": out,
    }


def load_model(model_path, prompt, repack):
    """(model, vocab size, prompt ids) of a GGUF through llama.cpp."""
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_mmap = True
    # Extra buffer types = llama.cpp's run-time weight repacking (Q4_0 -> interleaved
    # Q4_0x8 for AVX-512/AVX2 GEMM/GEMV). On by default; --no-repack turns it off.
    mp.use_extra_bufts = repack
    model = L.llama_model_load_from_file(model_path.encode(), mp)
    if not model:
        raise SystemExit(f"cannot load {model_path}")
    vocab = L.llama_model_get_vocab(model)
    return model, L.llama_vocab_n_tokens(vocab), tokenize(vocab, prompt)


def bench(model_path, threads_list, prompt, n_gen, reps, warmup, repack=True):
    model, vocab_n, prompt_ids = load_model(model_path, prompt, repack)
    results = []
    for nt in threads_list:
        cp = L.llama_context_default_params()
        cp.n_ctx = 512 if len(prompt_ids) + n_gen <= 512 else len(prompt_ids) + n_gen + 16
        cp.n_batch = cp.n_ubatch = max(512, len(prompt_ids))
        cp.n_threads = cp.n_threads_batch = nt
        cp.no_perf = False
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            raise SystemExit("cannot create context")
        runs = []
        for i in range(warmup + reps):
            r = run_once(ctx, vocab_n, prompt_ids, n_gen)
            if i >= warmup:
                runs.append(r)
        L.llama_free(ctx)
        med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        results.append({
            "threads": nt,
            "prompt_tokens": len(prompt_ids),
            "decode_steps": n_gen - 1,
            "reps": reps,
            "prompt_tps": med("prompt_tps"),
            "decode_tps": med("decode_tps"),
            "wall_prompt_tps": med("wall_prompt_tps"),
            "wall_decode_tps": med("wall_decode_tps"),
            "decode_tps_all": [round(r["decode_tps"], 2) for r in runs],
            "prompt_tps_all": [round(r["prompt_tps"], 2) for r in runs],
            "same_output_every_rep": all(r["output_ids"] == runs[0]["output_ids"] for r in runs),
            "first_output_ids": runs[0]["output_ids"][:16],
        })
    L.llama_model_free(model)
    return {
        "llama_cpp_python": L.__version__,
        "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        "model": model_path,
        "repack": repack,
        "tensor_types": summarize_types(model_path),
        "weight_bytes_per_token": bytes_per_token(model_path),
        "n_gen": n_gen,
        "results": results,
    }


def run_parallel_once(ctx, vocab_n, prompt_ids, n_gen, n_par):
    """n_par sequences (seq ids 0..n_par-1), each prefilled with the prompt on its own, then
    n_gen - 1 steps that decode one token of every sequence in one llama_decode (llama.cpp's
    batched decoding, as its server's parallel slots and llama-batched do), each sequence
    greedy on its own logits. Returns the wall-clock decode rate over all sequences."""
    clear_memory(ctx)
    P = len(prompt_ids)
    batch = L.llama_batch_init(max(P, n_par), 0, 1)
    try:
        def fill(items):  # items: (token, pos, seq, want_logits)
            batch.n_tokens = len(items)
            for i, (tok, pos, seq, lg) in enumerate(items):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = 1 if lg else 0

        def argmax_ith(i):
            ptr = L.llama_get_logits_ith(ctx, i)
            return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(vocab_n,))))

        t0 = time.perf_counter()
        last = []
        for s in range(n_par):
            fill([(t, p, s, p == P - 1) for p, t in enumerate(prompt_ids)])
            if L.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode (prompt) failed")
            last.append(argmax_ith(P - 1))
        outs = [[t] for t in last]
        t1 = time.perf_counter()
        for step in range(n_gen - 1):
            fill([(outs[s][-1], P + step, s, True) for s in range(n_par)])
            if L.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode (batched) failed")
            for s in range(n_par):
                outs[s].append(argmax_ith(s))
        t2 = time.perf_counter()
    finally:
        L.llama_batch_free(batch)
    return {"prompt_s": t1 - t0, "decode_s": t2 - t1,
            "decode_tps": n_par * (n_gen - 1) / (t2 - t1), "output_ids": outs}


def bench_parallel(model_path, threads_list, prompt, n_gen, reps, warmup, parallels, repack=True):
    model, vocab_n, prompt_ids = load_model(model_path, prompt, repack)
    results = []
    for nt in threads_list:
        for n_par in parallels:
            cp = L.llama_context_default_params()
            per_seq = len(prompt_ids) + n_gen + 16
            cp.n_ctx = n_par * per_seq
            cp.n_seq_max = n_par
            cp.kv_unified = True  # one cache for all sequences, as llama-server's default
            cp.n_batch = cp.n_ubatch = max(512, len(prompt_ids))
            cp.n_threads = cp.n_threads_batch = nt
            cp.no_perf = False
            ctx = L.llama_init_from_model(model, cp)
            if not ctx:
                raise SystemExit("cannot create context")
            runs = []
            for i in range(warmup + reps):
                r = run_parallel_once(ctx, vocab_n, prompt_ids, n_gen, n_par)
                if i >= warmup:
                    runs.append(r)
            L.llama_free(ctx)
            results.append({
                "threads": nt,
                "parallel": n_par,
                "prompt_tokens": len(prompt_ids),
                "decode_steps": n_gen - 1,
                "reps": reps,
                "decode_tps": statistics.median(r["decode_tps"] for r in runs),
                "decode_tps_all": [round(r["decode_tps"], 2) for r in runs],
                "sequences_identical": all(o == runs[0]["output_ids"][0] for o in runs[0]["output_ids"]),
                "first_output_ids": runs[0]["output_ids"][0][:16],
            })
    L.llama_model_free(model)
    return {"llama_cpp_python": L.__version__, "model": model_path, "repack": repack, "n_gen": n_gen,
            "timing": "wall clock of the batched decode loop, greedy argmax per sequence included",
            "results": results}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--print-prompt", action="store_true", help="print the default prompt and exit")
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-repack", action="store_true", help="llama_model_params.use_extra_bufts = false")
    ap.add_argument("--requantize-q4_0", nargs=2, metavar=("IN", "OUT"))
    ap.add_argument("--tensor-types", metavar="GGUF")
    ap.add_argument("--parallel", type=int, nargs="+", metavar="N",
                    help="batched decoding of N sequences at once (llama_batch with N seq ids)")
    a = ap.parse_args()

    if a.print_prompt:
        sys.stdout.write(DEFAULT_PROMPT)
        return
    if a.tensor_types:
        print(json.dumps({"model": a.tensor_types, **summarize_types(a.tensor_types),
                          "weight_bytes_per_token": bytes_per_token(a.tensor_types)}, indent=1))
        return
    cb = _silence_llama_log()
    if a.requantize_q4_0:
        requantize_q4_0(*a.requantize_q4_0, threads=max(a.threads))
        print(json.dumps(summarize_types(a.requantize_q4_0[1]), indent=1))
        return
    if not a.model:
        ap.error("--model is required")
    if a.parallel:
        print(json.dumps(bench_parallel(a.model, a.threads, a.prompt, a.n_gen, a.reps, a.warmup, a.parallel,
                                        repack=not a.no_repack), indent=1))
        return
    print(json.dumps(bench(a.model, a.threads, a.prompt, a.n_gen, a.reps, a.warmup, repack=not a.no_repack), indent=1))
    del cb


if __name__ == "__main__":
    main()
