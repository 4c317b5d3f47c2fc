#!/usr/bin/env python3
"""Writes tests/fixtures/quant/*.safetensors by running bitsandbytes 0.50.2 itself on CPU.

    .refenv/bin/python tools/make_quant_fixtures.py

What bitsandbytes 0.50.2 runs on CPU (the behaviour the C++ reference reproduces):
  * quantize_4bit: the pure-torch kernel of backends/default/ops.py (no CPU kernel is
    registered). Full blocks scale by x * (1 / max(absmax, 1e-38)), the partial last block
    by x / max(absmax, 1e-38) and stores that clamped absmax; codes come from
    torch.bucketize over float32 midpoints (a value on a midpoint goes to the lower code);
    an odd element count is padded with the code of 0.0 (NF4 nibble 7, FP4 nibble 0).
  * quantize_blockwise (8-bit, used for double quantization): the native
    libbitsandbytes_cpu kernel, which does NOT pick the nearest code: it maps
    v = clamp(x * (1/absmax), -1, 1) to i = trunc(fma(65535, (v + 1) * 0.5, 0.5)) and looks
    i up in a 65536-entry table of nearest codes of (2i)/65535 - 1. All-zero blocks get code 0.
  * dequantize_4bit: native kernel or the torch fallback; both compute code * absmax in
    float32 and round to bf16/fp16 once. (The AVX-512 native kernel indexes absmax per
    row, which is wrong when a row is not a multiple of the blocksize, so the fixtures
    dequantize the flat 1-D tensor, whose blocks are the format's definition.) For FP4
    nibble 8 the native *scalar* path returns -0.0 and every other path +0.0; cases
    where bitsandbytes returned -0.0 are flagged in the metadata.
  * double quantization: offset = absmax.mean() (torch's float32 cascade sum; the AVX2
    kernel is used even on AVX-512 CPUs), then quantize_blockwise(absmax - offset, 256)
    with create_dynamic_map(signed=True).

Fixtures (all small; the whole folder stays well under 1 MB):
  blockwise4.safetensors   4-bit cases c<i>.{input,packed,absmax,deq_f32,deq_bf16,deq_f16},
                           nested cases n<i>.{... ,absmax_q,nested_absmax,nested_code,
                           offset,absmax_deq}; metadata "cases" is a JSON list.
  blockwise8.safetensors   8-bit cases e<i>.{input,q,absmax,deq_f32,code}, the two dynamic
                           maps, and torch float32 means of formula-generated vectors.
  linear4bit_state.safetensors   a state_dict of bnb.nn.Linear4bit layers saved the way
                           transformers saves a 4-bit model (nested and not, nf4 and fp4).
  linear4bit_source.safetensors  the unquantized weights of those layers.
"""
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

import bitsandbytes as bnb
import bitsandbytes.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "quant")
f32 = np.float32


def gen(seed):
    g = torch.Generator().manual_seed(seed)
    return g


def randn(n, seed, scale=1.0):
    return torch.randn(n, generator=gen(seed), dtype=torch.float32) * scale


def midpoints(qt):
    code = F.get_4bit_type(qt, device="cpu")
    s = torch.sort(code, stable=True).values
    return ((s[:-1] + s[1:]) / 2).numpy()


def midpoint_block(qt, bs, scale):
    """A block whose values, divided by its absmax (= scale, a power of two), land exactly
    on every midpoint between adjacent codes and on their float neighbours."""
    vals = [scale, -scale]
    for m in midpoints(qt):
        m = f32(m)
        for v in (m, np.nextafter(m, f32(2)), np.nextafter(m, f32(-2))):
            vals.append(float(f32(v) * f32(scale)))
    vals = vals[:bs]
    vals += [0.0] * (bs - len(vals))
    return torch.tensor(vals, dtype=torch.float32)


def div_vs_mul_values(qt, count, seed):
    """Values x and an absmax a for which x * (1/a) and x / a round to different floats on
    opposite sides of (or onto) a midpoint: only the exact bitsandbytes formula gets the
    code right, and it differs between full blocks (multiply) and the tail (divide)."""
    rng = np.random.default_rng(seed)
    mids = midpoints(qt)
    while True:
        a = f32(rng.uniform(1.1, 3.9))
        inv = f32(f32(1) / a)
        found = []
        for m in mids:
            x0 = f32(f32(m) * a)
            x = x0
            for _ in range(8):
                x = np.nextafter(x, f32(-10))
            for _ in range(16):
                pm = f32(x * inv)
                pd = f32(x / a)
                if (pm <= m) != (pd <= m) and abs(x) < a:
                    found.append(float(x))
                x = np.nextafter(x, f32(10))
        if len(found) >= 2:
            return float(a), found[:count]


def block_set(qt, bs, kinds, seed):
    parts = []
    for k, kind in enumerate(kinds):
        s = seed * 100 + k
        if kind == "normal":
            parts.append(randn(bs, s))
        elif kind == "zero":
            parts.append(torch.zeros(bs))
        elif kind == "huge":
            parts.append(randn(bs, s, 1e30))
        elif kind == "tiny":
            parts.append(randn(bs, s, 1e-30))
        elif kind == "near_max":  # 1/absmax is subnormal
            x = randn(bs, s)
            parts.append(x / x.abs().max() * 3e38)
        elif kind == "below_clamp":  # absmax < 1e-38: bnb scales by 1/1e-38 instead
            x = randn(bs, s)
            parts.append(x / x.abs().max() * 4e-39)
        elif kind == "mid":
            parts.append(midpoint_block(qt, bs, 4.0))
        elif kind == "divmul":
            a, xs = div_vs_mul_values(qt, bs - 1, s)
            v = torch.zeros(bs)
            v[0] = a
            v[1:1 + len(xs)] = torch.tensor(xs)
            parts.append(v)
        elif kind == "signs":  # tiny values of both signs around FP4's two zeros
            x = randn(bs, s, 1e-3)
            x[0] = 1.0
            x[1] = 0.0
            x[2] = -0.0
            parts.append(x)
        else:
            raise ValueError(kind)
    return torch.cat(parts) if parts else torch.zeros(0)


def tail(n, seed):
    return randn(n, seed) if n else torch.zeros(0)


def dequant_flat(packed, absmax, n, bs, qt, dtype):
    """bitsandbytes' dequantize_4bit of the flat tensor (see module doc)."""
    st = F.QuantState(absmax=absmax, shape=torch.Size([n]), code=F.get_4bit_type(qt, device="cpu"),
                      blocksize=bs, quant_type=qt, dtype=dtype)
    return F.dequantize_4bit(packed, st).reshape(-1)


def nibbles(packed, n):
    p = packed.reshape(-1)
    return torch.stack([p >> 4, p & 15], 1).reshape(-1)[:n]


def add_4bit_case(tensors, cases, name, x, qt, bs, note, nested=False, with_half=True):
    x = x.contiguous().float()
    n = x.numel()
    packed, st = F.quantize_4bit(x, blocksize=bs, compress_statistics=nested, quant_type=qt)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == ((n + 1) // 2, 1)
    tensors[f"{name}.input"] = x
    tensors[f"{name}.packed"] = packed.reshape(-1).clone()
    if nested:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
        tensors[f"{name}.absmax_q"] = st.absmax.clone()
        tensors[f"{name}.nested_absmax"] = st.state2.absmax.clone()
        tensors[f"{name}.nested_code"] = st.state2.code.clone()
        tensors[f"{name}.offset"] = st.offset.reshape(1).clone()
        tensors[f"{name}.absmax_deq"] = absmax.clone()
        # what the 4-bit step alone produced (the input of double quantization)
        _, plain = F.quantize_4bit(x, blocksize=bs, compress_statistics=False, quant_type=qt)
        tensors[f"{name}.absmax"] = plain.absmax.clone()
    else:
        absmax = st.absmax
        tensors[f"{name}.absmax"] = absmax.clone()
    negzero = False
    dtypes = [("deq_f32", torch.float32)]
    if with_half:
        dtypes += [("deq_bf16", torch.bfloat16), ("deq_f16", torch.float16)]
    for key, dt in dtypes:
        if nested:
            st.dtype = dt
            st.shape = torch.Size([n])
            d = F.dequantize_4bit(packed, st).reshape(-1)
        else:
            d = dequant_flat(packed, absmax, n, bs, qt, dt)
        assert d.dtype == dt and d.numel() == n
        if qt == "fp4":
            z = (nibbles(packed, n) == 8) & (d == 0)
            if bool(torch.signbit(d[z].float()).any()):
                negzero = True
        tensors[f"{name}.{key}"] = d.clone()
    cases.append({"name": name, "quant_type": qt, "blocksize": bs, "n": n, "nested": nested,
                  "half": with_half, "fp4_nibble8_negzero": negzero, "note": note})


def make_blockwise4():
    tensors, cases = {}, []
    i = 0
    for qt in ("nf4", "fp4"):
        specs = [
            # (blocksize, block kinds, tail length, note)
            (32, ["normal", "zero", "mid", "signs", "normal"], 17, "odd n, zero block, midpoints"),
            (64, ["normal", "zero", "huge", "tiny", "mid", "divmul", "near_max", "below_clamp"], 33,
             "extremes, midpoints, x*(1/a) vs x/a, subnormal 1/absmax, absmax under the 1e-38 clamp"),
            (64, ["normal", "normal", "normal"], 0, "exact multiple of the blocksize"),
            (64, [], 1, "a single element"),
            (64, [], 3, "tail only, odd"),
            (128, ["normal", "divmul"], 5, "x*(1/a) vs x/a"),
            (256, ["normal", "mid"], 88, ""),
            (512, ["normal", "zero"], 76, ""),
            (1024, ["normal"], 300, ""),
            (2048, ["normal"], 7, ""),
            (4096, ["normal"], 1, "tail of one element"),
        ]
        for bs, kinds, tl, note in specs:
            x = torch.cat([block_set(qt, bs, kinds, 1000 + i), tail(tl, 2000 + i)])
            add_4bit_case(tensors, cases, f"c{i}", x, qt, bs, note)
            i += 1
        # tails that hit the special paths of the partial block
        x = torch.zeros(64 + 6)  # full zero block (absmax 0) + zero tail (absmax clamped to 1e-38)
        add_4bit_case(tensors, cases, f"c{i}", x, qt, 64, "all zero: full block absmax 0, tail 1e-38")
        i += 1
        a, xs = div_vs_mul_values(qt, 30, 3000 + i)
        x = torch.cat([randn(32, 4000 + i), torch.tensor([a] + xs)])  # tail divides
        add_4bit_case(tensors, cases, f"c{i}", x, qt, 32, "tail uses x / absmax")
        i += 1
        x = torch.cat([randn(64, 5000 + i), midpoint_block(qt, 40, 0.5)[:37]])
        add_4bit_case(tensors, cases, f"c{i}", x, qt, 64, "midpoints in the tail")
        i += 1
    # double quantization
    j = 0
    for qt, bs, n, seed, half in (("nf4", 64, 64 * 6 + 33, 1, True), ("fp4", 64, 64 * 9, 2, True),
                                  ("nf4", 32, 32 * 300 + 11, 3, False), ("fp4", 4096, 4096 + 100, 4, False)):
        x = randn(n, 6000 + seed)
        x[:bs] *= 100  # spread the absmax values
        if n > 2 * bs:
            x[bs:2 * bs] = 0
        add_4bit_case(tensors, cases, f"n{j}", x, qt, bs, "double quantization", nested=True, with_half=half)
        j += 1
    save_file(tensors, os.path.join(OUT, "blockwise4.safetensors"),
              metadata={"format": "pt", "cases": json.dumps(cases), "bitsandbytes": bnb.__version__,
                        "torch": torch.__version__})


def formula_vector(n, salt):
    """Deterministic floats the C++ test regenerates: (u32(i * 2654435761 + salt) as float)
    * 2^-30, all in float32."""
    i = np.arange(n, dtype=np.uint64)
    u = ((i * np.uint64(2654435761) + np.uint64(salt)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return torch.from_numpy(u.astype(np.float32) * f32(2.0 ** -30))


MEAN_SIZES = list(range(1, 41)) + [63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 4099, 32767, 32768,
                                   32769, 70001, 262149]
MEAN_THREADS = [1, 2, 3, 4]


def make_blockwise8():
    tensors, cases = {}, []
    signed = F.create_dynamic_map(signed=True)
    unsigned = F.create_dynamic_map(signed=False)
    tensors["dynamic_signed"] = signed.clone()
    tensors["dynamic_unsigned"] = unsigned.clone()
    k = 0
    for sg, code in ((True, signed), (False, unsigned)):
        for bs, n in ((256, 700), (64, 300), (4096, 500), (32, 97)):
            x = randn(n, 7000 + k) * torch.exp(randn(n, 8000 + k) * 3)
            if not sg:
                x = x.abs()
            if n > 2 * bs:
                x[bs:2 * bs] = 0  # an all-zero block: absmax 0, every code 0
            x[min(3, n - 1)] = 1e-12
            q, st = F.quantize_blockwise(x, code=code.clone(), blocksize=bs)
            d = F.dequantize_blockwise(q, st)
            tensors[f"e{k}.input"] = x.clone()
            tensors[f"e{k}.q"] = q.clone()
            tensors[f"e{k}.absmax"] = st.absmax.clone()
            tensors[f"e{k}.deq_f32"] = d.clone()
            cases.append({"name": f"e{k}", "signed": sg, "blocksize": bs, "n": n})
            k += 1
    means = {}
    for t in MEAN_THREADS:
        torch.set_num_threads(t)
        means[t] = torch.stack([formula_vector(n, n).mean() for n in MEAN_SIZES])
    torch.set_num_threads(os.cpu_count() or 1)
    for t in MEAN_THREADS:
        tensors[f"mean_threads{t}"] = means[t]
    tensors["mean_sizes"] = torch.tensor(MEAN_SIZES, dtype=torch.int64)
    save_file(tensors, os.path.join(OUT, "blockwise8.safetensors"),
              metadata={"format": "pt", "cases": json.dumps(cases), "bitsandbytes": bnb.__version__,
                        "torch": torch.__version__,
                        "mean_formula": "x[i] = float(u32(i*2654435761 + n)) * 2^-30, salt = n"})


class Block(torch.nn.Module):
    """A container of Linear4bit layers (like a transformer block's attention/MLP)."""


def make_linear4bit():
    """A state_dict saved as transformers saves a bitsandbytes 4-bit model."""
    layers = [
        # name, out, in, quant_type, nested, blocksize, weight dtype
        ("q_proj", 32, 48, "nf4", True, 64, torch.float32),
        ("k_proj", 9, 31, "fp4", False, 128, torch.float32),
        ("v_proj", 40, 72, "nf4", True, 32, torch.bfloat16),
        ("o_proj", 16, 64, "fp4", True, 64, torch.float16),
        ("up_proj", 64, 300, "nf4", True, 64, torch.bfloat16),
        ("down_proj", 12, 20, "nf4", False, 64, torch.float32),
    ]
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Block()])
    blk = model.layers[0]
    source = {}
    for li, (name, out_f, in_f, qt, nested, bs, dt) in enumerate(layers):
        w = (torch.randn(out_f, in_f, generator=gen(9000 + li)) * 0.05).to(dt)
        source[f"model.layers.0.{name}.weight"] = w.clone()
        lin = bnb.nn.Linear4bit(in_f, out_f, bias=(name == "o_proj"), compress_statistics=nested,
                                quant_type=qt, compute_dtype=dt, quant_storage=torch.uint8)
        lin.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=nested, quant_type=qt,
                                       blocksize=bs, quant_storage=torch.uint8)
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(torch.randn(out_f, generator=gen(9500)).to(dt), requires_grad=False)
            source[f"model.layers.0.{name}.bias"] = lin.bias.data.clone()
        lin = lin.to("cpu")  # quantizes
        assert lin.weight.bnb_quantized
        setattr(blk, name, lin)
    model.norm = torch.nn.LayerNorm(8)
    sd = {"model." + k if not k.startswith("model.") else k: v for k, v in model.state_dict().items()}
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    save_file(sd, os.path.join(OUT, "linear4bit_state.safetensors"), metadata={"format": "pt"})
    # the float weights and, for each layer, bitsandbytes' dequantization of the saved state
    for li, (name, out_f, in_f, qt, nested, bs, dt) in enumerate(layers):
        lin = getattr(blk, name)
        # Dequantize the flat tensor: bnb's AVX-512 kernel gets 2-D shapes whose rows are
        # not a multiple of the blocksize wrong (see the module doc).
        st = F.QuantState.from_dict({k: v.clone() for k, v in lin.weight.quant_state.as_dict(packed=True).items()},
                                    device=torch.device("cpu"))
        st.shape = torch.Size([out_f * in_f])
        d = F.dequantize_4bit(lin.weight.data, st).reshape(out_f, in_f)
        assert d.dtype == dt
        if qt == "fp4":
            z = (nibbles(lin.weight.data, out_f * in_f) == 8) & (d.reshape(-1) == 0)
            assert not bool(torch.signbit(d.reshape(-1)[z].float()).any()), "FP4 -0.0 path; pick another shape"
        source[f"model.layers.0.{name}.weight.dequantized"] = d.contiguous().clone()
    save_file(source, os.path.join(OUT, "linear4bit_source.safetensors"),
              metadata={"format": "pt", "layers": json.dumps(
                  [{"name": f"model.layers.0.{n}.weight", "quant_type": q, "nested": ne, "blocksize": b,
                    "dtype": str(d).replace("torch.", ""), "shape": [o, i]} for n, o, i, q, ne, b, d in layers])})


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    make_blockwise4()
    make_blockwise8()
    make_linear4bit()
    total = 0
    for f in sorted(os.listdir(OUT)):
        sz = os.path.getsize(os.path.join(OUT, f))
        total += sz
        print(f"{f}: {sz} bytes")
    print(f"total {total} bytes")
    assert total < 1_000_000, "fixtures must stay under 1 MB"


if __name__ == "__main__":
    main()
