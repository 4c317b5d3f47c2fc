"""ggml's CPU GELU as llama.cpp runs it (GGML_GELU_FP16): the input rounded to float16, the
tanh-GELU of that read from a float16 table, 0 below -10 and x above 10. Gemma's MLPs (and
Gemma 4's per-layer-input gates) go through it, so llama.cpp is only float16-exact there;
swapping transformers' tanh-GELU modules for this one gives the reference llama.cpp should meet
at float32 precision (tools/make_family_fixtures.py, tools/check_family_merges.py)."""
import copy

import torch


class GgmlGeluFp16(torch.nn.Module):
    def forward(self, x):
        h = x.half().float()
        y = torch.nn.functional.gelu(h, approximate="tanh").half().to(x.dtype)
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))


def with_ggml_gelu(model):
    """A copy of `model` whose tanh-GELU activation modules are GgmlGeluFp16."""
    m = copy.deepcopy(model)
    n = 0
    for mod in m.modules():
        for name, child in list(mod.named_children()):
            if "GELU" in type(child).__name__ and "Tanh" in type(child).__name__:
                setattr(mod, name, GgmlGeluFp16())
                n += 1
    if n == 0:
        raise SystemExit("with_ggml_gelu: the model has no tanh-GELU modules")
    return m
