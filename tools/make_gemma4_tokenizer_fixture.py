#!/usr/bin/env python3
"""tests/fixtures/tokenizer/gemma4_gguf/: a small Gemma 4-style vocabulary as llama.cpp's "gemma4"
tokenizer model reads it from a GGUF (tokenizer.ggml.model "gemma4": BPE by merge rank over UTF-8
characters -- no byte-level mapping -- spaces as U+2581, the text split into lines and runs of
newlines, <0xXX> byte fallback, BOS added), and llama.cpp's own token ids for a set of strings.

  vocab.gguf      a gemma4 GGUF with the vocabulary only (gguf-py 0.19; no tensors)
  expected.json   {"cases": [{"text", "ids" (with BOS), "ids_no_bos"}], "source": ...}

The ids come from llama.cpp itself (llama-cpp-python 0.3.36, Llama(vocab_only=True).tokenize with
special tokens parsed). Run with .refenv/bin/python after installing llama-cpp-python there
(tools/requirements-ref.txt says how).
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizer" / "gemma4_gguf"

SP = "\u2581"
# Specials as Gemma 4 numbers its first ones, then its turn markers.
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>"]
# Pieces built by the merges below, in merge (rank) order; each merge's two halves are tokens.
MERGES = [
    (SP, "t"), ("h", "e"), (SP + "t", "he"), ("l", "l"), ("e", "ll"), ("h", "ell"), ("hell", "o"),
    (SP, "w"), ("o", "r"), (SP + "w", "or"), ("l", "d"), (SP + "wor", "ld"), (SP, "c"), ("a", "t"),
    (SP + "c", "at"), (SP, "s"), (SP + "s", "at"), (SP, SP), ("\n", "\n"), ("i", "n"), (SP, "in"),
    ("c", "a"), ("f", "\u00e9"), ("ca", "f\u00e9"), (SP, "ca"), (SP + "ca", "f\u00e9"), ("H", "ell"),
    ("Hell", "o"), ("u", "s"), ("us", "e"), ("use", "r"), (SP + SP, SP),
]
CHARS = list("abcdefghijklmnopqrstuvwxyzHW.,!?'") + [SP, "\n", "\u00e9", "\u00ef"]

CASES = [
    "Hello world", "hello", "the cat sat", "The cat", "  two  spaces", "   three", "line one\nline two",
    "a\n\nb\n\n\nc", "\n", "trailing newline\n", "caf\u00e9 na\u00efve", "unknown \u00fc and \U0001F600 fall back",
    "<|turn>user\nhello<turn|>", "in the world", "",
]


def vocab():
    toks = list(SPECIALS)
    toks += [f"<0x{i:02X}>" for i in range(256)]
    for ch in CHARS:
        if ch not in toks:
            toks.append(ch)
    for a, b in MERGES:
        assert a in toks and b in toks, (a, b)
        if a + b not in toks:
            toks.append(a + b)
    return toks


def main():
    import gguf
    from llama_cpp import Llama
    OUT.mkdir(parents=True, exist_ok=True)
    toks = vocab()
    types = [3] * len(SPECIALS) + [6] * 256 + [1] * (len(toks) - len(SPECIALS) - 256)
    path = OUT / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "gemma4")
    # (the hyper-parameters llama.cpp's loader requires of a gemma4 file; no tensors: vocab only)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(1)
    w.add_key_length(32)
    w.add_value_length(32)
    w.add_key_length_swa(16)
    w.add_value_length_swa(16)
    w.add_rope_dimension_count(32)
    w.add_rope_dimension_count_swa(16)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(8)
    w.add_sliding_window_pattern([True, False])
    w.add_embedding_length_per_layer_input(0)
    w.add_tokenizer_model("gemma4")
    w.add_token_list(toks)
    w.add_token_scores([-1000.0] * len(toks))
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    cases = []
    for t in CASES:
        b = t.encode("utf-8")
        ids = llm.tokenize(b, add_bos=True, special=True)
        ids_no_bos = llm.tokenize(b, add_bos=False, special=True)
        back = llm.detokenize(ids_no_bos, special=True).decode("utf-8", errors="replace")
        cases.append({"text": t, "ids": ids, "ids_no_bos": ids_no_bos, "decoded": back})
        print(repr(t), ids_no_bos, repr(back))
    import llama_cpp
    (OUT / "expected.json").write_text(json.dumps({
        "source": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}: Llama(vocab_only=True).tokenize(text, "
                  "add_bos, special=True); decoded = detokenize(ids_no_bos, special=True)",
        "cases": cases}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
