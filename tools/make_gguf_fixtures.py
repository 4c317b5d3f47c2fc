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
      The i-quants (IQ1_S ... IQ4_XS), the ternary TQ1_0 / TQ2_0, MXFP4 and NVFP4 are
      also checked against ggml's own C dequantizers (dequantize_row_* in llama-cpp-python's
      libggml-base.so, called through ctypes): both references must agree bit for bit.
      Q1_0 and Q2_0, which gguf-py 0.19 cannot dequantize, take ggml's alone.
  synthetic_v3.gguf + synthetic_v3.json + synthetic_v3.f32
      a GGUF v3 file written by gguf.GGUFWriter with every metadata value type
      (including nested arrays), a custom general.alignment of 64, and one tensor per
      GGML type; the JSON lists what a reader must find; the .f32 file holds every
      tensor's expected float32 values, concatenated in tensor order.
  tiny_llama.gguf + tiny_llama.json + tiny_llama_hf.f32
      a 1-layer llama-architecture model in F32 whose attn_q/attn_k rows were permuted
      with llama.cpp's convert_hf_to_gguf.py `permute`; tiny_llama_hf.f32 holds the
      original Hugging Face q_proj then k_proj weights.
  iq_llama.gguf + iq_llama.json
      a 2-layer llama (hidden 256, so every super-block type fits) whose weights were
      quantized by ggml's own quantizer (ggml_quantize_chunk in llama-cpp-python's libggml,
      with a random importance matrix where a type needs one) to a different type each:
      all nine i-quants, TQ1_0, TQ2_0, NVFP4, MXFP4, Q4_K, Q6_K. The JSON holds a prompt and
      the logits transformers computes from the file (its GGUF loader dequantizes with
      gguf-py) and llama.cpp's logits on the same file (llama-cpp-python; its products
      round activations to 8 bits, so they sit further from the others).
  kq_llama.gguf + kq_llama.json
      the same model with the types qlora keeps as the file's blocks (model/block_row_kernels.h):
      Q2_K, Q3_K, Q5_0, Q5_1, Q5_K, Q6_K, each on at least two Linears (rope-permuted q / k
      among them), a Q5_K embedding and a Q6_K output head; the same two sets of logits.
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


# The i-quants and the newer types: (type name, file id, block size, bytes per block, fp16
# field offsets). Q2_0 (42) is not in gguf-py 0.19's enum; Q1_0 is, without a dequantizer.
NEW_TYPES = [
    ("IQ2_XXS", 16, 256, 66, [0]),
    ("IQ2_XS", 17, 256, 74, [0]),
    ("IQ3_XXS", 18, 256, 98, [0]),
    ("IQ1_S", 19, 256, 50, [0]),
    ("IQ4_NL", 20, 32, 18, [0]),
    ("IQ3_S", 21, 256, 110, [0]),
    ("IQ2_S", 22, 256, 82, [0]),
    ("IQ4_XS", 23, 256, 136, [0]),
    ("IQ1_M", 29, 256, 56, []),   # its fp16 scale is spread over the scale words: below
    ("TQ1_0", 34, 256, 54, [52]),
    ("TQ2_0", 35, 256, 66, [64]),
    ("MXFP4", 39, 32, 17, []),    # E8M0 scale: any byte
    ("NVFP4", 40, 64, 36, []),    # UE4M3 scales: any byte
    ("Q1_0", 41, 128, 18, [0]),
    ("Q2_0", 42, 64, 18, [0]),
]


def ggml_dequant(name: str, raw: np.ndarray, n: int) -> np.ndarray:
    """ggml's C reference dequantize_row_<name>, from llama-cpp-python's libggml-base."""
    import ctypes
    import llama_cpp
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    fn = getattr(lib, f"dequantize_row_{name.lower()}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    src = np.ascontiguousarray(raw).reshape(-1)
    out = np.full(n, -12345.0, dtype=np.float32)
    fn(src.ctypes.data, out.ctypes.data, n)
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (a.view(np.uint32) == b.view(np.uint32))))


def make_dequant_new(rng: np.random.Generator) -> None:
    for name, qid, block_size, type_size, fp16 in NEW_TYPES:
        n_blocks = 16 if block_size <= 64 else (8 if block_size == 128 else 6)
        n = n_blocks * block_size
        raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint32).astype(np.uint8)
        for off in fp16:
            h = random_finite_fp16(rng, n_blocks)
            raw[:, off] = (h & 0xFF).astype(np.uint8)
            raw[:, off + 1] = (h >> 8).astype(np.uint8)
        if name == "IQ1_M":  # the fp16 scale's nibbles are the top nibbles of 4 uint16 words at 48
            h = random_finite_fp16(rng, n_blocks)
            for k in range(4):
                hi = 48 + 2 * k + 1
                raw[:, hi] = (raw[:, hi] & 0x0F) | (((h >> (4 * k)) & 0x0F) << 4).astype(np.uint8)
        ref = ggml_dequant(name, raw, n)
        if name not in ("Q1_0", "Q2_0"):
            py = dequant(raw, QT[name], n)
            assert same_bits(py, ref), f"{name}: gguf-py and ggml disagree"
        (OUT / f"dequant_{name}.bin").write_bytes(raw.tobytes())
        (OUT / f"dequant_{name}.f32").write_bytes(ref.astype("<f4").tobytes())
        print(f"dequant_{name}: {n} elements, {raw.size} bytes (gguf-py and ggml agree)"
              if name not in ("Q1_0", "Q2_0") else f"dequant_{name}: {n} elements, {raw.size} bytes (ggml)")


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


IQ_LLAMA_TYPES = {  # tensor -> type: every type once, the embedding included
    "token_embd.weight": "IQ4_XS",
    "blk.0.attn_q.weight": "IQ2_XXS", "blk.0.attn_k.weight": "IQ2_XS", "blk.0.attn_v.weight": "IQ2_S",
    "blk.0.attn_output.weight": "IQ3_XXS", "blk.0.ffn_gate.weight": "IQ3_S", "blk.0.ffn_up.weight": "IQ1_S",
    "blk.0.ffn_down.weight": "IQ1_M",
    "blk.1.attn_q.weight": "IQ4_NL", "blk.1.attn_k.weight": "TQ1_0", "blk.1.attn_v.weight": "TQ2_0",
    "blk.1.attn_output.weight": "NVFP4", "blk.1.ffn_gate.weight": "MXFP4", "blk.1.ffn_up.weight": "Q4_K",
    "blk.1.ffn_down.weight": "Q6_K",
}


KQ_LLAMA_TYPES = {  # the types qlora keeps as the file's blocks, each at least twice (rope-permuted q/k among them)
    "token_embd.weight": "Q5_K", "output.weight": "Q6_K",
    "blk.0.attn_q.weight": "Q2_K", "blk.0.attn_k.weight": "Q3_K", "blk.0.attn_v.weight": "Q5_0",
    "blk.0.attn_output.weight": "Q5_1", "blk.0.ffn_gate.weight": "Q5_K", "blk.0.ffn_up.weight": "Q6_K",
    "blk.0.ffn_down.weight": "Q3_K",
    "blk.1.attn_q.weight": "Q5_K", "blk.1.attn_k.weight": "Q6_K", "blk.1.attn_v.weight": "Q2_K",
    "blk.1.attn_output.weight": "Q3_K", "blk.1.ffn_gate.weight": "Q2_K", "blk.1.ffn_up.weight": "Q5_0",
    "blk.1.ffn_down.weight": "Q5_1",
}


def ggml_quantize(name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x (rows, cols) float32 quantized row by row by ggml_quantize_chunk; (rows, row bytes) uint8."""
    import ctypes
    import llama_cpp
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    qt = QT[name]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((rows, cols // block * size), dtype=np.uint8)
    imatrix = rng.uniform(0.5, 1.5, size=cols).astype(np.float32)  # as llama-imatrix's mean x^2 would be
    got = lib.ggml_quantize_chunk(int(qt), x.ctypes.data, out.ctypes.data, 0, rows, cols, imatrix.ctypes.data)
    assert got == out.size, (name, got, out.size)
    return out


def make_iq_llama(rng: np.random.Generator, types: dict | None = None, stem: str = "iq_llama") -> None:
    """A 2-layer llama whose tensors ggml's quantizer wrote in `types`, with transformers' and
    llama.cpp's logits on it (stem.gguf, stem.json)."""
    types = types or IQ_LLAMA_TYPES
    hidden, n_head, n_kv, ffn, n_layer, vocab, ctx = 256, 4, 2, 512, 2, 64, 64
    head_dim = hidden // n_head
    path = OUT / f"{stem}.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(n_layer)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_IQ2_XXS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(vocab - 3)]
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(["a a"])  # llama.cpp needs the key; "aa" is a token
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    f32 = lambda *s: (rng.standard_normal(s) * 0.08).astype(np.float32)
    shapes = {"token_embd.weight": (vocab, hidden)}
    for l in range(n_layer):
        shapes.update({f"blk.{l}.attn_q.weight": (hidden, hidden), f"blk.{l}.attn_k.weight": (n_kv * head_dim, hidden),
                       f"blk.{l}.attn_v.weight": (n_kv * head_dim, hidden), f"blk.{l}.attn_output.weight": (hidden, hidden),
                       f"blk.{l}.ffn_gate.weight": (ffn, hidden), f"blk.{l}.ffn_up.weight": (ffn, hidden),
                       f"blk.{l}.ffn_down.weight": (hidden, ffn)})
    for name, shape in shapes.items():
        x = f32(*shape) * (12.0 if name == "token_embd.weight" else 1.0)
        w.add_tensor(name, ggml_quantize(types[name], x, rng), raw_dtype=QT[types[name]])
        if name.endswith("attn_v.weight"):
            l = name.split(".")[1]
            w.add_tensor(f"blk.{l}.attn_norm.weight", (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
            w.add_tensor(f"blk.{l}.ffn_norm.weight", (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    w.add_tensor("output_norm.weight", (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    head = rng.standard_normal((vocab, hidden)) * 0.1
    if "output.weight" in types:
        w.add_tensor("output.weight", ggml_quantize(types["output.weight"], head.astype(np.float32), rng),
                     raw_dtype=QT[types["output.weight"]])
    else:
        w.add_tensor("output.weight", head.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    prompt = [int(t) for t in rng.integers(3, vocab, size=12)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(OUT), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        hf = model(torch.tensor([prompt])).logits[0].numpy().astype(np.float32)

    import llama_cpp
    llm = llama_cpp.Llama(str(path), n_ctx=ctx, n_threads=1, logits_all=True, verbose=False)
    llm.eval(prompt)
    lc = np.array(llm.scores[: len(prompt)], dtype=np.float32)
    diff = float(np.abs(lc - hf).max())
    print(f"{path.name}: {path.stat().st_size} bytes; llama.cpp vs transformers max |diff| {diff:.3g} "
          f"(largest |logit| {float(np.abs(hf).max()):.3g}), top-1 agree "
          f"{int((lc.argmax(-1) == hf.argmax(-1)).sum())}/{len(prompt)}")
    out = {"types": types, "prompt": prompt, "vocab": vocab,
           "transformers_logits": [[float(v) for v in row] for row in hf],
           "llama_cpp_logits": [[float(v) for v in row] for row in lc],
           "llama_cpp_vs_transformers_max_abs": diff}
    (OUT / f"{stem}.json").write_text(json.dumps(out) + "\n")


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
    make_dequant_new(np.random.default_rng(SEED + 1))  # its own stream: the files above stay as they were
    make_iq_llama(np.random.default_rng(SEED + 2))
    make_iq_llama(np.random.default_rng(SEED + 3), KQ_LLAMA_TYPES, "kq_llama")
    if not args.skip_smollm2:
        make_smollm2()


if __name__ == "__main__":
    main()
