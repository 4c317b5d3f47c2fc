#!/usr/bin/env python3
"""Reference fixtures proving qlora.cpp's SmolLM2-135M-Instruct matches Hugging Face
transformers (tests/model/test_smollm2_parity.cpp).

    scripts/fetch_model.sh                        # models/SmolLM2-135M-Instruct.Q4_1.gguf
    .refenv/bin/python tools/make_logits_fixtures.py

The model is loaded by transformers' own GGUF loader
(AutoModelForCausalLM.from_pretrained(models/, gguf_file=...)), which dequantizes every
Q4_1 tensor to float32 with gguf-py and un-permutes q/k rows into the Hugging Face rotary
layout; the tokenizer comes from the same file (AutoTokenizer, gguf_file=...). Eval mode,
float32, CPU, eager attention.

For each prompt below it records, in tests/fixtures/logits/smollm2_logits.json:
  text, add_special_tokens    what was tokenized (the chat prompt is rendered by
                              apply_chat_template(add_generation_prompt=True) and tokenized
                              without special tokens, exactly as apply_chat_template does)
  ids                         the ids fed to the model (whatever BOS the tokenizer adds
                              included; SmolLM2's GGUF tokenizer adds none)
  argmax, logsumexp, max_logit  of the next-token logits at the last position
  full_logits                 a <name>.f32 file (little-endian float32, vocab values) for
                              two prompts; top100 {ids, values} for every prompt
  fp64_max_abs_diff           max |float32 logits - float64 logits| of transformers itself
                              (the same weights run in float64): the size of float32
                              rounding on this prompt, which bounds what a correct float32
                              implementation may differ by
  sdpa_max_abs_diff           max |eager - sdpa| of transformers' own two attention paths
  greedy                      40 new ids of model.generate(do_sample=False, num_beams=1,
                              repetition_penalty=1.0, no eos stopping, min_new_tokens 0)
  greedy_margins              top-1 minus top-2 logit at each greedy step (a small margin
                              is where a correct float32 implementation may legitimately
                              diverge)

and, for three Linear weights (HF layout, float32 as transformers dequantized them),
bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
compress_statistics=False / True) on CPU: sha256 of the float32 input bytes, of the packed
codes, of the absmax bytes (float32, or uint8 when nested), of the nested absmax (float32)
and the nested offset.

stories260K (shared/data/stories260K/stories260K.bin) has no transformers model, so it gets no
logits here; but the same NF4 byte identity is recorded for three of its Linear weights
(tests/model/test_stories_nf4_bytes.cpp): the llama2.c weights read with numpy, wq / wk rows
permuted per head to the Hugging Face rotate-halves layout exactly as llama2.c's export.py
does (permute_original), then quantize_4bit as above, stored whole (a few KB of codes and
constants plus the float32 inputs) in tests/fixtures/logits/stories260k_nf4.safetensors so a
mismatch can be located. That one needs no download and always runs (a few seconds).

    .refenv/bin/python tools/make_logits_fixtures.py [--skip-smollm2] [--skip-stories]

The SmolLM2 part takes about 10 CPU-minutes (three model copies: eager, sdpa, float64, and a
cache-free greedy re-run that cross-checks generate()); its output is deterministic.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
STORIES = ROOT.parent / "shared" / "data" / "stories260K" / "stories260K.bin"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "logits"

NEW_TOKENS = 40
TOPK = 100
FULL_LOGITS = {"plain", "chat"}  # prompts whose whole logit vector is stored

PROMPTS = [
    ("plain", "The history of the Roman Empire began when"),
    ("chat", [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n"),
    ("long",
     "Photosynthesis is the process by which green plants, algae and some bacteria convert light "
     "energy into chemical energy. During this process, carbon dioxide and water are combined, using "
     "the energy of sunlight captured by chlorophyll, to produce glucose and oxygen. The light-dependent "
     "reactions take place in the thylakoid membranes, while the Calvin cycle runs in the stroma of the "
     "chloroplast. Without photosynthesis, life on Earth as we know it would be impossible. In short,"),
    ("non_ascii", "Les élèves ont mangé des crêpes à Paris. 東京は日本の首都です。Привет, как дела? 🙂 Ça va"),
]

STORIES_NF4_TENSORS = [
    "model.layers.0.self_attn.q_proj.weight",  # rows permuted (8 heads)
    "model.layers.2.mlp.down_proj.weight",
    "model.layers.4.self_attn.k_proj.weight",  # rows permuted (4 kv heads)
]

NF4_TENSORS = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.10.mlp.down_proj.weight",
    "model.layers.29.self_attn.v_proj.weight",
]


def sha256(t: torch.Tensor | np.ndarray) -> str:
    a = t.detach().cpu().contiguous().numpy() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
    assert a.dtype.byteorder in ("<", "=", "|")
    return hashlib.sha256(a.tobytes()).hexdigest()


def load(attn: str):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32,
                                             attn_implementation=attn)
    return m.eval()


@torch.no_grad()
def last_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1]


@torch.no_grad()
def greedy(model, ids: list[int]) -> tuple[list[int], list[float]]:
    from transformers import GenerationConfig
    # Every knob that could make generate() differ from plain argmax is set explicitly:
    # no eos stopping (eos_token_id=None would fall back to the model's; an id outside the
    # vocabulary never matches), no forced length, no penalties, no sampling.
    cfg = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=0,
                           repetition_penalty=1.0, no_repeat_ngram_size=0, eos_token_id=[1 << 30],
                           pad_token_id=2, bos_token_id=1, temperature=None, top_k=None, top_p=None,
                           output_scores=True, output_logits=True, return_dict_in_generate=True)
    x = torch.tensor([ids], dtype=torch.long)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=cfg)
    new = out.sequences[0, len(ids):].tolist()
    assert len(new) == NEW_TOKENS, len(new)
    margins = []
    for step, logits in enumerate(out.logits):
        top2 = torch.topk(logits[0].float(), 2)
        assert int(top2.indices[0]) == new[step], "generate() was not pure greedy"
        margins.append(float(top2.values[0] - top2.values[1]))
    # Cross-check: the same continuation by full (cache-free) forward passes.
    seq = list(ids)
    for _ in range(NEW_TOKENS):
        seq.append(int(last_logits(model, seq).argmax()))
    if seq[len(ids):] != new:
        print("  note: cache-free greedy differs from generate():", seq[len(ids):], new)
    return new, margins


def nf4_record(name: str, weight: torch.Tensor) -> dict:
    """bitsandbytes' NF4 quantization of `weight` (blocksize 64), plain and nested, as hashes."""
    import bitsandbytes.functional as F
    w = weight.detach().float().contiguous()
    e = {"tensor": name, "shape": list(w.shape), "float32_sha256": sha256(w), "blocksize": 64, "quant_type": "nf4"}
    for dq in (False, True):
        packed, qs = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
        d = {"packed_sha256": sha256(packed), "packed_bytes": int(packed.numel()),
             "absmax_sha256": sha256(qs.absmax), "absmax_dtype": str(qs.absmax.dtype).replace("torch.", "")}
        if dq:
            d["nested_absmax_sha256"] = sha256(qs.state2.absmax)
            d["nested_blocksize"] = int(qs.state2.blocksize)
            d["offset"] = float(qs.offset)
        e["double_quant" if dq else "plain"] = d
    return e


def stories_weights(path: Path) -> dict[str, torch.Tensor]:
    """The Linear weights of a legacy llama2.c checkpoint under Hugging Face names, wq / wk
    permuted as llama2.c export.py's permute_original does."""
    raw = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, _seq_len = np.frombuffer(raw[:28], dtype="<i4").tolist()
    vocab = abs(vocab)
    f = np.frombuffer(raw, dtype="<f4", offset=28)
    kv_dim = n_kv * (dim // n_heads)
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        t = torch.from_numpy(f[off:off + n].reshape(shape).copy())
        off += n
        return t

    def permute(w, heads):
        d1, d2 = w.shape
        return w.view(heads, d1 // heads // 2, 2, d2).transpose(1, 2).reshape(d1, d2).contiguous()

    take(vocab, dim)             # token embedding
    take(n_layers, dim)          # attention norms
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    take(n_layers, dim)          # ffn norms
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    out = {}
    for l in range(n_layers):
        p = f"model.layers.{l}."
        out[p + "self_attn.q_proj.weight"] = permute(wq[l], n_heads)
        out[p + "self_attn.k_proj.weight"] = permute(wk[l], n_kv)
        out[p + "self_attn.v_proj.weight"] = wv[l]
        out[p + "self_attn.o_proj.weight"] = wo[l]
        out[p + "mlp.gate_proj.weight"] = w1[l]
        out[p + "mlp.down_proj.weight"] = w2[l]
        out[p + "mlp.up_proj.weight"] = w3[l]
    return out


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file with a deterministic header (safetensors' own writer orders the
    metadata by hash, so every run would give different bytes): tensors in insertion order,
    keys as given, header padded with spaces to a multiple of 8."""
    dtypes = {torch.float32: "F32", torch.uint8: "U8"}
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def make_stories() -> None:
    """stories260k_nf4.safetensors: per tensor <name>.input (float32, HF layout), <name>.packed,
    <name>.absmax (float32), <name>.dq_absmax (uint8), <name>.dq_nested_absmax (float32); the
    nested offsets in the metadata "offsets" (JSON). The packed codes do not depend on double
    quantization (asserted here), so they are stored once."""
    import bitsandbytes
    import bitsandbytes.functional as F
    if not STORIES.exists():
        raise SystemExit(f"{STORIES} missing")
    ws = stories_weights(STORIES)
    tensors, offsets = {}, {}
    for name in STORIES_NF4_TENSORS:
        w = ws[name].float().contiguous()
        packed, qs = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
        packed_dq, qs_dq = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.equal(packed, packed_dq)
        assert qs_dq.state2.blocksize == 256 and qs_dq.absmax.dtype == torch.uint8
        tensors[name + ".input"] = w
        tensors[name + ".packed"] = packed.flatten().contiguous()
        tensors[name + ".absmax"] = qs.absmax.contiguous()
        tensors[name + ".dq_absmax"] = qs_dq.absmax.contiguous()
        tensors[name + ".dq_nested_absmax"] = qs_dq.state2.absmax.contiguous()
        offsets[name] = float(qs_dq.offset)
    meta = {
        "source": (f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}: "
                   "bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type='nf4', "
                   "compress_statistics=False/True) on CPU of stories260K.bin weights in Hugging Face "
                   "layout (wq/wk permuted as llama2.c export.py)"),
        "generator": "tools/make_logits_fixtures.py",
        "model_bytes": str(STORIES.stat().st_size),
        "tensors": json.dumps(STORIES_NF4_TENSORS),
        "offsets": json.dumps(offsets),
    }
    write_safetensors(OUT / "stories260k_nf4.safetensors", tensors, meta)
    print(f"wrote {OUT / 'stories260k_nf4.safetensors'}")


def make_smollm2() -> None:
    import bitsandbytes
    import transformers
    from transformers import AutoTokenizer

    gguf_path = MODELS / GGUF
    if not gguf_path.exists():
        raise SystemExit(f"{gguf_path} missing: run scripts/fetch_model.sh")
    torch.manual_seed(0)

    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    model = load("eager")
    model_sdpa = load("sdpa")
    model64 = load("eager").double()

    prompts = []
    for name, spec in PROMPTS:
        if isinstance(spec, list):
            text = tok.apply_chat_template(spec, add_generation_prompt=True, tokenize=False)
            add_special = False
            ids = tok(text, add_special_tokens=False)["input_ids"]
            via_template = tok.apply_chat_template(spec, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
            if isinstance(via_template, dict) or hasattr(via_template, "keys"):
                via_template = via_template["input_ids"]
            assert list(via_template) == ids, (via_template, ids)
        else:
            text, add_special = spec, True
            ids = tok(text)["input_ids"]
        ids = [int(i) for i in ids]

        logits = last_logits(model, ids)
        l_sdpa = last_logits(model_sdpa, ids)
        l64 = last_logits(model64, ids)
        top = torch.topk(logits, TOPK)
        entry = {
            "name": name,
            "text": text,
            "add_special_tokens": add_special,
            "ids": ids,
            "argmax": int(logits.argmax()),
            "logsumexp": float(torch.logsumexp(logits.double(), 0)),
            "max_logit": float(logits.max()),
            "fp64_max_abs_diff": float((logits.double() - l64).abs().max()),
            "sdpa_max_abs_diff": float((logits - l_sdpa).abs().max()),
            "top100": {"ids": top.indices.tolist(), "values": top.values.tolist()},
        }
        if isinstance(spec, list):
            entry["messages"] = spec
        if name in FULL_LOGITS:
            fname = f"smollm2_{name}.f32"
            logits.numpy().astype("<f4").tofile(OUT / fname)
            entry["full_logits"] = fname
        entry["greedy"], entry["greedy_margins"] = greedy(model, ids)
        print(f"{name}: {len(ids)} ids, argmax {entry['argmax']}, |fp32-fp64| {entry['fp64_max_abs_diff']:.2e}, "
              f"|eager-sdpa| {entry['sdpa_max_abs_diff']:.2e}, min greedy margin {min(entry['greedy_margins']):.3f}")
        print("   ", repr(tok.decode(entry["greedy"])))
        prompts.append(entry)

    sd = model.state_dict()
    nf4 = [nf4_record(name, sd[name]) for name in NF4_TENSORS]

    doc = {
        "source": (f"transformers {transformers.__version__}, torch {torch.__version__}, bitsandbytes "
                   f"{bitsandbytes.__version__}: AutoModelForCausalLM.from_pretrained(models/, gguf_file={GGUF}, "
                   "dtype=float32, attn_implementation=eager), eval, CPU"),
        "generator": "tools/make_logits_fixtures.py",
        "model_file": GGUF,
        "model_bytes": gguf_path.stat().st_size,
        "vocab": int(model.config.vocab_size),
        "new_tokens": NEW_TOKENS,
        "prompts": prompts,
        "nf4": nf4,
    }
    (OUT / "smollm2_logits.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT / 'smollm2_logits.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm2", action="store_true", help="only the stories260K NF4 hashes")
    ap.add_argument("--skip-stories", action="store_true", help="only the SmolLM2 fixtures")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.skip_stories:
        make_stories()
    if not args.skip_smollm2:
        make_smollm2()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{OUT}: {total / 1024:.0f} KB")


if __name__ == "__main__":
    main()
