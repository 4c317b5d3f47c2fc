#!/usr/bin/env python3
"""FP8 block-scaled checkpoints (transformers' FineGrainedFP8: DeepSeek-V3 / R1, Qwen3-*-FP8,
GLM-4.5-FP8, ...), made from the deepseek_v3 family fixture: every block Linear weight (attention
projections, dense MLP, experts, shared experts; not the router, embeddings or head) stored as
float8_e4m3fn with a float32 `<name>.weight_scale_inv` per block (weight = fp8 * scale_inv,
scale_inv = the block's absmax / 448), config.json with quantization_config
{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": B}.

    .refenv/bin/python tools/make_fp8_fixture.py

Writes tests/fixtures/fp8/:
  deepseek_v3_b8/    blocks of 8 x 8 (every weight a whole number of blocks): the logits
                     transformers computes loading that directory itself (it dequantizes FP8 on a
                     CPU), in logits.safetensors;
  deepseek_v3_b16/   blocks of 16 x 16 (weights of 24 or 112 rows end in partial blocks, which
                     transformers' CPU dequantization refuses): dequantized.safetensors holds
                     torch's dequantization of two such weights (the fp8 values times their
                     blocks' scales, in float32).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "tests" / "fixtures" / "families" / "deepseek_v3"
OUT = ROOT / "tests" / "fixtures" / "fp8"
FP8_MAX = 448.0


def is_block_linear(name: str) -> bool:
    return name.endswith("_proj.weight") or name.endswith("kv_a_proj_with_mqa.weight")


def quantize(w: torch.Tensor, block: int):
    """w (rows, cols) float32 -> (fp8 codes, scale_inv (ceil(rows/b), ceil(cols/b)) float32)."""
    rows, cols = w.shape
    sr, sc = -(-rows // block), -(-cols // block)
    scale = torch.empty(sr, sc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
            s = float(blk.abs().max()) / FP8_MAX
            s = s if s > 0 else 1.0
            scale[i, j] = s
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    w = q.to(torch.float32)
    s = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[: w.shape[0], : w.shape[1]]
    return w * s


def build(block: int) -> Path:
    out = OUT / f"deepseek_v3_b{block}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sd = load_file(str(SRC / "model.safetensors"))
    new = {}
    for name, t in sd.items():
        if is_block_linear(name):
            q, s = quantize(t.to(torch.float32), block)
            new[name] = q
            new[name + "_scale_inv"] = s
        else:
            new[name] = t
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((SRC / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [block, block]}
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def main():
    from transformers import AutoModelForCausalLM
    ref = json.loads((SRC / "reference.json").read_text())
    prompt = torch.tensor([ref["prompt"]])

    d8 = build(8)
    m = AutoModelForCausalLM.from_pretrained(d8, dtype=torch.float32).eval()
    lin = m.model.layers[1].self_attn.q_a_proj
    if lin.weight.dtype != torch.float32:
        sys.exit(f"transformers kept the FP8 weights ({lin.weight.dtype}); expected its CPU dequantization")
    # transformers' dequantization is what ours must match: check it is the block formula.
    sd = load_file(str(d8 / "model.safetensors"))
    n = "model.layers.1.self_attn.q_a_proj.weight"
    want = dequantize(sd[n], sd[n + "_scale_inv"], 8)
    if not torch.equal(lin.weight.detach(), want):
        sys.exit("transformers' dequantized weight differs from fp8 x scale_inv per block")
    with torch.no_grad():
        logits = m(prompt).logits[0].contiguous()
    save_file({"logits": logits}, str(d8 / "logits.safetensors"))
    base = load_file(str(SRC / "logits.safetensors"))["logits"]
    print(f"b8: transformers on the FP8 checkpoint, max|logit| {logits.abs().max():.3f}, "
          f"shift from the float32 model {(logits - base).abs().max():.4f}")

    d16 = build(16)
    sd = load_file(str(d16 / "model.safetensors"))
    deq = {}
    for n in ("model.layers.0.self_attn.q_a_proj.weight", "model.layers.2.self_attn.kv_b_proj.weight"):
        deq[n] = dequantize(sd[n], sd[n + "_scale_inv"], 16).contiguous()
        print(f"b16: {n} {tuple(sd[n].shape)}, scales {tuple(sd[n + '_scale_inv'].shape)}")
    save_file(deq, str(d16 / "dequantized.safetensors"))


if __name__ == "__main__":
    main()
