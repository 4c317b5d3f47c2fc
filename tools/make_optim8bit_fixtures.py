#!/usr/bin/env python3
"""Reference fixtures for src/optim/adamw8bit (tests/optim/test_adamw8bit.cpp).

Runs bitsandbytes.optim.AdamW8bit (bitsandbytes 0.50.2, CPU tensors: the update is
bitsandbytes/backends/cpu/ops.py `_optimizer_update_8bit_blockwise_cpu` for tensors of
>= 4096 elements and `_optimizer_update_32bit_cpu` for smaller ones) for a few steps on
awkwardly sized parameters and records everything, bit for bit, in one safetensors file
per run under tests/fixtures/optim/:

  adamw8bit_<run>.safetensors
    qmap1, qmap2                       F32[256]  the signed / unsigned dynamic maps bnb used
    <p>.init                           F32[n]    the parameter before step 1
    <p>.grad.<s>                       BF16[n]   the gradient fed to step s (1-based; drawn as
                                                 float32, rounded to bfloat16 values to keep
                                                 the file small, fed to bnb as float32)
    <p>.param.<s>                      F32[n]    the parameter after step s
    <p>.state1.<s>, <p>.state2.<s>     U8[n]     8-bit moments (codes) after step s
                                       (F32[n] for a parameter below min_8bit_size)
    <p>.absmax1.<s>, <p>.absmax2.<s>   F32[nb]   per-256-block scales after step s (8-bit only)
    __metadata__: lr, beta1, beta2, eps, weight_decay (repr of the Python floats), steps,
                  params (comma-separated names in optimizer order), torch/bnb versions.

Parameters (names say their size):
  p4133  4096+37: 16 full blocks and a 37-element tail; block 2's gradient is always zero
         (an all-zero block: absmax 0), block 5's is scaled by 1e-6 and block 9's by 1e3
         (both ends of the dynamic map's range)
  p4096  exactly min_8bit_size: 8-bit (bnb's rule is numel < min_8bit_size -> float32)
  p300   small (256 + 44): float32 state, bnb's 32-bit update
  p100   small: float32 state

Run with the reference environment: .refenv/bin/python tools/make_optim8bit_fixtures.py
Re-running reproduces every tensor byte for byte; only the order of the metadata keys in
the header may change (safetensors serializes a hash map).
"""
import os
import sys

import torch
import bitsandbytes as bnb
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "optim")

SIZES = [("p4133", 4133), ("p4096", 4096), ("p300", 300), ("p100", 100)]


def grad_for(name, n, gen):
    g = torch.randn(n, generator=gen, dtype=torch.float32)
    if name == "p4133":
        g[2 * 256:3 * 256] = 0.0
        g[5 * 256:6 * 256] *= 1e-6
        g[9 * 256:10 * 256] *= 1e3
    # bfloat16 values (exact in float32): the fixture stores them in half the bytes.
    return g.to(torch.bfloat16).to(torch.float32)


def run(tag, lr, betas, eps, weight_decay, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float32)) for _, n in SIZES]
    out = {}
    for (name, _), p in zip(SIZES, params):
        out[f"{name}.init"] = p.detach().clone()
    opt = bnb.optim.AdamW8bit(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    for s in range(1, steps + 1):
        for (name, n), p in zip(SIZES, params):
            p.grad = grad_for(name, n, gen)
            out[f"{name}.grad.{s}"] = p.grad.to(torch.bfloat16)
        opt.step()
        for (name, n), p in zip(SIZES, params):
            st = opt.state[p]
            out[f"{name}.param.{s}"] = p.detach().clone()
            out[f"{name}.state1.{s}"] = st["state1"].clone()
            out[f"{name}.state2.{s}"] = st["state2"].clone()
            if st["state1"].dtype == torch.uint8:
                assert n >= 4096
                out[f"{name}.absmax1.{s}"] = st["absmax1"].clone()
                out[f"{name}.absmax2.{s}"] = st["absmax2"].clone()
                out["qmap1"] = st["qmap1"].clone()
                out["qmap2"] = st["qmap2"].clone()
            else:
                assert n < 4096 and st["state1"].dtype == torch.float32
    meta = {
        "lr": repr(lr), "beta1": repr(betas[0]), "beta2": repr(betas[1]), "eps": repr(eps),
        "weight_decay": repr(weight_decay), "steps": str(steps),
        "params": ",".join(name for name, _ in SIZES),
        "torch": torch.__version__, "bitsandbytes": bnb.__version__,
    }
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"adamw8bit_{tag}.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata=meta)
    print("wrote", path, file=sys.stderr)


def main():
    torch.set_num_threads(1)
    # The paper's / transformers' usual settings, with weight decay on.
    run("wd", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, steps=4, seed=1234)
    # No weight decay, a large LR and unusual betas (bias corrections far from 1).
    run("nowd", lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0, steps=3, seed=99)


if __name__ == "__main__":
    main()
