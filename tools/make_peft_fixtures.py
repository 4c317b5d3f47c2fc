#!/usr/bin/env python3
"""Reference fixtures for src/lora and src/optim (tests/lora/test_lora.cpp,
tests/optim/test_adamw.cpp).

Produces, under tests/fixtures/peft/:
  base/                 a tiny random LlamaForCausalLM (hidden 16, 2 layers, vocab 32)
  adapter_qv/           PEFT adapter, r=4, alpha=8, target q_proj,v_proj, lora_B random
  adapter_all_rslora/   PEFT adapter, r=4, alpha=8, all-linear, use_rslora, lora_B random
  adamw_reference.json  10 steps of torch.optim.AdamW, LR schedules from transformers,
                        torch.nn.utils.clip_grad_norm_ results

Run with the reference environment: .refenv/bin/python tools/make_peft_fixtures.py
(torch 2.x CPU, transformers 5.x, peft 0.21.2, safetensors).

The other direction (PEFT reads what we write):
  QLORA_PEFT_EXPORT_DIR=/tmp/ours build/test_lora --gtest_filter=PeftAdapter.RoundTripIsBitExact
  .refenv/bin/python tools/make_peft_fixtures.py --check /tmp/ours
"""
import json
import math
import os
import shutil
import struct
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import (LlamaConfig, LlamaForCausalLM, get_constant_schedule_with_warmup,
                          get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "peft")


def f32_bits(x):
    """The exact float32 value as its uint32 bit pattern (JSON keeps it exact)."""
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


def tensor_bits(t):
    return [f32_bits(v) for v in t.detach().to(torch.float32).flatten().tolist()]


def make_base():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    base_dir = os.path.join(OUT, "base")
    shutil.rmtree(base_dir, ignore_errors=True)
    model.save_pretrained(base_dir)
    # generation_config.json is noise for our purposes
    gc = os.path.join(base_dir, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    return base_dir


def make_adapter(base_dir, name, seed, **lora_kwargs):
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                        **lora_kwargs)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    peft_model.save_pretrained(out)
    # What the adapter adds to one module's output (eval: dropout is the identity), for
    # checking our forward's orientation and scaling against PEFT's.
    peft_model.eval()
    mod_path = "model.layers.1.self_attn.v_proj"
    layer = peft_model.base_model.model.get_submodule(mod_path)
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(seed + 100))
    with torch.no_grad():
        delta = layer(x) - layer.base_layer(x)
    with open(os.path.join(OUT, name + "_forward.json"), "w") as f:
        json.dump({"module": mod_path, "x": tensor_bits(x), "shape_x": list(x.shape),
                   "delta": tensor_bits(delta), "shape_delta": list(delta.shape)}, f)
        f.write("\n")
    # The base path is machine-specific; keep the fixture stable.
    cfg_path = os.path.join(out, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = "base"
    if isinstance(cfg.get("target_modules"), list):  # a set inside PEFT: order is arbitrary
        cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = os.path.join(out, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def make_optim_reference():
    ref = {}
    # --- AdamW: 10 steps, fixed gradients per step, several parameter tensors -----------
    g = torch.Generator().manual_seed(1234)
    shapes = [[4, 8], [16], [3, 5]]
    params0 = [torch.randn(s, generator=g, dtype=torch.float32) for s in shapes]
    steps = 10
    grads = [[torch.randn(s, generator=g, dtype=torch.float32) for s in shapes] for _ in range(steps)]
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    params = [p.clone().requires_grad_(True) for p in params0]
    opt = torch.optim.AdamW(params, foreach=False, fused=False, **hp)
    after = []
    for s in range(steps):
        for p, gr in zip(params, grads[s]):
            p.grad = gr.clone()
        opt.step()
        after.append([tensor_bits(p) for p in params])
    st = opt.state_dict()["state"]
    ref["adamw"] = {
        "lr": hp["lr"], "beta1": hp["betas"][0], "beta2": hp["betas"][1], "eps": hp["eps"],
        "weight_decay": hp["weight_decay"],
        "shapes": shapes,
        "params0": [tensor_bits(p) for p in params0],
        "grads": [[tensor_bits(x) for x in gs] for gs in grads],
        "params_after_step": after,
        "exp_avg": [tensor_bits(st[i]["exp_avg"]) for i in range(len(shapes))],
        "exp_avg_sq": [tensor_bits(st[i]["exp_avg_sq"]) for i in range(len(shapes))],
        "step": int(st[0]["step"]),
    }

    # --- LR schedules --------------------------------------------------------------------
    def lrs(make, total):
        p = torch.nn.Parameter(torch.zeros(1))
        o = torch.optim.SGD([p], lr=2e-4)
        sch = make(o)
        out = []
        for _ in range(total + 1):
            out.append(o.param_groups[0]["lr"])
            o.step()
            sch.step()
        return out

    total, warmup = 100, 3
    ref["schedules"] = {
        "base_lr": 2e-4, "total": total, "warmup": warmup,
        "constant_with_warmup": lrs(lambda o: get_constant_schedule_with_warmup(o, warmup), total),
        "linear": lrs(lambda o: get_linear_schedule_with_warmup(o, warmup, total), total),
        "cosine": lrs(lambda o: get_cosine_schedule_with_warmup(o, warmup, total), total),
        "cosine_1.5_cycles": lrs(lambda o: get_cosine_schedule_with_warmup(o, warmup, total, num_cycles=1.5),
                                 total),
    }

    # --- gradient clipping -----------------------------------------------------------------
    clips = []
    g = torch.Generator().manual_seed(99)
    for max_norm in [0.3, 1.0, 1000.0]:
        ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        gs = [torch.randn(s, generator=g, dtype=torch.float32) for s in shapes]
        for p, gr in zip(ps, gs):
            p.grad = gr.clone()
        total_norm = torch.nn.utils.clip_grad_norm_(ps, max_norm, foreach=False)
        clips.append({
            "max_norm": max_norm,
            "grads": [tensor_bits(x) for x in gs],
            "total_norm": f32_bits(total_norm),
            "clipped": [tensor_bits(p.grad) for p in ps],
        })
    ref["clip"] = {"shapes": shapes, "cases": clips}

    with open(os.path.join(OUT, "adamw_reference.json"), "w") as f:
        json.dump(ref, f)
        f.write("\n")


def check_ours(export_dir):
    """PEFT loads adapters written by our C++ writer (tests/lora/test_lora.cpp writes
    them when QLORA_PEFT_EXPORT_DIR is set) and sees exactly our weights."""
    from peft import PeftModel
    from safetensors.torch import load_file
    base_dir = os.path.join(OUT, "base")
    for name in sorted(os.listdir(export_dir)):
        d = os.path.join(export_dir, name)
        model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        pm = PeftModel.from_pretrained(model, d)
        ours = load_file(os.path.join(d, "adapter_model.safetensors"))
        n = 0
        for k, v in ours.items():
            mod = k[len("base_model.model."):].rsplit(".lora_", 1)[0]
            which = "lora_A" if ".lora_A." in k else "lora_B"
            layer = pm.base_model.model.get_submodule(mod)
            got = getattr(layer, which)["default"].weight
            assert torch.equal(got, v), k
            n += 1
        cfg = pm.peft_config["default"]
        pm(torch.tensor([[1, 2, 3]]))  # runs
        print(f"{name}: PEFT loaded {n} tensors bit-exact; r={cfg.r} alpha={cfg.lora_alpha} "
              f"rslora={cfg.use_rslora} scaling={next(iter(pm.base_model.model.model.layers[1].self_attn.v_proj.scaling.values()))}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        return check_ours(sys.argv[2])
    os.makedirs(OUT, exist_ok=True)
    base_dir = make_base()
    make_adapter(base_dir, "adapter_qv", seed=1, target_modules=["q_proj", "v_proj"])
    make_adapter(base_dir, "adapter_all_rslora", seed=2, target_modules="all-linear", use_rslora=True)
    make_optim_reference()
    print("wrote", OUT)


if __name__ == "__main__":
    sys.exit(main())
