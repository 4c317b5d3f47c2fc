#!/usr/bin/env python3
"""Writes tests/fixtures/safetensors/reference.safetensors with the real `safetensors`
library (torch API), so the C++ reader is tested on a file it did not write itself.
The expected values are simple formulas the C++ test recomputes."""
import os
import torch
from safetensors.torch import save_file

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "safetensors")
os.makedirs(out, exist_ok=True)
t = {
    "f32": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8,
    "bf16": (torch.arange(6, dtype=torch.float32) - 2.5).to(torch.bfloat16).reshape(2, 3),
    "f16": (torch.arange(5, dtype=torch.float32) * 0.25).to(torch.float16),
    "i64": torch.tensor([1, -2, 3], dtype=torch.int64),
    "u8": torch.tensor([[7, 8], [9, 10]], dtype=torch.uint8),
    "scalar": torch.tensor(3.5, dtype=torch.float32),
    "empty": torch.zeros(0, 4, dtype=torch.float32),
}
save_file(t, os.path.join(out, "reference.safetensors"), metadata={"format": "pt", "note": "qlora.cpp fixture"})
print("wrote", os.path.join(out, "reference.safetensors"))
