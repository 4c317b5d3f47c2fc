"""On the GPU machine, next to `qlora`: (1) a PEFT adapter trained by `qlora train --device
cuda` loads in PEFT with every tensor in place; (2) decode speed of Hugging Face generate
(bf16, the KV cache, batch 1) on the same model, the number `qlora generate --device cuda`
is compared with. Prints JSON lines.

    python3 hf_compare.py MODEL_DIR ADAPTER_DIR N_TOKENS"""
import json, sys, time

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, adapter_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

# (1) PEFT loads the adapter: every saved lora_A/lora_B tensor ends up in the model.
if adapter_dir != "-":
    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, adapter_dir)
    saved = load_file(f"{adapter_dir}/adapter_model.safetensors")
    sd = pm.state_dict()
    matched = 0
    for k, v in saved.items():
        key = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        if key in sd and torch.equal(sd[key].float(), v.float()):
            matched += 1
    nonzero_b = sum(1 for k, v in saved.items() if "lora_B" in k and v.abs().max() > 0)
    print(json.dumps({"check": "peft_load", "saved_tensors": len(saved), "matched_in_model": matched,
                      "nonzero_B": nonzero_b, "ok": matched == len(saved) and nonzero_b > 0}), flush=True)

# (2) HF generate speed, bf16 on the GPU.
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
ids = tok("Once upon a time", return_tensors="pt").input_ids.cuda()
with torch.no_grad():
    model.generate(ids, max_new_tokens=8, do_sample=False)
    torch.cuda.synchronize()
    t0 = time.time()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    torch.cuda.synchronize()
    dt = time.time() - t0
print(json.dumps({"check": "hf_generate_bf16", "model": model_dir, "new_tokens": int(out.shape[1] - ids.shape[1]),
                  "tok_per_s": round((out.shape[1] - ids.shape[1]) / dt, 1)}), flush=True)
