#!/usr/bin/env python3
"""Writes tests/fixtures/int8/* by running bitsandbytes 0.50.2 (LLM.int8) itself on CPU.

    .refenv/bin/python tools/make_int8_fixtures.py

What bitsandbytes 0.50.2 does on CPU for an 8-bit Linear (bnb.nn.Linear8bitLt, has_fp16_weights
False) -- the behaviour src/quant/int8.cpp reproduces:
  * Weight (Int8Params._quantize): W.to(float16), then int8_vectorwise_quant (pure torch,
    backends/default/ops.py): SCB = max|W16| per output row (float32), CB = round(W16 * (127.0 /
    SCB)) in float32, where torch evaluates 127.0 / SCB as SCB.reciprocal() * 127
    (Tensor.__rtruediv__); torch.round = half to even.
  * Inference (module.eval(): MatMul8bitLt): the activation is cast to float16 and quantized
    the same way per token, after zeroing every element with |x16| >= threshold (6.0); columns
    holding any such element are "outlier columns" and are zeroed in CA for all tokens.
    int32 = CA . CB^T (torch._int_mm), out = int32 * (SCA * SCB) * 6.200124e-05 (+ bias), then
    out += X[:, outlier_cols] @ (CB[:, outlier_cols] * SCB * (1/127))^T in the input's dtype.
  * Training (module.train() on CPU: MatMul8bitFp) uses W = CB * (SCB * (1/127)) in a plain
    linear; the backward of both uses that same dequantized W.

Fixtures (small):
  int8_cases.safetensors   per case m<i>: weight (out,in) f32, CB int8, SCB f32, and per input
                           m<i>.x<j>: x (T,in), CA, SCA, out (eval, threshold 6), out_nothr
                           (threshold 0), out_train (train-mode forward); bias where present.
                           metadata "cases": JSON list.
  tiny-llama/              a random tiny LlamaForCausalLM in float32 (HF directory)
  tiny-llama-int8/         the same loaded by transformers with load_in_8bit=True on CPU and
                           saved with save_pretrained (the layout transformers writes)
  tiny_logits.safetensors  tokens and logits of both models (the 8-bit one in eval mode)
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file

import bitsandbytes as bnb
import bitsandbytes.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "int8")


def make_weight(out, inn, seed, special):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=g) * 0.05
    if special:
        w[1, :] = 0.0                # an all-zero row (SCB 0)
        w[2, 3] = 1.7                # a large weight dominating its row
        w[0, 0] = 0.05 * 127 / 127  # exact values
        w[3, :] = torch.linspace(-1, 1, inn)  # values on .5 rounding boundaries of the codes
    return w


def make_x(T, inn, seed, outliers):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, inn, generator=g)
    if outliers:
        x[0, 1] = 7.5                      # an outlier in column 1 (one token only)
        x[T - 1, inn - 1] = -12.0          # last column
        if inn > 5:
            x[T // 2, 5] = 6.0             # exactly the threshold counts
        if inn > 4:
            x[0, 4] = 5.9999               # rounds to 6.0 in float16: an outlier too
        if T > 2:
            x[1, :] = 0.0                  # all-zero token
            x[1, 1] = 9.0                  # ... except an outlier: absmax of the rest is 0
    return x


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    tensors, cases = {}, []
    shapes = [(5, 7, False), (17, 33, True), (64, 96, True), (33, 130, True), (8, 257, False)]
    for i, (out, inn, special) in enumerate(shapes):
        w = make_weight(out, inn, 100 + i, special)
        bias = torch.randn(out, generator=torch.Generator().manual_seed(7 + i)) if i % 2 == 1 else None
        lin = bnb.nn.Linear8bitLt(inn, out, bias=bias is not None, has_fp16_weights=False, threshold=6.0)
        lin.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
        if bias is not None:
            lin.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
        lin = lin.to("cpu")  # quantizes (Int8Params._quantize)
        CB, SCB = lin.weight.CB.clone(), lin.weight.SCB.clone()
        p = f"m{i}"
        tensors[p + ".weight"] = w
        tensors[p + ".CB"] = CB
        tensors[p + ".SCB"] = SCB
        if bias is not None:
            tensors[p + ".bias"] = bias
        lin0 = bnb.nn.Linear8bitLt(inn, out, bias=bias is not None, has_fp16_weights=False, threshold=0.0)
        lin0.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
        if bias is not None:
            lin0.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
        lin0 = lin0.to("cpu")
        xs = []
        for j, (T, outl) in enumerate([(1, False), (1, True), (3, True), (9, True), (20, False)]):
            x = make_x(T, inn, 1000 * i + j, outl)
            q = f"{p}.x{j}"
            CA, SCA, cols = F.int8_vectorwise_quant(x.to(torch.float16), threshold=6.0)
            lin.eval()
            with torch.no_grad():
                y = lin(x.clone())
                y0 = lin0.eval()(x.clone())
            lin.train()
            with torch.no_grad():
                yt = lin(x.clone())
            lin.eval()
            tensors[q + ".x"] = x
            tensors[q + ".CA"] = CA
            tensors[q + ".SCA"] = SCA
            tensors[q + ".out"] = y.float()
            tensors[q + ".out_nothr"] = y0.float()
            tensors[q + ".out_train"] = yt.float()
            xs.append({"T": T, "outlier_cols": [] if cols is None else cols.tolist()})
        cases.append({"name": p, "out": out, "in": inn, "bias": bias is not None, "inputs": xs})
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "int8_cases.safetensors"),
              metadata={"cases": json.dumps(cases), "bitsandbytes": bnb.__version__, "torch": torch.__version__})

    # A tiny Llama, saved in float32 and as transformers' 8-bit checkpoint.
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, torch_dtype="float32")
    torch.manual_seed(1)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, prm in m.named_parameters():
            if "proj" in n:
                prm.mul_(4.0)
        # A few large norm gains make outlier features (|x| >= 6) as real LLMs have them, so
        # the checkpoint test exercises the mixed-precision decomposition.
        for layer in m.model.layers:
            layer.input_layernorm.weight[3] = 10.0
            layer.post_attention_layernorm.weight[17] = -9.0
    fp_dir, q_dir = os.path.join(OUT, "tiny-llama"), os.path.join(OUT, "tiny-llama-int8")
    for d in (fp_dir, q_dir):
        shutil.rmtree(d, ignore_errors=True)
    m.save_pretrained(fp_dir, safe_serialization=True)
    m8 = LlamaForCausalLM.from_pretrained(fp_dir, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                          device_map="cpu", torch_dtype=torch.float32).eval()
    print("8-bit q_proj:", type(m8.model.layers[0].self_attn.q_proj))
    m8.save_pretrained(q_dir, safe_serialization=True)
    tokens = torch.tensor([[1, 5, 17, 33, 2, 90, 44, 7, 63, 12, 0, 95]])
    with torch.no_grad():
        logits = m(tokens).logits[0].float()
        logits8 = m8(tokens).logits[0].float()
    save_file({"tokens": tokens[0].to(torch.int32), "logits_fp32": logits.contiguous(),
               "logits_int8": logits8.contiguous()}, os.path.join(OUT, "tiny_logits.safetensors"))
    from safetensors import safe_open
    with safe_open(os.path.join(q_dir, "model.safetensors"), "pt") as f:
        for k in sorted(f.keys())[:12]:
            t = f.get_tensor(k)
            print(k, t.dtype, tuple(t.shape))
    print("max |logits8 - logits| =", (logits8 - logits).abs().max().item())
    # How many outlier columns each Linear of the 8-bit model saw.
    seen = {}

    def hook(name):
        def h(mod, inp):
            x = inp[0].reshape(-1, inp[0].shape[-1])
            seen[name] = int((x.half().abs() >= 6.0).any(0).sum())
        return h

    for n, mod in m8.named_modules():
        if n.endswith("proj"):
            mod.register_forward_pre_hook(hook(n))
    with torch.no_grad():
        m8(tokens)
    print("outlier columns per Linear:", seen)


if __name__ == "__main__":
    main()
