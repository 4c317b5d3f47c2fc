#!/usr/bin/env python3
"""Our merges of every family fixture, read by transformers: `qlora merge` of each
tests/fixtures/families/<family> with its PEFT initial_adapter (float32, no quantization)
must load in AutoModelForCausalLM and give PeftModel's logits (the fixture's peft_logits)
within float32 rounding. Checks what config.json we write for each family (norms, head_dim,
soft caps, layer_types, sliding windows, rotary scaling), which the C++ tests can only read
back with our own loader.

    .refenv/bin/python tools/check_family_merges.py [--qlora build/qlora] [FAMILY ...]

Our own adapters too: build/test_families (Families.OurAdapterSavesUnderPeftNames) saves an
adapter with non-zero B for each fixture under QLORA_PEFT_EXPORT_DIR with the logits it
computes; PeftModel.from_pretrained must load each on the fixture model and give those
logits within float32 rounding.

For the fixtures with a model.gguf it also runs llama.cpp (llama-cpp-python, float32 KV
cache) on that GGUF with our `qlora export-adapter` LoRA GGUF (--lora) and on our merged
GGUF: PeftModel's logits within 1e-3 (1.5e-3 of the largest logit for the gemma families:
ggml's CPU GELU reads an fp16 table; for Gemma 4 the reference is PeftModel with that GELU,
tools/ggml_gelu.py). A gemma4 adapter on per_layer_model_projection has no LoRA GGUF (llama.cpp
multiplies that projection without adapters): its refusal is checked, the merge still runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "families"


def attn(family: str) -> str:
    """transformers 5.23's eager Falcon attention adds the ALiBi bias twice; SDPA (its
    default) adds it once, as the original falcon-rw code does (make_family_fixtures.py)."""
    cfg = json.loads((FIX / family / "config.json").read_text())
    return "sdpa" if cfg.get("alibi") else "eager"


def auto(family: str):
    """A vision-language checkpoint (gemma3, mistral3, llava) loads as users load it,
    AutoModelForImageTextToText; a language model as AutoModelForCausalLM."""
    cfg = json.loads((FIX / family / "config.json").read_text())
    return AutoModelForImageTextToText if "text_config" in cfg else AutoModelForCausalLM


def merge_limit(family: str) -> float:
    """float32 rounding: 1e-5 of the largest logit, but twice transformers' own float32 distance
    from float64 where that is larger: gemma4_e 8.3e-5 with the fixture's adapter, gemma4_moe
    9.1e-6 (bench/RESULTS.md, session 20); qwen3_5_moe's merge measured 1.3e-5 since session 19
    (the gated DeltaNet fixtures amplify float32 rounding: test_families.cpp)."""
    return {"gemma4_e": 2e-4, "gemma4_moe": 2e-5, "qwen3_5_moe": 2e-5}.get(family, 1e-5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=str(ROOT / "build" / "qlora"))
    ap.add_argument("--test-families", default=str(ROOT / "build" / "test_families"))
    ap.add_argument("families", nargs="*")
    a = ap.parse_args()
    fams = a.families or sorted(p.name for p in FIX.iterdir() if (p / "reference.json").exists())
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for f in fams:
            out = Path(tmp) / f
            subprocess.run([a.qlora, "merge", "--model", str(FIX / f), "--adapter", str(FIX / f / "initial_adapter"),
                            "--quant", "none", "--dtype", "fp32", "--out", str(out), "-q"], check=True)
            m = auto(f).from_pretrained(str(out), dtype=torch.float32, attn_implementation=attn(f))
            ref = json.loads((FIX / f / "reference.json").read_text())
            want = load_file(str(FIX / f / "logits.safetensors"))["peft_logits"]
            with torch.no_grad():
                got = m(torch.tensor([ref["prompt"]])).logits[0]
            rel = float((got - want).abs().max() / want.abs().max())
            worst = max(worst, rel / merge_limit(f))
            row = {"family": f, "max_abs_dlogit_rel_to_max_logit": rel}
            if auto(f) is AutoModelForImageTextToText:
                # the vision tower and projector come back as they were, bit for bit
                base = auto(f).from_pretrained(str(FIX / f), dtype=torch.float32, attn_implementation=attn(f))
                theirs, ours = base.state_dict(), m.state_dict()
                other = [k for k in theirs if ".language_model." not in k and not k.startswith(("lm_head", "language_model."))]
                row["other_part_tensors"] = len(other)
                row["other_part_tensors_differing"] = sum(not torch.equal(theirs[k], ours[k]) for k in other)
                if not other or row["other_part_tensors_differing"]:
                    worst = float("inf")
            print(json.dumps(row))
        # Our adapters, loaded by PEFT.
        import os
        from peft import PeftModel
        exp = Path(tmp) / "ours"
        subprocess.run([a.test_families, "--gtest_filter=*OurAdapterSavesUnderPeftNames*"], check=True,
                       env={**os.environ, "QLORA_PEFT_EXPORT_DIR": str(exp)}, stdout=subprocess.DEVNULL)
        for f in fams:
            for sub, what in ((f, "our_adapter_in_peft"), (f + "_default", "our_default_targets_adapter_in_peft")):
                if not (exp / sub).exists():
                    continue  # (default targets: only where the fixture has PEFT's default adapter)
                base = auto(f).from_pretrained(str(FIX / f), dtype=torch.float32, attn_implementation=attn(f))
                pm = PeftModel.from_pretrained(base, str(exp / sub)).eval()
                ref = json.loads((FIX / f / "reference.json").read_text())
                want = load_file(str(exp / sub / "ours_logits.safetensors"))["logits"]
                with torch.no_grad():
                    got = pm(torch.tensor([ref["prompt"]])).logits[0]
                rel = float((got - want).abs().max() / want.abs().max())
                worst = max(worst, rel / merge_limit(f))
                print(json.dumps({"family": f, f"{what}_max_abs_dlogit_rel_to_max_logit": rel}))
        worst_cpp = 0.0
        cpp_logits = {}  # (family -> llama.cpp's logits on our GGUFs, where they are compared with each other)
        for f in fams:
            gg = FIX / f / "model.gguf"
            if not gg.exists():
                continue
            # llama.cpp's gptneox GGUF holds query_key_value reordered, and qlora refuses an adapter
            # on that Linear of such a GGUF: export the adapter and the merge from the Hugging Face
            # checkpoint instead (qlora reorders them for llama.cpp as its converter does).
            # (falcon's new architecture likewise: llama.cpp's converter regroups its query_key_value)
            fc = json.loads((FIX / f / "config.json").read_text())
            regrouped = fc["model_type"] in ("gpt_neox", "bloom") or (fc["model_type"] == "falcon" and
                                                                       fc.get("new_decoder_architecture"))
            src = FIX / f if regrouped else gg
            from llama_cpp import Llama
            import numpy as np
            ref = json.loads((FIX / f / "reference.json").read_text())
            want = load_file(str(FIX / f / "logits.safetensors"))["peft_logits"].numpy()
            # (Not named after the family: llama.cpp looks up "<|end|>" in the vocabulary of any
            # model whose general.name -- the file's stem -- says phi3, which these tiny
            # vocabularies do not have.)
            lora, merged = Path(tmp) / f"g{fams.index(f)}-lora.gguf", Path(tmp) / f"g{fams.index(f)}-merged.gguf"
            cfg = json.loads((FIX / f / "config.json").read_text())
            if cfg["model_type"] == "gpt_oss" and cfg.get("swiglu_limit", 7.0) != 7.0:
                print(json.dumps({"family": f, "llama_cpp": "skipped: llama.cpp's gpt-oss hard-codes swiglu_limit 7"}))
                continue
            if cfg["model_type"] == "phi3" and cfg.get("sliding_window"):
                # llama.cpp switches phi3's sliding window off ("Phi SWA is currently disabled"):
                # its reference is PeftModel without the window.
                from peft import PeftModel
                base = AutoModelForCausalLM.from_pretrained(str(FIX / f), dtype=torch.float32,
                                                            attn_implementation="eager")
                base.config.sliding_window = None
                pm = PeftModel.from_pretrained(base, str(FIX / f / "initial_adapter")).eval()
                with torch.no_grad():
                    want = pm(torch.tensor([ref["prompt"]])).logits[0].numpy()
            if cfg["model_type"] == "gemma4_text":
                # llama.cpp's float16 GELU table moves gemma4_e's logits by 4e-2 on its own: the reference
                # is PeftModel with that GELU (tools/ggml_gelu.py), as the fixture's own GGUF check.
                from peft import PeftModel
                from ggml_gelu import with_ggml_gelu
                base = AutoModelForCausalLM.from_pretrained(str(FIX / f), dtype=torch.float32, attn_implementation="eager")
                pm = with_ggml_gelu(PeftModel.from_pretrained(base, str(FIX / f / "initial_adapter")).eval())
                with torch.no_grad():
                    want = pm(torch.tensor([ref["prompt"]])).logits[0].numpy()
            ex = subprocess.run([a.qlora, "export-adapter", str(FIX / f / "initial_adapter"), "--model", str(src),
                                 "--quant", "none", "--type", "f32", "--out", str(lora), "-q"], capture_output=True, text=True)
            runs = [("merged_gguf", {"model_path": str(merged)})]
            if ex.returncode == 0:
                runs.insert(0, ("lora_gguf", {"model_path": str(gg), "lora_path": str(lora)}))
            elif cfg["model_type"] == "gemma4_text" and "per_layer_model_projection" in ex.stderr:
                # (llama.cpp's gemma4 multiplies per_layer_model_proj without adapters: refused by name)
                print(json.dumps({"family": f, "llama_cpp": "lora_gguf refused as expected: " + ex.stderr.strip()}))
            elif cfg["model_type"] == "deepseek_v3" and "llama.cpp's deepseek2 multiplies" in ex.stderr:
                # (llama.cpp's deepseek2 multiplies the latent projections without adapters: refused by name) The
                # adapter without them (o_proj, experts, router), as a LoRA GGUF on llama.cpp, against PeftModel.
                print(json.dumps({"family": f, "llama_cpp": "lora_gguf refused as expected: " + ex.stderr.strip()}))
                import shutil
                from peft import PeftModel
                from safetensors.torch import save_file
                latent = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")
                part = Path(tmp) / f"{f}-no-latent"
                shutil.copytree(FIX / f / "initial_adapter", part)
                sd = load_file(str(part / "adapter_model.safetensors"))
                save_file({k: v for k, v in sd.items() if not any(f".{m}." in k for m in latent)},
                          str(part / "adapter_model.safetensors"))
                acj = json.loads((part / "adapter_config.json").read_text())
                acj["target_modules"] = [m for m in acj["target_modules"] if m not in latent]
                (part / "adapter_config.json").write_text(json.dumps(acj))
                base = AutoModelForCausalLM.from_pretrained(str(FIX / f), dtype=torch.float32, attn_implementation="eager")
                pm = PeftModel.from_pretrained(base, str(part)).eval()
                with torch.no_grad():
                    want_part = pm(torch.tensor([ref["prompt"]])).logits[0].numpy()
                lora_part = Path(tmp) / f"g{fams.index(f)}-lora-part.gguf"
                subprocess.run([a.qlora, "export-adapter", str(part), "--model", str(src), "--quant", "none", "--type",
                                "f32", "--out", str(lora_part), "-q"], check=True)
                llm = Llama(model_path=str(gg), lora_path=str(lora_part), n_ctx=64, logits_all=True, verbose=False,
                            type_k=0, type_v=0, flash_attn=False)
                llm.eval(ref["prompt"])
                got = np.array(llm.scores[: len(ref["prompt"])], dtype=np.float32)
                rel = float(abs(got - want_part).max() / abs(want_part).max())
                worst_cpp = max(worst_cpp, rel / 1e-3)
                print(json.dumps({"family": f, "llama_cpp": "lora_gguf without the latent projections", "max_abs_dlogit_rel_to_max_logit": rel}))
            else:
                sys.exit(f"{f}: qlora export-adapter failed: {ex.stderr}")
            tok = ["--tokenizer", str(gg)] if src != gg else []  # (the HF fixtures have no tokenizer)
            subprocess.run([a.qlora, "merge", "--model", str(src), "--adapter", str(FIX / f / "initial_adapter"),
                            "--quant", "none", "--gguf-type", "f32", "--out", str(merged), "-q", *tok], check=True)
            for what, kw in runs:
                llm = Llama(n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0, flash_attn=False, **kw)
                llm.eval(ref["prompt"])
                got = np.array(llm.scores[: len(ref["prompt"])], dtype=np.float32)
                rel = float(abs(got - want).max() / abs(want).max())
                # (gemma4_e amplifies rounding: float16 GELUs alone move PeftModel's logits by 1.8e-2 of
                # the largest, and its most sensitive tokens part most -- bench/RESULTS.md, session 21)
                limit = 3e-2 if f == "gemma4_e" else 1.5e-3 if f.startswith("gemma") else 1e-3
                if f == "bamba":
                    # llama.cpp's converter permutes Bamba's q/k over the whole head while Bamba rotates
                    # half of it (tools/make_family_fixtures.py measures it): our GGUFs keep the converter's
                    # form, on which llama.cpp parts from transformers; recorded, not held to a limit. Both
                    # of ours must still agree with each other (the LoRA on the converter's GGUF = our merge).
                    runs_got = cpp_logits.setdefault(f, [])
                    runs_got.append(got)
                    if len(runs_got) == 2 and float(abs(runs_got[0] - runs_got[1]).max() / abs(want).max()) > 1e-5:
                        sys.exit("bamba: llama.cpp gives our LoRA GGUF and our merged GGUF different logits")
                    print(json.dumps({"family": f, "llama_cpp": what, "known_llama_cpp_rotary_difference": rel}))
                    continue
                worst_cpp = max(worst_cpp, rel / limit)
                print(json.dumps({"family": f, "llama_cpp": what, "max_abs_dlogit_rel_to_max_logit": rel}))
    if worst > 1:
        sys.exit(f"a merge or one of our adapters disagrees with PeftModel (worst {worst:.2f} of its limit)")
    if worst_cpp > 1:
        sys.exit("llama.cpp disagrees with PeftModel on one of our GGUFs")


if __name__ == "__main__":
    main()
