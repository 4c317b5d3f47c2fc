#!/usr/bin/env python3
"""What a user would otherwise run: transformers + PEFT + bitsandbytes QLoRA (the QLoRA
recipe) and 16-bit LoRA, on a Llama-shaped model with RANDOM weights made directly on the
device (model shapes like 7B cannot be shipped as files here). Prints one JSON object per
measurement, for bench/RESULTS.md and the side-by-side device script
(scripts/device_issue13.sh).

    python3 tools/bench_qlora_python.py --shape llama-7b --mode qlora --batch 1 --seq 512
    python3 tools/bench_qlora_python.py --shape llama-7b --mode lora16 --batch 8 --seq 512
    python3 tools/bench_qlora_python.py --shape llama-7b --mode generate -n 128
    python3 tools/bench_qlora_python.py --shape tiny --device cpu --mode qlora     # logic check

qlora:    NF4 + double quantization (bitsandbytes Params4bit, blocksize 64), bf16 compute,
          prepare_model_for_kbit_training (norms upcast, gradient checkpointing), LoRA r 16
          alpha 32 dropout 0.05 on all-linear, PagedAdamW32bit lr 2e-4.
lora16:   the same LoRA on bf16 weights (no quantization), gradient checkpointing, AdamW.
generate: HF generate, greedy, batch 1, KV cache, NF4 + dq bf16 (or --bf16-weights).
Tokens/s counts batch x seq per optimizer step (median of --steps timed steps after
--warmup); peak is torch.cuda.max_memory_allocated (allocated, as the issue's table), or on
--device cpu the process's peak resident set.

    python3 tools/bench_qlora_python.py --shape tinyllama-1.1b --device cpu --mode qlora --batch 1 --seq 256 \
        --compute-dtype fp32      # issue 14's CPU comparison (fp32: no native bf16 on the CPU)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SHAPES = {  # hidden, layers, ffn, heads, kv_heads, vocab
    "tiny": (64, 2, 128, 4, 2, 256),
    "smollm2-135m": (576, 30, 1536, 9, 3, 49152),
    "tinyllama-1.1b": (2048, 22, 5632, 32, 4, 32000),
    "llama-7b": (4096, 32, 11008, 32, 32, 32000),
    "llama-13b": (5120, 40, 13824, 40, 40, 32000),
    "llama-33b": (6656, 60, 17920, 52, 52, 32000),
    "llama-65b": (8192, 80, 22016, 64, 64, 32000),
}


def build(shape: str, device: str, quantize: bool, dtype=torch.bfloat16):
    import transformers
    h, L, f, nh, nkv, v = SHAPES[shape]
    cfg = transformers.LlamaConfig(hidden_size=h, num_hidden_layers=L, intermediate_size=f, num_attention_heads=nh,
                                   num_key_value_heads=nkv, vocab_size=v, max_position_embeddings=4096,
                                   tie_word_embeddings=shape == "smollm2-135m", rms_norm_eps=1e-5)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(cfg).to(dtype)
    if quantize:
        import bitsandbytes as bnb
        # Each block Linear becomes bitsandbytes' Linear4bit holding the NF4 + double-quant
        # codes of the random bf16 weight (what from_pretrained(..., BitsAndBytesConfig(
        # load_in_4bit, nf4, double quant, bf16 compute)) builds from a checkpoint).
        for name, mod in list(model.named_modules()):
            for cname, child in list(mod.named_children()):
                if isinstance(child, torch.nn.Linear) and cname != "lm_head":
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=dtype, compress_statistics=True, quant_type="nf4",
                                          device="meta")
                    q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                                 quant_type="nf4", blocksize=64)
                    q = q.to(device)
                    setattr(mod, cname, q)
                    del child
        model.is_loaded_in_4bit = True
        model.is_quantized = True
    if device == "cuda":
        torch.cuda.empty_cache()
    return model


def peak_gib(device):
    """CUDA: peak allocated by torch; CPU: the process's peak resident set (ru_maxrss)."""
    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def train(a):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    dtype = torch.float32 if a.compute_dtype == "fp32" else torch.bfloat16
    model = build(a.shape, a.device, quantize=a.mode == "qlora", dtype=dtype)
    if a.mode == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    if a.mode == "qlora" and a.device == "cuda":
        import bitsandbytes as bnb
        opt = bnb.optim.PagedAdamW32bit(params, lr=2e-4)
    else:
        opt = torch.optim.AdamW(params, lr=2e-4)
    model.train()
    V = SHAPES[a.shape][5]
    g = torch.Generator(device="cpu").manual_seed(1)
    times = []
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, V, (a.batch, a.seq), generator=g).to(a.device)
        sync(a.device)
        t0 = time.perf_counter()
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.device == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(a.device)
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"bench": "python_train", "mode": a.mode, "shape": a.shape, "batch": a.batch, "seq": a.seq,
            "compute_dtype": a.compute_dtype, "gradient_checkpointing": True,
            "tok_per_s": round(a.batch * a.seq / t, 1), "step_s": round(t, 4), "peak_gib": peak_gib(a.device),
            "loss": round(float(loss.item()), 4)}


def generate(a):
    model = build(a.shape, a.device, quantize=not a.bf16_weights)
    model.eval()
    V = SHAPES[a.shape][5]
    ids = torch.randint(3, V, (1, 8), generator=torch.Generator().manual_seed(2)).to(a.device)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)  # warm-up
        sync(a.device)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=a.n, do_sample=False, min_new_tokens=a.n)
        sync(a.device)
    dt = time.perf_counter() - t0
    n = out.shape[1] - ids.shape[1]
    return {"bench": "python_generate", "shape": a.shape, "weights": "bf16" if a.bf16_weights else "nf4+dq",
            "tokens": int(n), "tok_per_s": round(n / dt, 1), "peak_gib": peak_gib(a.device)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-7b", choices=sorted(SHAPES))
    ap.add_argument("--mode", default="qlora", choices=["qlora", "lora16", "generate"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--bf16-weights", action="store_true")
    ap.add_argument("--compute-dtype", default="bf16", choices=["bf16", "fp32"],
                    help="train: the weights' and bitsandbytes' compute dtype (bf16: the QLoRA recipe; fp32: the "
                         "fastest on a CPU without native bf16)")
    a = ap.parse_args()
    r = generate(a) if a.mode == "generate" else train(a)
    import bitsandbytes, peft, transformers
    r.update({"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__, "peft": peft.__version__,
              "bitsandbytes": bitsandbytes.__version__, "random_weights": True})
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
