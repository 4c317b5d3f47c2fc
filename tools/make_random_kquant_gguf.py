#!/usr/bin/env python3
"""A random-weight llama GGUF whose rows are whole 256-value super-blocks, quantized by
llama.cpp's own quantizer (llama_model_quantize in llama-cpp-python) to the K-quant mixtures
people download (Q2_K, Q3_K_M, Q5_K_M, Q6_K, Q4_K_M; Q5_0, Q5_1 on request): speed and memory measurements of the
types those files hold (bench/kquant_decode.sh). The weights are random, so only tokens/s and
bytes mean anything. SmolLM2's tokenizer (models/SmolLM2-135M-Instruct.Q4_1.gguf) is copied in.

    .refenv/bin/python tools/make_random_kquant_gguf.py OUT_DIR [--hidden 1024 --layers 8 --ffn 2816]

Writes OUT_DIR/random.f16.gguf and OUT_DIR/random.<TYPE>.gguf for each type.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import gguf

ROOT = Path(__file__).resolve().parent.parent
FTYPES = {"Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}  # llama.h's LLAMA_FTYPE_MOSTLY_*


def copy_tokenizer(src: Path, w: gguf.GGUFWriter) -> int:
    r = gguf.GGUFReader(str(src))
    f = r.fields
    def strings(key):
        fld = f[key]
        return [bytes(fld.parts[i]).decode("utf-8") for i in fld.data]
    def ints(key):
        fld = f[key]
        return [int(fld.parts[i][0]) for i in fld.data]
    def scalar(key):
        fld = f[key]
        return int(fld.parts[fld.data[0]][0])
    def string(key):
        fld = f[key]
        return bytes(fld.parts[fld.data[0]]).decode("utf-8")
    tokens = strings("tokenizer.ggml.tokens")
    w.add_tokenizer_model(string("tokenizer.ggml.model"))
    w.add_tokenizer_pre(string("tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_types(ints("tokenizer.ggml.token_type"))
    w.add_token_merges(strings("tokenizer.ggml.merges"))
    w.add_bos_token_id(scalar("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(scalar("tokenizer.ggml.eos_token_id"))
    return len(tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--types", default="Q2_K,Q3_K_M,Q4_K_M,Q5_K_M,Q6_K")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    f16 = a.out / "random.f16.gguf"
    w = gguf.GGUFWriter(str(f16), arch="llama")
    vocab = copy_tokenizer(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", w)
    hd = a.hidden // a.heads
    w.add_block_count(a.layers)
    w.add_context_length(2048)
    w.add_embedding_length(a.hidden)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(1)
    rand = lambda *s: (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float16)
    w.add_tensor("token_embd.weight", rand(vocab, a.hidden))
    for l in range(a.layers):
        w.add_tensor(f"blk.{l}.attn_norm.weight", np.ones(a.hidden, dtype=np.float32))
        w.add_tensor(f"blk.{l}.attn_q.weight", rand(a.hidden, a.hidden))
        w.add_tensor(f"blk.{l}.attn_k.weight", rand(a.kv_heads * hd, a.hidden))
        w.add_tensor(f"blk.{l}.attn_v.weight", rand(a.kv_heads * hd, a.hidden))
        w.add_tensor(f"blk.{l}.attn_output.weight", rand(a.hidden, a.hidden))
        w.add_tensor(f"blk.{l}.ffn_norm.weight", np.ones(a.hidden, dtype=np.float32))
        w.add_tensor(f"blk.{l}.ffn_gate.weight", rand(a.ffn, a.hidden))
        w.add_tensor(f"blk.{l}.ffn_up.weight", rand(a.ffn, a.hidden))
        w.add_tensor(f"blk.{l}.ffn_down.weight", rand(a.hidden, a.ffn))
    w.add_tensor("output_norm.weight", np.ones(a.hidden, dtype=np.float32))
    w.add_tensor("output.weight", rand(vocab, a.hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{f16}: {f16.stat().st_size} bytes")

    import llama_cpp
    for t in a.types.split(","):
        dst = a.out / f"random.{t}.gguf"
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = FTYPES[t]
        p.nthread = 2
        rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(dst).encode(), p)
        assert rc == 0, (t, rc)
        r = gguf.GGUFReader(str(dst))
        kinds: dict[str, int] = {}
        for ti in r.tensors:
            kinds[ti.tensor_type.name] = kinds.get(ti.tensor_type.name, 0) + int(ti.n_bytes)
        print(f"{dst}: {dst.stat().st_size} bytes; " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(kinds.items())))


if __name__ == "__main__":
    main()
