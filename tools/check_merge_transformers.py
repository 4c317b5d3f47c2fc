#!/usr/bin/env python3
"""`qlora merge` output checked by transformers (run by hand: needs .refenv, see setup_refenv.sh).

Merges stories260K (NF4, blocksize 64, as bitsandbytes holds it) with PEFT's own adapter
from tests/fixtures/train_parity/stories260k/initial_adapter into Hugging Face directories
(fp32 and bf16), loads each with transformers' AutoModelForCausalLM, and compares its logits
on the fixture's ids with PEFT's logits for the *unmerged* base + adapter
(peft_logits.safetensors, made by tools/make_train_parity_fixtures.py). Prints one JSON line
per dtype: max |transformers(merged) - PEFT(unmerged)| and how far the adapter moves logits.

    .refenv/bin/python tools/check_merge_transformers.py [--qlora build/qlora]
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
FIX = ROOT / "tests" / "fixtures" / "train_parity" / "stories260k"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=str(ROOT / "build" / "qlora"))
    args = ap.parse_args()
    with safe_open(str(FIX / "peft_logits.safetensors"), "pt") as f:
        ids = json.loads(f.metadata()["ids"])
        want = f.get_tensor("logits").float()
        base = f.get_tensor("base_logits").float()
    moved = (want - base).abs().max().item()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, tol in (("fp32", 1e-4), ("bf16", 0.25)):
            out = Path(tmp) / dtype
            subprocess.run([args.qlora, "merge", "--model", str(DATA / "stories260K" / "stories260K.bin"),
                            "--tokenizer", str(DATA / "stories260K" / "tok512.bin"), "--quant", "nf4",
                            "--blocksize", "64", "--adapter", str(FIX / "initial_adapter"), "--out", str(out),
                            "--dtype", dtype, "--quiet"], check=True)
            model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
            model.eval()
            with torch.no_grad():
                got = model(torch.tensor([ids])).logits[0].float()
            d = (got.reshape(want.shape) - want).abs().max().item()
            ok = ok and d <= tol
            extra = {}
            if dtype == "bf16":
                # The fp32 merge rounded to bf16 by torch itself: must be exactly our bf16 weights.
                # (Parameters, not logits: model.to(bfloat16) would also round the rotary
                # inv_freq buffer.)
                ref = AutoModelForCausalLM.from_pretrained(str(Path(tmp) / "fp32"), dtype=torch.float32)
                b16 = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
                rs, bs = ref.state_dict(), b16.state_dict()
                differ = [k for k in rs if not torch.equal(rs[k].to(torch.bfloat16), bs[k])]
                extra["params_differing_from_torch_bf16_rounding_of_fp32_merge"] = len(differ)
                ok = ok and not differ
            print(json.dumps({"dtype": dtype, "max_abs_diff_vs_peft_unmerged": d, "tolerance": tol, **extra,
                              "adapter_moves_logits_by": moved, "config": json.loads((out / "config.json").read_text())
                              ["architectures"]}))
        ok = check_smollm2(args.qlora, Path(tmp) / "smollm2") and ok
    sys.exit(0 if ok else 1)


def check_smollm2(qlora, out):
    """SmolLM2 (GGUF, NF4 + double quant) + PEFT's adapter merged to bf16: the tokenizer qlora
    writes from the GGUF metadata gives transformers' GGUF tokenizer's ids and chat text."""
    from transformers import AutoTokenizer
    gguf = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists():
        print(json.dumps({"smollm2": "skipped: run scripts/fetch_model.sh"}))
        return True
    subprocess.run([qlora, "merge", "--model", str(gguf), "--quant", "nf4", "--double-quant", "--adapter",
                    str(FIX.parent / "smollm2" / "initial_adapter"), "--out", str(out), "--quiet"], check=True)
    ref = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ours = AutoTokenizer.from_pretrained(str(out))
    text = (DATA / "text" / "tinyshakespeare.txt").read_text()[:200000] + \
        "\n<|im_start|>user\nHi! \u00fcn\u00efc\u00f6d\u00e9 \U0001F642 1234567 tabs\tand   spaces<|im_end|>\n"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
    same_ids = ref(text)["input_ids"] == ours(text)["input_ids"]
    same_chat = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    model = AutoModelForCausalLM.from_pretrained(str(out))  # loads: config and weights are valid
    print(json.dumps({"smollm2_merged_bf16": True, "tokenizer_ids_equal_transformers_gguf": same_ids,
                      "chat_template_equal": same_chat, "tokens": len(ours(text)["input_ids"]),
                      "params": sum(p.numel() for p in model.parameters())}))
    return same_ids and same_chat


if __name__ == "__main__":
    main()
