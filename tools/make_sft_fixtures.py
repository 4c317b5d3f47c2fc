#!/usr/bin/env python3
"""Reference tokens and loss masks of SFT examples for tests/train/test_sft_dataset.cpp.

Writes tests/fixtures/data/sft_reference.jsonl (the records, one per line) and
tests/fixtures/data/sft_reference.json:

  {"records": "sft_reference.jsonl",
   "tokenizers": {NAME: {"source", "examples": [{"line", "tokens", "mask"}]}}}

computed with the reference libraries the same documented way src/train/sft_dataset.cpp does it:

  alpaca: prefix (what add_special_tokens adds in front: BOS for SentencePiece-style, nothing for
          SmolLM2) + tokens(prompt) + tokens(output) + [eos]; the prompt is QLoRA's
          ALPACA_PROMPT_DICT (qlora.py), each piece tokenized alone with add_special_tokens=False,
          mask 1 on output tokens and eos.
  chat:   transformers' apply_chat_template(tokenize=False) with the chat template of
          models/SmolLM2-135M-Instruct.Q4_1.gguf; the response of assistant message i is
          render(messages[:i+1]) minus render(messages[:i], add_generation_prompt=True); pieces
          tokenized alone (add_special_tokens=False) and concatenated; mask 1 on responses.
  mask[0] is always 0 (nothing predicts the first token).

Tokenizers: "smollm2" = transformers AutoTokenizer on models/smollm2-hf (tokenizer.json,
byte-level BPE; gitignored, produced from the GGUF model); "sp_llama2" = tokenizers'
Tokenizer on tests/fixtures/tokenizer/sp_llama2/tokenizer.json (SentencePiece-style BPE with a
dummy-prefix "▁" per encode call; alpaca records only, it has no chat template).

Usage: .refenv/bin/python tools/make_sft_fixtures.py
"""
import json
import os

import gguf
import tokenizers
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "data")

ALPACA_PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: "
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response: "
    ),
}

RECORDS = [
    {"instruction": "Translate the following sentence into French.", "input": "Where is the nearest restaurant?",
     "output": "Où est le restaurant le plus proche?"},
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue and yellow."},
    {"instruction": "Say hello  twice,\nthen stop.", "output": " hello hello\n"},
    {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "system", "content": "You answer tersely."},
                  {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."},
                  {"role": "user", "content": "And of Italy? 🇮🇹"},
                  {"role": "assistant", "content": "Rome — of course."}]},
    {"messages": [{"role": "user", "content": "Write a haiku about rain."},
                  {"role": "assistant", "content": "Soft rain on the roof\nwhispers to the sleeping town\nmorning comes washed clean"},
                  {"role": "user", "content": "Thanks!"}]},
]


def smollm2_chat_template():
    r = gguf.GGUFReader(os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def alpaca_pieces(rec):
    key = "prompt_input" if rec.get("input", "") else "prompt_no_input"
    return [(ALPACA_PROMPT_DICT[key].format(**{"input": "", **rec}), False), (rec["output"], True)]


def chat_pieces(render, messages):
    pieces, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        with_reply = render(messages[: i + 1], False)
        assert before.startswith(done) and with_reply.startswith(before)
        pieces += [(before[len(done):], False), (with_reply[len(before):], True)]
        done = with_reply
    full = render(messages, False)
    assert full.startswith(done)
    return pieces + [(full[len(done):], False)]


def assemble(encode, pieces, prefix, eos):
    tokens, mask = list(prefix), [0] * len(prefix)
    for text, response in pieces:
        if text:
            ids = encode(text)
            tokens += ids
            mask += [1 if response else 0] * len(ids)
    if eos is not None:
        tokens.append(eos)
        mask.append(1)
    mask[0] = 0
    return {"tokens": tokens, "mask": mask}


def smollm2_examples():
    tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "smollm2-hf"))
    template = smollm2_chat_template()

    def encode(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    def render(msgs, gen):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, chat_template=template)

    with_special = tok("x", add_special_tokens=True)["input_ids"]
    prefix = with_special[: len(with_special) - len(encode("x"))]
    out = []
    for line, rec in enumerate(RECORDS, 1):
        if "messages" in rec:
            ex = assemble(encode, chat_pieces(render, rec["messages"]), [], None)
            # The whole conversation tokenized at once must give the same ids here (SmolLM2's
            # template puts special tokens at every piece boundary); a sanity check of the recipe.
            assert ex["tokens"] == encode(render(rec["messages"], False))
        else:
            ex = assemble(encode, alpaca_pieces(rec), prefix, tok.eos_token_id)
        out.append({"line": line, **ex})
    return out


def sp_llama2_examples():
    tok = tokenizers.Tokenizer.from_file(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "sp_llama2", "tokenizer.json"))

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids

    with_special = tok.encode("x", add_special_tokens=True).ids
    prefix = with_special[: len(with_special) - len(encode("x"))]
    eos = tok.token_to_id("</s>")
    return [{"line": line, **assemble(encode, alpaca_pieces(rec), prefix, eos)}
            for line, rec in enumerate(RECORDS, 1) if "messages" not in rec]


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "sft_reference.jsonl"), "w", encoding="utf-8") as f:
        for rec in RECORDS:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    doc = {
        "records": "sft_reference.jsonl",
        "tokenizers": {
            "smollm2": {"source": "transformers AutoTokenizer(models/smollm2-hf) + GGUF chat template",
                        "examples": smollm2_examples()},
            "sp_llama2": {"source": "tokenizers Tokenizer(tests/fixtures/tokenizer/sp_llama2/tokenizer.json)",
                          "examples": sp_llama2_examples()},
        },
    }
    with open(os.path.join(OUT, "sft_reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
        f.write("\n")
    print("wrote", os.path.join(OUT, "sft_reference.json"))


if __name__ == "__main__":
    main()
