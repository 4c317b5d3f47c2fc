#!/usr/bin/env python3
"""`qlora merge --out FILE.gguf` checked against references nobody here wrote (run by hand;
needs .refenv, see setup_refenv.sh; llama.cpp part needs llama-cpp-python, see bench/RESULTS.md).

SmolLM2-135M-Instruct (GGUF, NF4 + double quant) + PEFT's adapter from
tests/fixtures/train_parity/smollm2/initial_adapter is merged by qlora into
  - a float32 Hugging Face directory (the merged weights, unrounded), and
  - GGUF files of each --gguf-type.
Then:
  1. gguf-py (the gguf package from llama.cpp) reads every GGUF; each tensor's bytes are
     compared with gguf-py's own conversion of the float32 merge (llama.cpp's q/k row
     permutation for the llama architecture, then numpy float16 / gguf.quants.quantize for
     BF16, Q8_0, Q4_0): the count of tensors whose bytes differ is printed. For q4_k_m the
     reference is llama.cpp's own quantizer (llama_model_quantize, LLAMA_FTYPE_MOSTLY_Q4_K_M)
     run on qlora's f32 GGUF of the merge: each tensor's type and bytes are compared.
  2. llama.cpp (llama-cpp-python) loads each GGUF: greedy tokens on a chat prompt compared
     with `qlora generate` on the same file, and the perplexity of the first 1500 characters (~400 tokens) of Tiny
     Shakespeare compared with `qlora eval` on the same file.
Prints one JSON line per GGUF type.

    .refenv/bin/python tools/check_merge_gguf.py [--qlora build/qlora] [--types f16,bf16,q8_0,q4_0,q4_k_m]
"""
import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, quants
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER = ROOT / "tests" / "fixtures" / "train_parity" / "smollm2" / "initial_adapter"
PROMPT = 'Classify "marimba" as one of: animal, fruit, color, country, vehicle, instrument. Reply with one word.'
TYPES = {"f16": GGMLQuantizationType.F16, "bf16": GGMLQuantizationType.BF16, "f32": GGMLQuantizationType.F32,
         "q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0, "q4_k_m": None}


def hf_name(g):
    glob = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    layer = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    stem, suffix = g.rsplit(".", 1)
    if stem in glob:
        return f"{glob[stem]}.{suffix}"
    _, n, part = stem.split(".", 2)
    return f"model.layers.{n}.{layer[part]}.{suffix}"


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF rotary halves -> interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def reference_bytes(x, qtype):
    if qtype == GGMLQuantizationType.F32:
        return x.astype(np.float32).tobytes()
    if qtype == GGMLQuantizationType.F16:
        return x.astype(np.float16).tobytes()
    return quants.quantize(x.astype(np.float32), qtype).tobytes()


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=str(ROOT / "build" / "qlora"))
    ap.add_argument("--types", default="f16,bf16,q8_0,q4_0")
    args = ap.parse_args()
    if not GGUF.exists():
        sys.exit(f"{GGUF} missing: run scripts/fetch_model.sh")
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    base = [args.qlora, "merge", "--model", str(GGUF), "--quant", "nf4", "--double-quant", "--adapter", str(ADAPTER),
            "--quiet"]
    text = (DATA / "text" / "tinyshakespeare.txt").read_text()[:1500]  # ~400 tokens: one sequence
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(base + ["--out", str(tmp / "hf32"), "--dtype", "fp32"])
        merged = load_file(str(tmp / "hf32" / "model.safetensors"))
        cfg = json.loads((tmp / "hf32" / "config.json").read_text())
        (tmp / "text.txt").write_text(text)
        for t in args.types.split(","):
            out = tmp / f"m_{t}.gguf"
            run(base + ["--out", str(out), "--gguf-type", t])
            r = GGUFReader(str(out))
            differ, n = [], 0
            if t == "q4_k_m":
                differ, n, types = compare_with_llama_quantize(base, tmp, r, llama_cpp, args.qlora)
            for tensor in (r.tensors if t != "q4_k_m" else []):
                x = merged[hf_name(tensor.name)]
                if tensor.name.startswith("blk.") and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
                    heads = cfg["num_attention_heads"] if "attn_q" in tensor.name else cfg["num_key_value_heads"]
                    x = permute(x, heads)
                want = reference_bytes(x, GGMLQuantizationType(tensor.tensor_type))
                n += 1
                if bytes(tensor.data.tobytes()) != want:
                    differ.append(tensor.name)
            res = {"type": t, "tensors": n, "bytes_differ_from_" + ("llama_quantize" if t == "q4_k_m" else "gguf_py"):
                   len(differ), "first_differing": differ[:3], "file_mb": round(out.stat().st_size / 1e6, 1)}
            if t == "q4_k_m":
                res["tensor_types"] = types
            ok = ok and not differ
            # qlora on the same file: greedy answer and perplexity.
            q_gen = run([args.qlora, "generate", "--model", str(out), "--quant", "none", "--chat", "--prompt", PROMPT,
                         "-n", "12", "--temperature", "0", "--quiet", "--no-echo"]).stdout.strip()
            q_eval = json.loads(run([args.qlora, "eval", "--model", str(out), "--quant", "none", "--data",
                                     str(tmp / "text.txt"), "--seq-len", "1024", "--train-on-prompt", "--json",
                                     "--quiet"]).stdout.strip().splitlines()[-1])
            res["qlora_answer"] = q_gen
            res["qlora_ppl"] = q_eval["ppl"]
            if llama_cpp is not None:
                llm = llama_cpp.Llama(model_path=str(out), n_ctx=1024, logits_all=True, verbose=False, n_threads=2)
                chat = llm.create_chat_completion(messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                                                  temperature=0.0, top_k=1)
                res["llama_cpp_answer"] = chat["choices"][0]["message"]["content"].strip()
                # The same targets as `qlora eval` on a plain text file: the text, then EOS.
                ids = llm.tokenize(text.encode(), add_bos=False, special=False) + [llm.token_eos()]
                llm.reset()
                llm.eval(ids)
                logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
                lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
                nll = [lse[i] - logits[i, ids[i + 1]] for i in range(len(ids) - 1)]
                res["llama_cpp_ppl"] = math.exp(float(np.mean(nll)))
                res["ppl_ratio"] = res["llama_cpp_ppl"] / res["qlora_ppl"]
                res["answers_equal"] = res["llama_cpp_answer"] == q_gen
            print(json.dumps(res), flush=True)
        if llama_cpp is not None:
            ok = check_lora_gguf(args.qlora, base, tmp, text, llama_cpp) and ok
            ok = check_gguf_from_hf(args.qlora, tmp, text, llama_cpp) and ok
            ok = check_spm_gguf(args.qlora, tmp, llama_cpp) and ok
            ok = check_llama2c_gguf(args.qlora, tmp, llama_cpp) and ok
    sys.exit(0 if ok else 1)


def compare_with_llama_quantize(base, tmp, ours, llama_cpp, qlora):
    """llama.cpp's Q4_K_M of qlora's f32 GGUF of the same merge, tensor by tensor against
    qlora's q4_k_m: (names whose type or bytes differ, tensors compared, type histogram)."""
    if llama_cpp is None:
        sys.exit("q4_k_m needs llama-cpp-python (its quantizer is the reference)")
    f32 = tmp / "ref_f32.gguf"
    run(base + ["--out", str(f32), "--gguf-type", "f32"])
    ref_path = tmp / "ref_q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(ref_path).encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize failed: {rc}")
    ref = {t.name: t for t in GGUFReader(str(ref_path)).tensors}
    differ, types = [], {}
    for t in ours.tensors:
        name = GGMLQuantizationType(t.tensor_type).name
        types[name] = types.get(name, 0) + 1
        r = ref.get(t.name)
        if r is None or r.tensor_type != t.tensor_type or bytes(r.data.tobytes()) != bytes(t.data.tobytes()):
            differ.append(t.name)
    return differ, len(ours.tensors), types


def check_gguf_from_hf(qlora, tmp, text, llama_cpp):
    """A GGUF written from a Hugging Face directory (qlora's fp32 merge; its tokenizer.json
    becomes llama.cpp's tokenizer metadata): llama.cpp tokenizes the text and the chat prompt
    exactly as it does with the original GGUF (whose metadata llama.cpp's converter wrote), and
    its perplexity equals the perplexity of the f16 GGUF made from the GGUF source."""
    out = tmp / "from_hf.gguf"
    run([qlora, "merge", "--model", str(tmp / "hf32"), "--quant", "none", "--adapter", f"{ADAPTER}:0", "--out", str(out),
         "--gguf-type", "f16", "--quiet"])
    orig = llama_cpp.Llama(model_path=str(GGUF), n_ctx=1024, verbose=False, vocab_only=True)
    mine = llama_cpp.Llama(model_path=str(out), n_ctx=1024, logits_all=True, verbose=False, n_threads=2)
    probe = text + "\n<|im_start|>user\n" + PROMPT + "<|im_end|>\n 1 22 333 ünïcödé 中文"
    same_ids = orig.tokenize(probe.encode(), add_bos=True, special=True) == mine.tokenize(probe.encode(), add_bos=True,
                                                                                              special=True)
    ids = mine.tokenize(text.encode(), add_bos=False, special=False) + [mine.token_eos()]
    mine.eval(ids)
    lg = np.array(mine.scores[: len(ids)], dtype=np.float64)
    lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
    ppl = math.exp(float(np.mean([lse[i] - lg[i, ids[i + 1]] for i in range(len(ids) - 1)])))
    meta = GGUFReader(str(out)).fields
    pre = bytes(meta["tokenizer.ggml.pre"].parts[meta["tokenizer.ggml.pre"].data[0]]).decode()
    res = {"gguf_from_hf": True, "tokenizer_ggml_pre": pre, "tokenization_equals_original_gguf": same_ids,
           "llama_cpp_ppl": ppl}
    print(json.dumps(res), flush=True)
    return same_ids


def check_spm_gguf(qlora, tmp, llama_cpp):
    """A GGUF from a Hugging Face directory with a SentencePiece tokenizer
    (tests/fixtures/spm_llama): llama.cpp tokenizes the fixture's texts into sentencepiece's
    own ids (reference.json)."""
    fix = ROOT / "tests" / "fixtures" / "spm_llama"
    out = tmp / "spm.gguf"
    # A merge at adapter weight 0 would need an adapter of this model; write a fresh one.
    run([qlora, "train", "--model", str(fix), "--data", str(DATA / "text" / "tinyshakespeare.txt"), "--out",
         str(tmp / "spm_ad"), "--max-steps", "1", "--seq-len", "32", "--quiet"])
    run([qlora, "merge", "--model", str(fix), "--quant", "none", "--adapter", f"{tmp / 'spm_ad'}:0", "--out", str(out),
         "--gguf-type", "f32", "--quiet"])
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    ref = json.loads((fix / "reference.json").read_text())
    same = [llm.tokenize(t["text"].encode(), add_bos=True, special=False) == t["ids"] for t in ref["texts"]]
    print(json.dumps({"spm_gguf": True, "texts": len(same), "llama_cpp_ids_equal_sentencepiece": sum(same)}),
          flush=True)
    return all(same)


def check_llama2c_gguf(qlora, tmp, llama_cpp):
    """A GGUF from llama2.c's stories260K (its scored vocabulary becomes a "llama" tokenizer):
    llama.cpp's greedy continuation of "Once upon a time" is llama2.c's known text."""
    stories = DATA / "stories260K" / "stories260K.bin"
    known = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
             "she saw a big, red ball. She wanted to play with it, but it was too high.\nLily")
    run([qlora, "train", "--model", str(stories), "--data", str(DATA / "text" / "tinyshakespeare.txt"), "--out",
         str(tmp / "l2c_ad"), "--max-steps", "1", "--seq-len", "32", "--quiet"])
    out = tmp / "stories.gguf"
    run([qlora, "merge", "--model", str(stories), "--quant", "none", "--adapter", f"{tmp / 'l2c_ad'}:0", "--out",
         str(out), "--gguf-type", "f32", "--quiet"])
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, verbose=False, n_threads=2)
    text = "Once upon a time" + llm("Once upon a time", max_tokens=60, temperature=0.0, top_k=1)["choices"][0]["text"]
    print(json.dumps({"llama2c_gguf": True, "llama_cpp_text_equals_llama2c": text == known}), flush=True)
    return text == known


def llama_logits(llama_cpp, model, ids, lora=None):
    kw = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=1024, logits_all=True, verbose=False, n_threads=2, **kw)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64), llm


def check_lora_gguf(qlora, _base, tmp, text, llama_cpp):
    """`qlora export-adapter`: llama.cpp applies the LoRA GGUF to an F32 GGUF of the base
    (the NF4 base dequantized: the adapter weight 0 merge) and gets the logits it gets from
    the F32 merge itself (adapter weight 1)."""
    merge = [qlora, "merge", "--model", str(GGUF), "--quant", "nf4", "--double-quant", "--quiet", "--gguf-type", "f32"]
    run(merge + ["--adapter", f"{ADAPTER}:0", "--out", str(tmp / "base_f32.gguf")])
    run(merge + ["--adapter", str(ADAPTER), "--out", str(tmp / "merged_f32.gguf")])
    run([qlora, "export-adapter", str(ADAPTER), "--model", str(GGUF), "--quant", "nf4", "--double-quant", "--out",
         str(tmp / "lora.gguf"), "--type", "f32", "--quiet"])
    merged, llm = llama_logits(llama_cpp, tmp / "merged_f32.gguf", [])
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)[:128]
    merged, _ = llama_logits(llama_cpp, tmp / "merged_f32.gguf", ids)
    with_lora, _ = llama_logits(llama_cpp, tmp / "base_f32.gguf", ids, lora=tmp / "lora.gguf")
    plain, _ = llama_logits(llama_cpp, tmp / "base_f32.gguf", ids)
    d = float(np.abs(with_lora - merged).max())
    moved = float(np.abs(merged - plain).max())

    def ppl(lg):
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        return math.exp(float(np.mean([lse[i] - lg[i, ids[i + 1]] for i in range(len(ids) - 1)])))
    res = {"lora_gguf": True, "tokens": len(ids), "max_abs_llama_cpp_base_plus_lora_vs_merged": d,
           "adapter_moves_logits_by": moved, "ppl_base_plus_lora": ppl(with_lora), "ppl_merged": ppl(merged),
           "argmax_agreement": float(np.mean(with_lora.argmax(1) == merged.argmax(1)))}
    print(json.dumps(res), flush=True)
    return d < 1e-2 * max(1.0, moved) and moved > 0.05


if __name__ == "__main__":
    main()
