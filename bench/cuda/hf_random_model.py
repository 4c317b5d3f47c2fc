"""Makes a Llama-family Hugging Face directory with random weights (transformers' own
initialisation) from a config.json and tokenizer files, for GPU checks and benchmarks
where real weights cannot travel. Say "random weights" wherever its numbers are used.

    python3 hf_random_model.py SRC_DIR OUT_DIR [--hidden H --layers L --ffn F --heads N --kv-heads K]
SRC_DIR holds config.json and the tokenizer files (copied); the overrides reshape it
(e.g. a 1.1B TinyLlama shape)."""
import argparse, json, os, shutil, sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("src"); ap.add_argument("out")
ap.add_argument("--hidden", type=int); ap.add_argument("--layers", type=int); ap.add_argument("--ffn", type=int)
ap.add_argument("--heads", type=int); ap.add_argument("--kv-heads", type=int)
ap.add_argument("--dtype", default="bfloat16")
a = ap.parse_args()
cfg = json.load(open(os.path.join(a.src, "config.json")))
for k, v in (("hidden_size", a.hidden), ("num_hidden_layers", a.layers), ("intermediate_size", a.ffn),
             ("num_attention_heads", a.heads), ("num_key_value_heads", a.kv_heads)):
    if v: cfg[k] = v
if a.hidden or a.heads: cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
torch.manual_seed(0)
config = LlamaConfig(**cfg)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = LlamaForCausalLM(config)
model = model.to(getattr(torch, a.dtype)).cpu()
os.makedirs(a.out, exist_ok=True)
model.save_pretrained(a.out, safe_serialization=True)
for f in os.listdir(a.src):
    if f.startswith("tokenizer") or f == "generation_config.json":
        shutil.copy(os.path.join(a.src, f), a.out)
print(f"{a.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters ({a.dtype}, random weights)")
