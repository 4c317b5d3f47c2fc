#!/usr/bin/env python3
"""A tiny Llama-architecture Hugging Face directory with a SentencePiece tokenizer, for
checking GGUF output from SentencePiece-style sources (Llama 2, Mistral v0.1 style):
  - tokenizer.model: SentencePiece BPE (400 pieces, byte fallback, digits split, identity
    normalization), trained by the sentencepiece library on the first 100 kB of Tiny Shakespeare;
  - tokenizer.json / tokenizer_config.json: transformers' conversion of it (AutoTokenizer);
  - model.safetensors + config.json: random weights (transformers' init, seed 0), hidden 64;
  - reference.json: sentencepiece's own ids (BOS first) for a few texts.
Writes tests/fixtures/spm_llama/.

    .refenv/bin/python tools/make_spm_fixture.py
"""
import json
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "spm_llama"
DATA = ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
TEXTS = ["First Citizen:\nBefore we proceed any further, hear me speak.",
         "  leading spaces, digits 12345 and 3.14",
         "unicode: café naïve 中文 🙂 (byte fallback)",
         "ALL CAPS\tand\ttabs\n\nnew lines"]


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "train.txt"
        src.write_text(DATA.read_text()[:100000])
        spm.SentencePieceTrainer.train(input=str(src), model_prefix=str(Path(tmp) / "spm"), vocab_size=400,
                                       model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                       split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                       normalization_rule_name="identity", remove_extra_whitespaces=False,
                                       num_threads=1, minloglevel=2)
        shutil.copy(Path(tmp) / "spm.model", OUT / "tokenizer.model")
    (OUT / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "legacy": False, "add_bos_token": True}))
    tok = AutoTokenizer.from_pretrained(str(OUT))  # transformers converts tokenizer.model to tokenizer.json
    tok.save_pretrained(str(OUT))
    sp = spm.SentencePieceProcessor(model_file=str(OUT / "tokenizer.model"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(str(OUT), safe_serialization=True)
    ref = {"generator": "sentencepiece %s" % spm.__version__,
           "pieces": sp.get_piece_size(),
           "texts": [{"text": t, "ids": [sp.bos_id()] + sp.encode(t)} for t in TEXTS]}
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f.name, f.stat().st_size)


if __name__ == "__main__":
    main()
