#!/usr/bin/env python3
"""Fixture for the GGUF writer's quantizers (src/formats/gguf_writer.cpp): float32 inputs and
the Q8_0 / Q4_0 / F16 / BF16 bytes that gguf-py (llama.cpp's gguf package, whose numpy
quantizers mirror ggml's quantize_row_*_ref) makes of them.

    .refenv/bin/python tools/make_gguf_quant_fixtures.py   # writes tests/fixtures/gguf/writer_quants.safetensors
"""
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T, quants
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf" / "writer_quants.safetensors"


def main():
    rng = np.random.default_rng(7)
    rows = [
        rng.standard_normal(256).astype(np.float32),
        (rng.standard_normal(256) * 1e-3).astype(np.float32),
        np.zeros(64, np.float32),  # all-zero blocks: d = 0
        np.tile(np.array([1.0, -1.0, 0.5, -0.5], np.float32), 16),  # ties at .5 after scaling
        np.concatenate([np.full(31, 0.1, np.float32), [-8.0]]).astype(np.float32),  # negative max
        (rng.standard_normal(96) * 300).astype(np.float32),
    ]
    x = np.concatenate(rows).astype(np.float32)
    assert x.size % 32 == 0
    t = {"x": x}
    for name, q in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("bf16", T.BF16)):
        t[name] = np.frombuffer(quants.quantize(x.reshape(1, -1), q).tobytes(), np.uint8).copy()
    t["f16"] = np.frombuffer(x.astype(np.float16).tobytes(), np.uint8).copy()
    save_file(t, str(OUT), metadata={"made_by": "tools/make_gguf_quant_fixtures.py (gguf-py)"})
    print(OUT, x.size, "values")


if __name__ == "__main__":
    main()
