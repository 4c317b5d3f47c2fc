#!/usr/bin/env python3
"""Reference logits for the model tests (tests/model/test_reference_logits.cpp), computed by
transformers' LlamaForCausalLM — an implementation nobody here wrote.

Run with the project's reference environment (tools/setup_refenv.sh, plus transformers and
gguf):

    .refenv/bin/python tools/make_model_reference.py [--skip-smollm2]

Writes into tests/fixtures/model/:

  stories260k_reference.json
      stories260K (shared/data/stories260K/stories260K.bin) converted to a transformers
      LlamaForCausalLM in float32 here, with llama2.c export.py's own q/k row permutation
      (adjacent-pair rotary -> rotate-halves), run on a fixed token sequence: the full logits
      at a few positions; and the same with every Linear inside the blocks replaced by its
      bitsandbytes NF4 round trip (bitsandbytes.functional.quantize_4bit / dequantize_4bit,
      blocksize 64, and blocksize 64 + double quantization), i.e. what a QLoRA model
      computes in float32.
  smollm2_reference_logits.json
      models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_model.sh) loaded by transformers'
      GGUF loader (float32), run on the token ids of a prompt: per position the top-10 ids
      and logits, the log-sum-exp, and the greedy continuation of 16 tokens.
"""
from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "model"
DATA = ROOT.parent / "shared" / "data"
SMOL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# The 65-token greedy sequence of stories260K for "Once upon a time" (BOS included) is not
# needed: any fixed sequence exercises the forward pass. These ids are a real story prefix.
STORIES_IDS = [1, 403, 407, 261, 378, 430, 268, 393, 261, 442, 273, 343, 395, 318, 268, 270, 312, 288, 404,
               270, 302, 286, 400, 268, 316, 272, 314, 301, 404, 361, 327, 400]
STORIES_POSITIONS = [0, 1, 4, 15, 31]


def load_llama2c(path: Path):
    raw = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    f = np.frombuffer(raw, dtype=np.float32, offset=28)
    head = dim // n_heads
    kv_dim = n_kv * head
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        t = f[off:off + n].reshape(shape).copy()
        off += n
        return t

    w = {"emb": take(vocab, dim), "rms_att": take(n_layers, dim), "wq": take(n_layers, dim, dim),
         "wk": take(n_layers, kv_dim, dim), "wv": take(n_layers, kv_dim, dim), "wo": take(n_layers, dim, dim),
         "rms_ffn": take(n_layers, dim), "w1": take(n_layers, hidden, dim), "w2": take(n_layers, dim, hidden),
         "w3": take(n_layers, hidden, dim), "rms_final": take(dim)}
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, vocab=vocab,
               seq_len=seq_len, shared=shared)
    return cfg, w


def permute(w, n_heads, dim1, dim2):
    # llama2.c export.py (hf export): adjacent pairs -> rotate halves.
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def stories_model(cfg, w):
    from transformers import LlamaConfig, LlamaForCausalLM
    c = LlamaConfig(hidden_size=cfg["dim"], intermediate_size=cfg["hidden"], num_hidden_layers=cfg["n_layers"],
                    num_attention_heads=cfg["n_heads"], num_key_value_heads=cfg["n_kv"], vocab_size=cfg["vocab"],
                    max_position_embeddings=cfg["seq_len"], rms_norm_eps=1e-5, rope_theta=10000.0,
                    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    m = LlamaForCausalLM(c).eval().float()
    sd = {"model.embed_tokens.weight": w["emb"], "model.norm.weight": w["rms_final"], "lm_head.weight": w["emb"]}
    D, KV = cfg["dim"], cfg["n_kv"] * (cfg["dim"] // cfg["n_heads"])
    for l in range(cfg["n_layers"]):
        p = f"model.layers.{l}."
        sd[p + "input_layernorm.weight"] = w["rms_att"][l]
        sd[p + "post_attention_layernorm.weight"] = w["rms_ffn"][l]
        sd[p + "self_attn.q_proj.weight"] = permute(torch.from_numpy(w["wq"][l]), cfg["n_heads"], D, D).numpy()
        sd[p + "self_attn.k_proj.weight"] = permute(torch.from_numpy(w["wk"][l]), cfg["n_kv"], KV, D).numpy()
        sd[p + "self_attn.v_proj.weight"] = w["wv"][l]
        sd[p + "self_attn.o_proj.weight"] = w["wo"][l]
        sd[p + "mlp.gate_proj.weight"] = w["w1"][l]
        sd[p + "mlp.down_proj.weight"] = w["w2"][l]
        sd[p + "mlp.up_proj.weight"] = w["w3"][l]
    missing, unexpected = m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                                            strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return m


def nf4_roundtrip(model, blocksize, double_quant):
    import bitsandbytes.functional as F
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            q, state = F.quantize_4bit(mod.weight.data, blocksize=blocksize, compress_statistics=double_quant,
                                       quant_type="nf4")
            mod.weight.data = F.dequantize_4bit(q, state).float()


def logits_at(model, ids, positions):
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0]
    return {str(p): [float(x) for x in out[p].tolist()] for p in positions}


def make_stories():
    import transformers
    import bitsandbytes
    cfg, w = load_llama2c(DATA / "stories260K" / "stories260K.bin")
    model = stories_model(cfg, w)
    ref = {"source": f"transformers {transformers.__version__} LlamaForCausalLM float32 from stories260K.bin "
                     f"(llama2.c export permutation); nf4: bitsandbytes {bitsandbytes.__version__} "
                     "quantize_4bit/dequantize_4bit round trip of every Linear in the blocks",
           "ids": STORIES_IDS, "fp32": logits_at(model, STORIES_IDS, STORIES_POSITIONS)}
    for key, dq in (("nf4", False), ("nf4_dq", True)):
        m = stories_model(cfg, w)
        nf4_roundtrip(m, 64, dq)
        ref[key] = logits_at(m, STORIES_IDS, STORIES_POSITIONS)
    (OUT / "stories260k_reference.json").write_text(json.dumps(ref))


def make_smollm2():
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(SMOL.parent), gguf_file=SMOL.name)
    model = AutoModelForCausalLM.from_pretrained(str(SMOL.parent), gguf_file=SMOL.name, dtype=torch.float32).eval()
    prompt = "The capital of France is"
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        gen = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0].tolist()
    positions = []
    for p in range(len(ids)):
        top = torch.topk(logits[p], 10)
        positions.append({"top_ids": top.indices.tolist(), "top_logits": [float(x) for x in top.values],
                          "logsumexp": float(torch.logsumexp(logits[p].double(), 0))})
    ref = {"source": f"transformers {transformers.__version__} AutoModelForCausalLM(gguf_file={SMOL.name}) float32",
           "prompt": prompt, "ids": ids, "positions": positions, "greedy": gen[len(ids):]}
    (OUT / "smollm2_reference_logits.json").write_text(json.dumps(ref, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    make_stories()
    if not args.skip_smollm2:
        make_smollm2()


if __name__ == "__main__":
    main()
