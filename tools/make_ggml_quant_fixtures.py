#!/usr/bin/env python3
"""Bytes of llama.cpp's own quantizers (libggml's ggml_quantize_chunk, no importance matrix:
the quantize_row_*_ref path `llama-quantize` takes) for Q4_0, Q5_0, Q8_0, Q4_K and Q6_K on
deterministic inputs that tests/formats/test_ggml_quantize.cpp regenerates bit for bit (a
32-bit LCG turned into float32 with exact operations). Writes
tests/fixtures/ggml_quant/reference.json.

    .refenv/bin/python tools/make_ggml_quant_fixtures.py   (needs llama-cpp-python, see setup_refenv.sh)
"""
import ctypes
import glob
import json
import os
from pathlib import Path

import numpy as np
import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
LIB = glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))[0]
ggml = ctypes.CDLL(LIB)
ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_void_p]
ggml.ggml_row_size.restype = ctypes.c_size_t
ggml.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

TYPES = {"Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}


def lcg_uniform(n, seed):
    """u[i] in [0, 1): state = state * 1664525 + 1013904223 (mod 2^32), u = (state >> 8) * 2^-24."""
    out = np.empty(n, dtype=np.float32)
    s = seed & 0xFFFFFFFF
    for i in range(n):
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = np.float32(s >> 8) * np.float32(2.0 ** -24)
    return out


def inputs(kind, n, seed, scale):
    scale = np.float32(scale)
    if kind == "uniform":  # (u - 0.5) * scale
        return (lcg_uniform(n, seed) - np.float32(0.5)) * scale
    if kind == "bell":  # (u1 + u2 + u3 + u4 - 2) * scale, every 97th element times 20
        u = lcg_uniform(4 * n, seed).reshape(n, 4)
        x = (((u[:, 0] + u[:, 1]) + u[:, 2]) + u[:, 3] - np.float32(2.0)) * scale
        x[::97] = x[::97] * np.float32(20.0)
        return x
    raise ValueError(kind)


def special(block):
    """Blocks (of `block` elements) that exercise the edge cases, back to back."""
    u = lcg_uniform(block, 7) - np.float32(0.5)
    parts = [np.zeros(block, np.float32),                        # all zero
             np.full(block, np.float32(0.25)),                   # constant
             u * np.float32(1e-30),                              # tiny (subnormal scales)
             np.where(np.arange(block) % 2 == 0, np.float32(1), np.float32(-1)).astype(np.float32) * np.float32(0.03),
             u * np.float32(0.01),                               # small, with one outlier below
             -np.abs(u) * np.float32(3.0)]                       # all negative
    parts[4] = parts[4].copy()
    parts[4][5] = np.float32(1000.0)
    return np.concatenate(parts)


CASES = [("uniform", 4, 512, 11, 0.1), ("bell", 8, 768, 23, 0.05), ("bell", 3, 256, 5, 3.0)]


def quantize(tname, x, rows, cols):
    t = TYPES[tname]
    size = ggml.ggml_row_size(t, cols) * rows
    dst = (ctypes.c_uint8 * size)()
    src = np.ascontiguousarray(x, dtype=np.float32)
    got = ggml.ggml_quantize_chunk(t, src.ctypes.data, ctypes.addressof(dst), 0, rows, cols, None)
    assert got == size, (got, size)
    return bytes(dst).hex()


def main():
    out = {"generator": "llama-cpp-python %s, libggml-base ggml_quantize_chunk (no imatrix)" % llama_cpp.__version__,
           "cases": []}
    for kind, rows, cols, seed, scale in CASES:
        x = inputs(kind, rows * cols, seed, scale)
        out["cases"].append({"kind": kind, "rows": rows, "cols": cols, "seed": seed, "scale": scale,
                             "bytes": {t: quantize(t, x, rows, cols) for t in TYPES}})
    for block in (256,):
        x = special(block)
        rows, cols = 6, block
        out["cases"].append({"kind": "special", "rows": rows, "cols": cols, "seed": 7, "scale": 0,
                             "bytes": {t: quantize(t, x, rows, cols) for t in TYPES}})
    path = ROOT / "tests" / "fixtures" / "ggml_quant" / "reference.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{path}: {len(out['cases'])} cases x {len(TYPES)} types")


if __name__ == "__main__":
    main()
