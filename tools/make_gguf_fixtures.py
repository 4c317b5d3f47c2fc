#!/usr/bin/env python3
"""Reference fixtures for the GGUF reader (src/formats/gguf.*, src/formats/ggml_types.*).

Run with the project's reference environment:

    .refenv/bin/pip install gguf==0.19.0 transformers     # once
    .refenv/bin/python tools/make_gguf_fixtures.py [--skip-smollm2]

Writes into tests/fixtures/gguf/:

  dequant_<TYPE>.bin / dequant_<TYPE>.f32
      random blocks of every supported GGML type (fp16 scale fields set to random
      finite values, every other byte random) and their float32 dequantization by
      gguf-py's numpy reference (gguf.quants.dequantize).
  synthetic_v3.gguf + synthetic_v3.json + synthetic_v3.f32
      a GGUF v3 file written by gguf.GGUFWriter with every metadata value type
      (including nested arrays), a custom general.alignment of 64, and one tensor per
      GGML type; the JSON lists what a reader must find; the .f32 file holds every
      tensor's expected float32 values, concatenated in tensor order.
  tiny_llama.gguf + tiny_llama.json + tiny_llama_hf.f32
      a 1-layer llama-architecture model in F32 whose attn_q/attn_k rows were permuted
      with llama.cpp's convert_hf_to_gguf.py `permute`; tiny_llama_hf.f32 holds the
      original Hugging Face q_proj then k_proj weights.
  smollm2_reference.json
      hyper-parameters, and shape / checksums / slices of a few tensors, of
      models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_model.sh) as loaded by
      transformers' GGUF loader (AutoModelForCausalLM.from_pretrained(..., gguf_file=...)),
      which dequantizes to float32 and undoes llama.cpp's q/k permutation.

Checksum of a float32 tensor (flattened row-major, as in the C++ test):
  bits_checksum = sum_i uint64(bits(x_i)) * uint64(i * 2654435761 + 1)   (mod 2**64)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
SEED = 20240521

# Byte offsets of the fp16 scale fields inside one block, per type.
FP16_FIELDS = {
    QT.Q4_0: [0],
    QT.Q4_1: [0, 2],
    QT.Q5_0: [0],
    QT.Q5_1: [0, 2],
    QT.Q8_0: [0],
    QT.Q2_K: [80, 82],
    QT.Q3_K: [108],
    QT.Q4_K: [0, 2],
    QT.Q5_K: [0, 2],
    QT.Q6_K: [208],
}
QUANT_TYPES = list(FP16_FIELDS)
PLAIN_TYPES = [QT.F32, QT.F16, QT.BF16]


def random_finite_fp16(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random fp16 bit patterns that are finite (any sign, subnormals included)."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    while True:
        bad = (bits & 0x7C00) == 0x7C00
        if not bad.any():
            return bits
        bits[bad] = rng.integers(0, 1 << 16, size=int(bad.sum()), dtype=np.uint32).astype(np.uint16)


def random_blocks(rng: np.random.Generator, qtype: QT, n_blocks: int) -> np.ndarray:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint32).astype(np.uint8)
    for off in FP16_FIELDS[qtype]:
        h = random_finite_fp16(rng, n_blocks)
        raw[:, off] = (h & 0xFF).astype(np.uint8)
        raw[:, off + 1] = (h >> 8).astype(np.uint8)
    return raw


def random_plain(rng: np.random.Generator, qtype: QT, n: int) -> np.ndarray:
    """Raw bytes of n elements with arbitrary bit patterns (NaN/inf included)."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    return rng.integers(0, 256, size=(n * size,), dtype=np.uint32).astype(np.uint8)


def dequant(raw: np.ndarray, qtype: QT, n: int) -> np.ndarray:
    flat = np.ascontiguousarray(raw).reshape(-1)
    if qtype == QT.F32:
        return flat.view(np.float32).copy()
    if qtype == QT.F16:
        return flat.view(np.float16).astype(np.float32)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    out = gguf.quants.dequantize(flat.reshape(-1, type_size), qtype)
    out = np.asarray(out, dtype=np.float32).reshape(-1)
    assert out.size == n, (qtype, out.size, n)
    return out


def bits_checksum(x: np.ndarray) -> int:
    bits = np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    idx = np.arange(bits.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        w = idx * np.uint64(2654435761) + np.uint64(1)
        return int(np.sum(bits * w, dtype=np.uint64))


# ---------------------------------------------------------------------------------------
def make_dequant(rng: np.random.Generator) -> None:
    for qtype in PLAIN_TYPES + QUANT_TYPES:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if qtype in PLAIN_TYPES:
            n = 512
            raw = random_plain(rng, qtype, n)
        else:
            n_blocks = 16 if block_size == 32 else 6
            n = n_blocks * block_size
            raw = random_blocks(rng, qtype, n_blocks)
        ref = dequant(raw, qtype, n)
        (OUT / f"dequant_{qtype.name}.bin").write_bytes(raw.tobytes())
        (OUT / f"dequant_{qtype.name}.f32").write_bytes(ref.astype("<f4").tobytes())
        print(f"dequant_{qtype.name}: {n} elements, {raw.size} bytes")


# ---------------------------------------------------------------------------------------
def make_synthetic(rng: np.random.Generator) -> None:
    path = OUT / "synthetic_v3.gguf"
    w = gguf.GGUFWriter(str(path), arch="testarch")  # writes general.architecture
    w.add_custom_alignment(64)
    V = gguf.GGUFValueType
    meta = [
        # key, gguf type, value (as the C++ test expects to read it)
        ("test.u8", V.UINT8, 200),
        ("test.i8", V.INT8, -100),
        ("test.u16", V.UINT16, 60000),
        ("test.i16", V.INT16, -30000),
        ("test.u32", V.UINT32, 4000000000),
        ("test.i32", V.INT32, -2000000000),
        ("test.u64", V.UINT64, 18000000000000000000),
        ("test.i64", V.INT64, -9000000000000000000),
        ("test.f32", V.FLOAT32, 0.15625),
        ("test.f64", V.FLOAT64, -1.0e300),
        ("test.bool_true", V.BOOL, True),
        ("test.bool_false", V.BOOL, False),
        ("test.string", V.STRING, "héllo, wörld ✓"),
        ("test.empty_string", V.STRING, ""),
    ]
    for key, vt, val in meta:
        w.add_key_value(key, val, vt)
    arrays = [
        ("test.arr_u8", V.UINT8, [1, 2, 255]),
        ("test.arr_i32", V.INT32, [-1, 0, 7, 2147483647]),
        ("test.arr_u64", V.UINT64, [0, 1 << 40]),
        ("test.arr_f32", V.FLOAT32, [0.5, -2.25, 1e-3]),
        ("test.arr_f64", V.FLOAT64, [3.0, -0.125]),
        ("test.arr_bool", V.BOOL, [True, False, True]),
        ("test.arr_str", V.STRING, ["a", "", "ünïcode", "with space"]),
    ]
    for key, et, val in arrays:
        w.add_key_value(key, val, V.ARRAY, sub_type=et)
    nested = [[1, 2], [3, 4, 5]]
    w.add_key_value("test.nested", nested, V.ARRAY)  # array of arrays of int32
    nested_str = [["x", "yz"], ["w"]]
    w.add_key_value("test.nested_str", nested_str, V.ARRAY)

    tensors = []
    expected = []
    # shape is given in PyTorch (row-major) order; GGUF stores it reversed.
    specs = [
        ("plain.f32_3d", QT.F32, (3, 4, 5)),
        ("plain.f32_4d", QT.F32, (2, 1, 3, 2)),
        ("plain.f16", QT.F16, (7, 3)),
        ("plain.bf16", QT.BF16, (5,)),
    ]
    for qt in QUANT_TYPES:
        bs = gguf.GGML_QUANT_SIZES[qt][0]
        specs.append((f"quant.{qt.name.lower()}", qt, (3, 2 * bs)))
    for name, qt, shape in specs:
        n = int(np.prod(shape))
        if qt == QT.F32:
            vals = rng.standard_normal(n).astype(np.float32)
            raw = vals.view(np.uint8)
        elif qt in (QT.F16, QT.BF16):
            vals = rng.standard_normal(n).astype(np.float32)
            if qt == QT.F16:
                raw = vals.astype(np.float16).view(np.uint8)
            else:
                raw = (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            bs, ts = gguf.GGML_QUANT_SIZES[qt]
            raw = random_blocks(rng, qt, n // bs).reshape(-1)
        ref = dequant(raw, qt, n)
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        byte_shape = (*shape[:-1], shape[-1] // bs * ts)
        w.add_tensor(name, raw.reshape(byte_shape), raw_dtype=qt)
        tensors.append({"name": name, "type": qt.name, "type_id": int(qt), "dims": list(reversed(shape)),
                        "nbytes": int(raw.size)})
        expected.append(ref)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Offsets as gguf-py's reader sees them (relative to the data section).
    r = gguf.GGUFReader(str(path))
    data_start = min(t.data_offset for t in r.tensors)
    by_name = {t.name: t for t in r.tensors}
    for t in tensors:
        t["offset"] = int(by_name[t["name"]].data_offset - data_start)
    manifest = {
        "version": 3,
        "alignment": 64,
        "data_start": int(data_start),
        "architecture": "testarch",
        "scalars": [{"key": k, "type": vt.name, "value": v} for k, vt, v in meta],
        "arrays": [{"key": k, "elem_type": et.name, "value": v} for k, et, v in arrays],
        "nested": {"test.nested": nested, "test.nested_str": nested_str},
        "n_metadata": len(r.fields) - 3,  # GGUFReader adds GGUF.version/tensor_count/kv_count
        "tensors": tensors,
    }
    (OUT / "synthetic_v3.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    (OUT / "synthetic_v3.f32").write_bytes(np.concatenate(expected).astype("<f4").tobytes())
    print(f"synthetic_v3.gguf: {path.stat().st_size} bytes, {len(tensors)} tensors")


# ---------------------------------------------------------------------------------------
def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim apart from numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def make_tiny_llama(rng: np.random.Generator) -> None:
    hidden, n_head, n_kv, ffn, vocab, ctx = 16, 4, 2, 24, 6, 128
    head_dim = hidden // n_head
    path = OUT / "tiny_llama.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(1)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab"]
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3, 1, 1, 1])
    w.add_token_merges(["a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template("{{ messages }}")

    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    q_hf = f32(hidden, hidden)
    k_hf = f32(n_kv * head_dim, hidden)
    w.add_tensor("token_embd.weight", f32(vocab, hidden))
    w.add_tensor("blk.0.attn_norm.weight", f32(hidden))
    w.add_tensor("blk.0.attn_q.weight", llama_cpp_permute(q_hf, n_head, n_head))
    w.add_tensor("blk.0.attn_k.weight", llama_cpp_permute(k_hf, n_head, n_kv))
    w.add_tensor("blk.0.attn_v.weight", f32(n_kv * head_dim, hidden))
    w.add_tensor("blk.0.attn_output.weight", f32(hidden, hidden))
    w.add_tensor("blk.0.ffn_norm.weight", f32(hidden))
    w.add_tensor("blk.0.ffn_gate.weight", f32(ffn, hidden))
    w.add_tensor("blk.0.ffn_up.weight", f32(ffn, hidden))
    w.add_tensor("blk.0.ffn_down.weight", f32(hidden, ffn))
    w.add_tensor("output_norm.weight", f32(hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (OUT / "tiny_llama_hf.f32").write_bytes(np.concatenate([q_hf.ravel(), k_hf.ravel()]).astype("<f4").tobytes())
    manifest = {"hidden_size": hidden, "num_heads": n_head, "num_kv_heads": n_kv, "intermediate_size": ffn,
                "vocab_size": vocab, "context_length": ctx, "head_dim": head_dim, "rope_theta": 500000.0,
                "rms_norm_eps": float(np.float32(1e-6)), "tokens": tokens}
    (OUT / "tiny_llama.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"tiny_llama.gguf: {path.stat().st_size} bytes")


# ---------------------------------------------------------------------------------------
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_TENSORS = [
    # (Hugging Face name, GGUF name)
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
    ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"),
    ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight"),
    ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
    ("model.layers.29.self_attn.q_proj.weight", "blk.29.attn_q.weight"),
    ("model.layers.29.mlp.down_proj.weight", "blk.29.ffn_down.weight"),
    ("model.norm.weight", "output_norm.weight"),
]
SLICE_ROWS = [0, 1, 2, 31, 32, 33, 63, 64, 65]
SLICE_COLS = 8


def make_smollm2() -> None:
    model_dir = ROOT / "models"
    path = model_dir / SMOL_FILE
    if not path.exists():
        sys.exit(f"{path} missing: run scripts/fetch_model.sh first (or pass --skip-smollm2)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=SMOL_FILE, dtype=torch.float32)
    cfg = model.config
    sd = model.state_dict()
    out = {
        "file": SMOL_FILE,
        "transformers_version": transformers.__version__,
        "gguf_version": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
        "config": {
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "intermediate_size": cfg.intermediate_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "rope_theta": float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]),
            "rms_norm_eps": float(cfg.rms_norm_eps),
            "max_position_embeddings": cfg.max_position_embeddings,
            "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        },
        "tensors": [],
    }
    r = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    out["n_tensors"] = len(r.tensors)
    out["tensor_types"] = {k: sum(1 for v in types.values() if v == k) for k in sorted(set(types.values()))}
    for hf_name, gguf_name in SMOL_TENSORS:
        x = sd[hf_name].detach().to(torch.float32).numpy()
        assert x.dtype == np.float32
        rows = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        sl = [[float(v) for v in rows[i, :SLICE_COLS]] for i in SLICE_ROWS if i < rows.shape[0]]
        out["tensors"].append({
            "hf_name": hf_name,
            "gguf_name": gguf_name,
            "gguf_type": types[gguf_name],
            "shape": list(x.shape),
            "sum": float(np.sum(x, dtype=np.float64)),
            "bits_checksum": str(bits_checksum(x)),
            "slice_rows": [i for i in SLICE_ROWS if i < rows.shape[0]],
            "slice": sl,
        })
        print(f"{hf_name}: {x.shape} {types[gguf_name]}")
    (OUT / "smollm2_reference.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm2", action="store_true", help="do not regenerate smollm2_reference.json")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    make_dequant(rng)
    make_synthetic(rng)
    make_tiny_llama(rng)
    if not args.skip_smollm2:
        make_smollm2()


if __name__ == "__main__":
    main()
