#!/usr/bin/env python3
"""llama.cpp's 8-bit-activation products on K-quant rows, as fixtures for qlora's int8 kernels.

llama.cpp decodes a K-quant weight (Q2_K ... Q6_K) by quantizing the activation vector to Q8_K
(one float scale per 256 values, int8 codes: quantize_row_q8_K_ref) and taking integer dot
products with the weight's blocks (ggml_vec_dot_<type>_q8_K). qlora's --int8-activations
kernels for those types (model/linear_kernels.h: quantize_x_q8k, gemv_q4k_i8, ...) must
quantize exactly as llama.cpp does and give its products up to float summation order.

Run with the project's reference environment (llama-cpp-python, see README / issue 11):

    .refenv/bin/python tools/make_q8k_dot_fixtures.py

Writes tests/fixtures/gguf/q8k_dot/:
  manifest.json     cols, rows, tokens, and per type its block bytes per row
  x.f32             tokens x cols float32 activations (token 1 has an all-zero 256-block and a
                    block whose largest magnitude is negative; token 2 an outlier)
  x.q8k             llama.cpp's block_q8_K of each token (per 256: float d, 256 int8, 16 int16 bsums)
  <TYPE>.bin        rows x cols random weights quantized by ggml's own quantizer (ggml_quantize_chunk)
  <TYPE>.dot.f32    tokens x rows: ggml_vec_dot_<type>_q8_K(row, x.q8k[token]) as this CPU's
                    libggml-cpu computes it (its generic C version is checked to agree to 1e-5)
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import gguf
import llama_cpp
from gguf import GGMLQuantizationType as QT

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf" / "q8k_dot"
LIB = Path(llama_cpp.__file__).parent / "lib"
COLS, ROWS, TOKENS = 768, 7, 3
TYPES = ["Q4_K", "IQ4_XS", "Q6_K", "Q5_K", "Q3_K", "Q2_K"]
Q8K_BYTES = 4 + 256 + 32
DOT_NAME = {"Q4_K": "q4_K", "IQ4_XS": "iq4_xs", "Q6_K": "q6_K", "Q5_K": "q5_K", "Q3_K": "q3_K", "Q2_K": "q2_K"}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = ctypes.CDLL(str(LIB / "libggml-base.so"))
    cpu = ctypes.CDLL(str(LIB / "libggml-cpu.so"))
    cpu.ggml_cpu_init()  # (the CPU backend's tables, as llama.cpp sets them up)
    rng = np.random.default_rng(20261207)

    x = rng.standard_normal((TOKENS, COLS)).astype(np.float32)
    x[1, 256:512] = 0.0                       # an all-zero super-block: d = 0, codes 0
    x[1, 600] = -9.0                          # largest magnitude negative: its code is +127
    x[2, 17] = 40.0                           # an outlier
    q8k = np.zeros((TOKENS, COLS // 256 * Q8K_BYTES), dtype=np.uint8)
    base.quantize_row_q8_K_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    for t in range(TOKENS):
        row = np.ascontiguousarray(x[t])
        base.quantize_row_q8_K_ref(row.ctypes.data, q8k[t].ctypes.data, COLS)
    (OUT / "x.f32").write_bytes(x.astype("<f4").tobytes())
    (OUT / "x.q8k").write_bytes(q8k.tobytes())

    base.ggml_quantize_chunk.restype = ctypes.c_size_t
    base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    manifest = {"cols": COLS, "rows": ROWS, "tokens": TOKENS, "types": {}}
    for name in TYPES:
        qt = QT[name]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        w = (rng.standard_normal((ROWS, COLS)) * 0.05).astype(np.float32)
        blocks = np.zeros((ROWS, COLS // block * size), dtype=np.uint8)
        got = base.ggml_quantize_chunk(int(qt), w.ctypes.data, blocks.ctypes.data, 0, ROWS, COLS, None)
        assert got == blocks.size, (name, got, blocks.size)
        dots = np.zeros((TOKENS, ROWS), dtype=np.float32)
        for variant, out in (("", dots), ("_generic", np.zeros_like(dots))):
            fn = getattr(cpu, f"ggml_vec_dot_{DOT_NAME[name]}_q8_K{variant}")
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            s = np.zeros(1, dtype=np.float32)
            for t in range(TOKENS):
                for r in range(ROWS):
                    fn(COLS, s.ctypes.data, 0, blocks[r].ctypes.data, 0, q8k[t].ctypes.data, 0, 1)
                    out[t, r] = s[0]
            if variant:
                assert np.allclose(out, dots, rtol=1e-5, atol=1e-5), (name, out, dots)
        (OUT / f"{name}.bin").write_bytes(blocks.tobytes())
        (OUT / f"{name}.dot.f32").write_bytes(dots.astype("<f4").tobytes())
        manifest["types"][name] = {"row_bytes": int(blocks.shape[1])}
        print(name, "dots", dots[0, :3])
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
