#!/usr/bin/env python3
"""`qlora merge` of llama2.c's stories260K into a Hugging Face directory, checked with
transformers (run by hand; needs .refenv, see setup_refenv.sh):
  - the tokenizer.json qlora derives from llama2.c's scored vocabulary tokenizes every
    reference case (tests/fixtures/tokenizer/llama2c_reference.json, from llama2.c's own
    encoder) into the same ids (cases with a literal "▁" are left out: a Llama-style
    tokenizer.json reads it as a space);
  - transformers' greedy generation from the exported model is llama2.c's known text.

    .refenv/bin/python tools/check_llama2c_export.py [--qlora build/qlora]
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
KNOWN = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
         "she saw a big, red ball. She wanted to play with it, but it was too high.\nLily")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=str(ROOT / "build" / "qlora"))
    args = ap.parse_args()
    stories = DATA / "stories260K" / "stories260K.bin"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = lambda c: subprocess.run(c, check=True, capture_output=True, text=True)
        run([args.qlora, "train", "--model", str(stories), "--data", str(DATA / "text" / "tinyshakespeare.txt"),
             "--out", str(tmp / "ad"), "--max-steps", "1", "--seq-len", "32", "--quiet"])
        run([args.qlora, "merge", "--model", str(stories), "--quant", "none", "--adapter", f"{tmp / 'ad'}:0",
             "--out", str(tmp / "hf"), "--dtype", "fp32", "--quiet"])
        tok = AutoTokenizer.from_pretrained(str(tmp / "hf"))
        ref = json.loads((ROOT / "tests" / "fixtures" / "tokenizer" / "llama2c_reference.json").read_text())
        cases = [c for c in ref["cases"] if "\u2581" not in c["text"]]
        same = sum(tok(c["text"])["input_ids"] == c["ids"] for c in cases)
        model = AutoModelForCausalLM.from_pretrained(str(tmp / "hf"), dtype=torch.float32)
        ids = tok("Once upon a time", return_tensors="pt").input_ids
        text = tok.decode(model.generate(ids, max_new_tokens=60, do_sample=False)[0], skip_special_tokens=True)
        res = {"cases": len(cases), "ids_equal_llama2c": same, "greedy_equals_llama2c": text == KNOWN}
        print(json.dumps(res))
        sys.exit(0 if same == len(cases) and text == KNOWN else 1)


if __name__ == "__main__":
    main()
