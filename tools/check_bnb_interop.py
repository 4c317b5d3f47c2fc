#!/usr/bin/env python3
"""Interoperability check between qlora.cpp's 4-bit checkpoints and bitsandbytes/transformers
(issue 3: pre-quantized 4-bit checkpoints load without re-quantizing, both ways).

Run from the repository root, with the reference environment and a built CLI:

    OMP_WAIT_POLICY=passive .refenv/bin/python tools/check_bnb_interop.py [--qlora build/qlora]

What it does (everything it writes lives under models/, which git ignores):

  a) builds a full-precision Hugging Face model directory from the GGUF with transformers
     (from_pretrained(models/, gguf_file=..., dtype=float32) + its tokenizer, save_pretrained)
     into models/smollm2-hf/ (skipped when that directory exists; --rebuild-hf redoes it);
  b) qlora -> transformers: `qlora quantize` that directory to
        models/smollm2-hf-nf4-dq  (--quant nf4 --double-quant --compute-dtype fp32)
        models/smollm2-hf-fp4     (--quant fp4 --compute-dtype fp32)
        models/smollm2-hf-nf4     (--quant nf4 --compute-dtype fp32; the byte twin of d)
  c) loads each with AutoModelForCausalLM.from_pretrained(dir, device_map="cpu"): transformers
     must take it as a bitsandbytes 4-bit model (no missing/unexpected keys, every Linear a
     bnb.nn.Linear4bit with the right quant_type/blocksize/nesting, lm_head kept dense and
     tied), and compares it with transformers quantizing the full-precision directory itself
     (BitsAndBytesConfig(load_in_4bit=True, ...)): the state dicts (every tensor, bit for bit),
     the files on disk (that model save_pretrained to models/smollm2-hf-bnb-*: tensor names,
     dtypes, shapes and bytes, config.json's quantization_config) and the next-token logits
     on a few prompts;
  d) transformers -> qlora: the checkpoint transformers saved for the nf4 model
     (models/smollm2-hf-bnb-nf4) goes through `qlora inspect`, `qlora dequantize` (every
     weight must equal bitsandbytes' own dequantize_4bit bit for bit: the reading path is
     exact) and `qlora generate --quant nf4 --temperature 0 -n 16`, whose greedy text must
     match transformers' greedy generation on the same 4-bit model (or, where it does not,
     the first diverging step is reported with transformers' top-2 logit margin there).
     If the config.json transformers wrote keeps rope_theta only inside "rope_parameters"
     (transformers >= 5) the generate check is also run on a copy whose config.json has
     rope_theta at the top level, to tell a config-parsing issue from a weights issue.
  e) on a CPU with AVX512-BF16 only: what bitsandbytes 0.50 does there. Its Linear4bit
     repacks itself on the first forward (absmax to bfloat16, matmul in bfloat16), and a
     save_pretrained after that writes non-nested absmax as bfloat16 [K/64, N] that bnb itself
     then misreads; qlora must refuse such a file rather than misread it. Everything above
     runs with that path switched off (set_cpu_fast_path), i.e. bnb's canonical fp32 path.

--write-fixtures (after the checks) or --fixtures-only (from a previous run's directories)
writes tests/fixtures/interop/ for tests/formats/test_bnb_checkpoint_interop.cpp: two
Linear layers cut byte for byte out of transformers' saved model.safetensors (nf4 with and
without double quant), bnb's dequantization of their first 8 rows and the fp32 rows they
came from, the checkpoints' tensor layouts and config.json quantization_configs.

Ends with a PASS/FAIL summary (INFO lines are observations, not checks); exit status 0
only if every check passed. Takes about 2 minutes on 2 busy cores, ~1.5 GB under models/.
"""
import argparse
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODELS = os.path.join(ROOT, "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_DIR = os.path.join(MODELS, "smollm2-hf")
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a little"]
N_NEW = 16

# name, quant_type, double_quant
CONFIGS = [("nf4-dq", "nf4", True), ("fp4", "fp4", False), ("nf4", "nf4", False)]

RESULTS = []  # (check, ok or None for INFO, detail)
CPU_HAS_AVX512BF16 = False  # set in main()


def record(check, ok, detail="", info=False):
    """A check; info=True marks an observation that is reported but does not decide PASS/FAIL."""
    RESULTS.append((check, None if info else bool(ok), detail))
    tag = "INFO" if info else ("PASS" if ok else "FAIL")
    print(f"[{tag}] {check}" + (f": {detail}" if detail else ""), flush=True)


def log(msg):
    print(msg, flush=True)


def run(cmd, check=True):
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        log(p.stdout[-4000:] + p.stderr[-4000:])
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p


# ---- safetensors files read raw (names, dtypes, shapes, exact bytes) ---------------------

def read_safetensors_raw(path):
    """{name: (dtype, shape, bytes)} and the header metadata, straight from the file."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    n = struct.unpack("<Q", mm[:8])[0]
    header = json.loads(mm[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for k, v in header.items():
        b, e = v["data_offsets"]
        out[k] = (v["dtype"], tuple(v["shape"]), mm[base + b:base + e])
    return out, meta


def model_file(d):
    p = os.path.join(d, "model.safetensors")
    if not os.path.exists(p):
        raise RuntimeError(f"{d}: no model.safetensors (sharded output is not handled by this script)")
    return p


# ---- a) the full-precision Hugging Face directory --------------------------------------------

def build_hf_dir(rebuild):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if os.path.exists(os.path.join(HF_DIR, "model.safetensors")) and not rebuild:
        log(f"a) {HF_DIR} exists; reusing it (--rebuild-hf to redo)")
        return
    log(f"a) building {HF_DIR} from models/{GGUF}")
    m = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    # The GGUF's tensors were dequantized to float32 on load; the model is now an ordinary
    # float32 model, but transformers still marks it "quantized with gguf" and refuses to save.
    m.hf_quantizer = None
    if hasattr(m.config, "quantization_config"):
        del m.config.quantization_config
    tmp = HF_DIR + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    m.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(HF_DIR, ignore_errors=True)
    os.rename(tmp, HF_DIR)


# ---- c) helpers ------------------------------------------------------------------------------

def bnb_config(qt, dq):
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt, bnb_4bit_use_double_quant=dq,
                              bnb_4bit_compute_dtype=torch.float32)


def set_cpu_fast_path(m, on):
    """bitsandbytes >= 0.48 on a CPU with AVX512-BF16 repacks every Linear4bit on its first
    forward (bnb.functional._convert_weight_packed_for_cpu): absmax becomes bfloat16 (nested
    absmax is dequantized first) and the matmul runs in bfloat16 whatever the compute dtype.
    Off, Linear4bit takes the canonical path (dequantize_4bit to the compute dtype + linear),
    which is what it does on a GPU or any other CPU and what qlora computes."""
    import bitsandbytes as bnb
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = on and CPU_HAS_AVX512BF16


def load_prequantized(d, fast_path=False):
    from transformers import AutoModelForCausalLM
    m, info = AutoModelForCausalLM.from_pretrained(d, device_map="cpu", output_loading_info=True)
    set_cpu_fast_path(m, fast_path)
    return m.eval(), info


def load_bnb_from_fp(qt, dq, fast_path=False):
    from transformers import AutoModelForCausalLM
    m, info = AutoModelForCausalLM.from_pretrained(HF_DIR, device_map="cpu", dtype=torch.float32,
                                                   quantization_config=bnb_config(qt, dq), output_loading_info=True)
    set_cpu_fast_path(m, fast_path)
    return m.eval(), info


def loading_problems(info):
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                                          "error_msgs")}
    return bad


def check_linear4bit(m, qt, dq, blocksize=64):
    """Every Linear of the decoder layers must be a bnb Linear4bit with the expected state."""
    import bitsandbytes as bnb
    n4, problems = 0, []
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and not isinstance(mod, bnb.nn.Linear4bit):
            if name != "lm_head":
                problems.append(f"{name} is a dense {type(mod).__name__}")
            continue
        if isinstance(mod, bnb.nn.Linear4bit):
            n4 += 1
            w = mod.weight
            qs = getattr(w, "quant_state", None)
            if qs is None:
                problems.append(f"{name}: no quant_state")
                continue
            if qs.quant_type != qt or qs.blocksize != blocksize or bool(qs.nested) != dq or w.dtype != torch.uint8:
                problems.append(f"{name}: {qs.quant_type} blocksize {qs.blocksize} nested {qs.nested} "
                                f"storage {w.dtype}")
            if qs.dtype != torch.float32:
                problems.append(f"{name}: quant_state dtype {qs.dtype}, expected float32")
    lm = m.lm_head
    tied = lm.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    if isinstance(lm, bnb.nn.Linear4bit) or not tied:
        problems.append(f"lm_head: {type(lm).__name__}, tied to embed_tokens: {tied}")
    return n4, problems


def state_dict_diff(a, b):
    """Names only in one, and names whose tensors differ (dtype, shape or bits)."""
    sa, sb = a.state_dict(), b.state_dict()
    only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
    differ = []
    for k in sorted(set(sa) & set(sb)):
        x, y = sa[k].detach().cpu().contiguous(), sb[k].detach().cpu().contiguous()
        if x.dtype != y.dtype or x.shape != y.shape or \
                x.view(torch.uint8).numpy().tobytes() != y.view(torch.uint8).numpy().tobytes():
            differ.append(k)
    return len(sa), only_a, only_b, differ


def file_diff(path_a, path_b):
    """Tensor-level comparison of two safetensors files: names, dtype, shape and bytes."""
    a, meta_a = read_safetensors_raw(path_a)
    b, meta_b = read_safetensors_raw(path_b)
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    differ = []
    for k in sorted(set(a) & set(b)):
        if a[k][0] != b[k][0] or a[k][1] != b[k][1] or a[k][2] != b[k][2]:
            differ.append(k)
    return len(a), only_a, only_b, differ, (meta_a, meta_b), (a, b)


def describe_tensor_difference(k, a, b):
    da, sa, ba = a[k]
    db, sb, bb = b[k]
    s = f"{k}: {da}{list(sa)} vs {db}{list(sb)}"
    if ".quant_state.bitsandbytes__" in k:
        s += f"\n      ours: {bytes(ba).decode(errors='replace')}\n      bnb:  {bytes(bb).decode(errors='replace')}"
    elif len(ba) == len(bb):
        nd = sum(1 for x, y in zip(ba, bb) if x != y)
        s += f" ({nd} of {len(ba)} bytes differ)"
    return s


def prompt_logits(m, tok):
    out = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt").input_ids
            out.append(m(ids).logits[0].float())
    return out


def quant_config_diff(d_ours, d_bnb):
    ca = json.load(open(os.path.join(d_ours, "config.json")))
    cb = json.load(open(os.path.join(d_bnb, "config.json")))
    qa, qb = ca.get("quantization_config", {}), cb.get("quantization_config", {})
    keys = sorted(set(qa) | set(qb))
    diffs = [f"{k}: ours={qa.get(k, '<absent>')!r} transformers={qb.get(k, '<absent>')!r}"
             for k in keys if qa.get(k, "<absent>") != qb.get(k, "<absent>")]
    other = sorted(k for k in set(ca) | set(cb) if k != "quantization_config" and ca.get(k) != cb.get(k))
    other = [f"{k}: ours={ca.get(k, '<absent>')!r} transformers={cb.get(k, '<absent>')!r}" for k in other]
    return diffs, other


# ---- d) qlora reading what transformers saved ------------------------------------------------

def qlora_generate(qlora, model_dir, prompt, quant_args):
    p = run([qlora, "generate", "--model", model_dir, *quant_args, "--temperature", "0", "-n", str(N_NEW),
             "--no-echo", "--prompt", prompt])
    text = p.stdout
    if text.endswith("\n"):
        text = text[:-1]
    n_prompt = None
    for line in p.stderr.splitlines():
        if line.startswith("prompt:"):
            n_prompt = int(line.split()[1])
    return text, n_prompt, p.stderr


def hf_greedy(m, tok, prompt):
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        g = m.generate(ids, max_new_tokens=N_NEW, do_sample=False, output_logits=True, return_dict_in_generate=True,
                       pad_token_id=tok.eos_token_id)
    new = g.sequences[0, ids.shape[1]:].tolist()
    margins = []
    for step_logits in g.logits:
        top = torch.topk(step_logits[0].float(), 2)
        margins.append((float(top.values[0] - top.values[1]), top.indices.tolist()))
    return ids.shape[1], new, margins


# ---- the committed fixture (tests/fixtures/interop, read by tests/formats/test_bnb_checkpoint_interop.cpp)

FIXTURE_DIR = os.path.join(ROOT, "tests", "fixtures", "interop")
# (checkpoint saved by transformers, weight): one nested and one plain 4-bit Linear.
FIXTURE_LAYERS = [("nf4-dq", "model.layers.0.self_attn.k_proj.weight"),
                  ("nf4", "model.layers.0.self_attn.v_proj.weight")]
FIXTURE_ROWS = 8
ST_DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I64": 8, "I32": 4}


def write_safetensors_raw(path, tensors, metadata):
    """tensors: [(name, dtype, shape, bytes)], written in that order, bytes untouched."""
    header, off = {}, 0
    for name, dt, shape, b in tensors:
        assert len(b) == ST_DTYPE_SIZE[dt] * (int(torch.tensor(shape).prod()) if shape else 1), name
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, _, b in tensors:
            f.write(bytes(b))


def layout(d):
    """Tensor layout of a checkpoint as [name, dtype, shape]: the tensors outside the decoder
    layers and those of layer 0, after checking every other layer repeats layer 0's (the
    quant_state JSON's length varies with nested_offset's digits, so its shape is not compared)."""
    t, meta = read_safetensors_raw(model_file(d))
    cfg = json.load(open(os.path.join(d, "config.json")))
    n_layers = cfg["num_hidden_layers"]

    def key(n, dt, shape):
        return (n, dt, None if ".quant_state." in n else shape)

    layer0 = sorted(key(n, v[0], v[1]) for n, v in t.items() if n.startswith("model.layers.0."))
    for i in range(1, n_layers):
        li = sorted(key(n.replace(f"model.layers.{i}.", "model.layers.0."), v[0], v[1])
                    for n, v in t.items() if n.startswith(f"model.layers.{i}."))
        assert li == layer0, f"{d}: layer {i} does not repeat layer 0's tensors"
    assert not [n for n in t if n.startswith("model.layers.") and int(n.split(".")[2]) >= n_layers]
    other = sorted([n, v[0], list(v[1])] for n, v in t.items() if not n.startswith("model.layers."))
    first = sorted([n, v[0], list(v[1])] for n, v in t.items() if n.startswith("model.layers.0."))
    return {"non_layer": other, "layer0": first, "n_layers": n_layers, "n_tensors": len(t), "metadata": meta}


def write_fixtures():
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import transformers
    os.makedirs(FIXTURE_DIR, exist_ok=True)
    src, _ = read_safetensors_raw(model_file(HF_DIR))
    layers_out, ref_out, described = [], [], []
    for ckpt, w in FIXTURE_LAYERS:
        d = os.path.join(MODELS, f"smollm2-hf-bnb-{ckpt}")
        t, meta = read_safetensors_raw(model_file(d))
        names = sorted(n for n in t if n == w or (n.startswith(w + ".") and n[len(w) + 1:] in (
            "absmax", "quant_map", "nested_absmax", "nested_quant_map",
            "quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4")))
        layers_out += [(n, t[n][0], t[n][1], t[n][2]) for n in names]
        # bitsandbytes' own dequantization of the saved state (canonical CPU path)
        qs_dict = {n[len(w) + 1:]: torch.frombuffer(bytearray(t[n][2]), dtype={"U8": torch.uint8,
                   "F32": torch.float32}[t[n][0]]).reshape(t[n][1]) for n in names if n != w}
        qs = F.QuantState.from_dict(qs_dict, device=torch.device("cpu"))
        packed = torch.frombuffer(bytearray(t[w][2]), dtype=torch.uint8).reshape(t[w][1])
        deq = F.dequantize_4bit(packed, qs).float()
        shape = list(qs.shape)
        rows = deq.reshape(shape)[:FIXTURE_ROWS].contiguous()
        sdt, sshape, sb = src[w]
        assert sdt == "F32" and list(sshape) == shape
        srows = torch.frombuffer(bytearray(sb), dtype=torch.float32).reshape(shape)[:FIXTURE_ROWS].contiguous()
        ref_out.append((w + ".dequantized_rows", "F32", rows.shape, rows.numpy().tobytes()))
        ref_out.append((w + ".source_rows", "F32", srows.shape, srows.numpy().tobytes()))
        described.append({"weight": w, "checkpoint": f"smollm2-hf-bnb-{ckpt}", "quant_type": qs.quant_type,
                          "nested": bool(qs.nested), "blocksize": qs.blocksize, "shape": shape,
                          "rows": FIXTURE_ROWS})
    write_safetensors_raw(os.path.join(FIXTURE_DIR, "smollm2_bnb_layers.safetensors"), layers_out,
                          {"format": "pt"})
    write_safetensors_raw(os.path.join(FIXTURE_DIR, "smollm2_bnb_reference.safetensors"), ref_out,
                          {"format": "pt", "layers": json.dumps(described)})
    cfg = json.load(open(os.path.join(MODELS, "smollm2-hf-bnb-nf4-dq", "config.json")))
    model = {
        "generated_by": "tools/check_bnb_interop.py --write-fixtures",
        "transformers_version": transformers.__version__,
        "bitsandbytes_version": bnb.__version__,
        "config": cfg,
        "quantization_config": {name: json.load(open(os.path.join(MODELS, f"smollm2-hf-bnb-{name}",
                                                                  "config.json")))["quantization_config"]
                                for name, _, _ in CONFIGS},
        "options": {name: {"quant_type": qt, "double_quant": dq, "blocksize": 64, "compute_dtype": "float32"}
                    for name, qt, dq in CONFIGS},
        "source_layout": layout(HF_DIR),
        "saved_layout": {name: layout(os.path.join(MODELS, f"smollm2-hf-bnb-{name}")) for name, _, _ in CONFIGS},
    }
    with open(os.path.join(FIXTURE_DIR, "smollm2_bnb_model.json"), "w") as f:
        json.dump(model, f, indent=1)
        f.write("\n")
    total = 0
    for fn in sorted(os.listdir(FIXTURE_DIR)):
        sz = os.path.getsize(os.path.join(FIXTURE_DIR, fn))
        total += sz
        log(f"  {fn}: {sz} bytes")
    log(f"  total {total} bytes")
    assert total < 300_000, "interop fixtures must stay under 300 KB"


def main():
    global CPU_HAS_AVX512BF16
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qlora", default=os.path.join(ROOT, "build", "qlora"))
    ap.add_argument("--rebuild-hf", action="store_true", help="rebuild models/smollm2-hf from the GGUF")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QLORA_CHECK_THREADS", "2")))
    ap.add_argument("--write-fixtures", action="store_true",
                    help="after the checks, (re)write tests/fixtures/interop from the checkpoints they saved")
    ap.add_argument("--fixtures-only", action="store_true",
                    help="only (re)write tests/fixtures/interop from the checkpoints a previous run saved")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    qlora = os.path.abspath(args.qlora)
    if not os.access(qlora, os.X_OK):
        sys.exit(f"{qlora}: not built (cmake --build build --target qlora)")

    from transformers import AutoTokenizer
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import transformers
    CPU_HAS_AVX512BF16 = bool(F.has_avx512bf16()) if hasattr(F, "has_avx512bf16") else False
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, bitsandbytes {bnb.__version__}, "
        f"CPU AVX512-BF16 fast path available: {CPU_HAS_AVX512BF16} (off unless stated)")

    if args.fixtures_only:
        write_fixtures()
        return 0
    build_hf_dir(args.rebuild_hf)
    tok = AutoTokenizer.from_pretrained(HF_DIR)

    # ---- b) + c) ---------------------------------------------------------------------------
    saved_bnb = {}
    for name, qt, dq in CONFIGS:
        ours_dir = os.path.join(MODELS, f"smollm2-hf-{name}")
        bnb_dir = os.path.join(MODELS, f"smollm2-hf-bnb-{name}")
        log(f"\n== {name}: qlora quantize -> transformers ==")
        cmd = [qlora, "quantize", "--model", "models/smollm2-hf", "--out", os.path.relpath(ours_dir, ROOT),
               "--quant", qt, "--compute-dtype", "fp32"] + (["--double-quant"] if dq else [])
        t0 = time.time()
        p = run(cmd)
        log(((p.stdout + p.stderr).strip().splitlines() or [""])[-1] + f"  ({time.time() - t0:.1f} s)")

        try:
            ours, info = load_prequantized(ours_dir)
        except Exception as e:  # transformers rejected the directory outright
            record(f"{name}: transformers loads `qlora quantize` output", False, f"{type(e).__name__}: {e}")
            continue
        bad = loading_problems(info)
        hq = getattr(ours, "hf_quantizer", None)
        is_bnb = hq is not None and type(hq).__name__ == "Bnb4BitHfQuantizer"
        record(f"{name}: transformers loads `qlora quantize` output as bitsandbytes 4-bit",
               is_bnb and not bad, f"quantizer {type(hq).__name__ if hq else None}, no missing/unexpected keys"
               if not bad else f"{bad}")
        n4, problems = check_linear4bit(ours, qt, dq)
        record(f"{name}: every decoder Linear is bnb Linear4bit({qt}, blocksize 64, nested={dq}), lm_head dense+tied",
               n4 == 210 and not problems, f"{n4} Linear4bit" + (f"; {problems[:5]}" if problems else ""))

        ref, _ = load_bnb_from_fp(qt, dq)
        # What transformers writes for that model, saved before any forward (see set_cpu_fast_path).
        shutil.rmtree(bnb_dir, ignore_errors=True)
        ref.save_pretrained(bnb_dir)
        tok.save_pretrained(bnb_dir)
        saved_bnb[name] = bnb_dir

        n_sd, only_a, only_b, differ = state_dict_diff(ours, ref)
        record(f"{name}: state_dict equal to transformers+bnb quantizing the fp32 model",
               not only_a and not only_b and not differ,
               f"{n_sd} tensors, {len(differ)} differ" + (f", only ours {only_a[:3]}" if only_a else "")
               + (f", only bnb {only_b[:3]}" if only_b else "") + (f", first differing {differ[:3]}" if differ else ""))

        n_t, only_a, only_b, differ, metas, (fa, fb) = file_diff(model_file(ours_dir), model_file(bnb_dir))
        detail = f"{n_t} tensors in ours, {len(fb)} in transformers', {len(differ)} differ"
        if only_a or only_b:
            detail += f"; only ours {only_a[:4]}, only transformers' {only_b[:4]}"
        record(f"{name}: model.safetensors tensors (names, dtypes, shapes, bytes incl. packed weights and "
               f"quant_state JSON) equal to transformers' save_pretrained",
               not only_a and not only_b and not differ, detail)
        for k in differ[:4]:
            log("    " + describe_tensor_difference(k, fa, fb))
        if metas[0] != metas[1]:
            log(f"    note: header metadata ours {metas[0]} vs transformers' {metas[1]}")
        qdiff, other = quant_config_diff(ours_dir, bnb_dir)
        # transformers writes llm_int8_skip_modules=None and, on load, skips the output
        # embeddings by itself (get_keys_to_not_convert); ["lm_head"] names the same module.
        benign = all(d.startswith("llm_int8_skip_modules: ours=['lm_head'] transformers=None") for d in qdiff)
        record(f"{name}: config.json quantization_config vs transformers'", True,
               "identical" if not qdiff else "; ".join(qdiff), info=benign and bool(qdiff))
        if qdiff and not benign:
            record(f"{name}: config.json quantization_config differs beyond llm_int8_skip_modules", False,
                   "; ".join(qdiff))
        if other:
            log("    other config.json differences: " + "; ".join(other))

        la, lb = prompt_logits(ours, tok), prompt_logits(ref, tok)
        maxdiff = max(float((x - y).abs().max()) for x, y in zip(la, lb))
        same_argmax = all(int(x[-1].argmax()) == int(y[-1].argmax()) for x, y in zip(la, lb))
        record(f"{name}: logits of our checkpoint vs bnb quantizing on load, {len(PROMPTS)} prompts, all positions",
               maxdiff <= 1e-4 and same_argmax, f"max |diff| = {maxdiff:.3g}, next-token argmax equal: {same_argmax}")
        del ours, ref

    # ---- d) transformers -> qlora -----------------------------------------------------------
    bnb_dir = saved_bnb.get("nf4")
    if bnb_dir is None:
        record("d: transformers-saved nf4 checkpoint available", False)
        return summary()
    log(f"\n== transformers save_pretrained (nf4) -> qlora ==")
    rel = os.path.relpath(bnb_dir, ROOT)
    p = run([qlora, "inspect", rel], check=False)
    n4 = sum(1 for line in p.stdout.splitlines() if " nf4 " in line and "blocksize 64" in line)
    record("d: `qlora inspect` reads the transformers-saved checkpoint", p.returncode == 0 and n4 == 210,
           f"rc {p.returncode}, {n4} nf4 tensors listed" + (f"; {p.stderr.strip()[-300:]}" if p.returncode else ""))

    # The reading path, weight by weight: `qlora dequantize` vs bitsandbytes' dequantize_4bit.
    m, _ = load_prequantized(bnb_dir)
    deq_dir = os.path.join(MODELS, "smollm2-hf-bnb-nf4-deq")
    p = run([qlora, "dequantize", "--model", rel, "--out", os.path.relpath(deq_dir, ROOT), "--dtype", "fp32"],
            check=False)
    n_eq, n_w, first_bad = 0, 0, None
    if p.returncode == 0:
        deq, _ = read_safetensors_raw(model_file(deq_dir))
        for name, mod in m.named_modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                n_w += 1
                want = F.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float().contiguous()
                dt, shape, b = deq[name + ".weight"]
                got = torch.frombuffer(bytearray(b), dtype=torch.float32).reshape(shape)
                if dt == "F32" and tuple(want.shape) == shape and torch.equal(got.view(torch.int32),
                                                                              want.view(torch.int32)):
                    n_eq += 1
                elif first_bad is None:
                    first_bad = f"{name}: max |diff| {float((got - want).abs().max()):.3g}"
        del deq
    else:
        first_bad = p.stderr.strip()[-300:]
    record("d: `qlora dequantize` of every 4-bit weight == bnb dequantize_4bit (bit for bit)",
           n_w == 210 and n_eq == n_w, f"{n_eq}/{n_w} equal" + (f"; first mismatch {first_bad}" if first_bad else ""))
    shutil.rmtree(deq_dir, ignore_errors=True)

    # qlora generate loads the transformers-made file itself. Model::load keeps a stored 4-bit
    # weight's packed bytes and quant state as they are when its type/blocksize/nesting match
    # --quant/--blocksize/--double-quant (they do below), so nothing is re-quantized; that those
    # bytes are bnb's own is the "nf4: model.safetensors tensors ... equal" check above.
    cfg = json.load(open(os.path.join(bnb_dir, "config.json")))
    rope_nested_only = "rope_theta" not in cfg and "rope_theta" in (cfg.get("rope_parameters") or {})
    variants = [(rel, "config.json as transformers saved it")]
    if rope_nested_only:
        fix_dir = bnb_dir + "-ropefix"
        shutil.rmtree(fix_dir, ignore_errors=True)
        os.makedirs(fix_dir)
        for f in os.listdir(bnb_dir):
            if f != "config.json":
                os.symlink(os.path.join(bnb_dir, f), os.path.join(fix_dir, f))
        cfg2 = dict(cfg)
        cfg2["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
        with open(os.path.join(fix_dir, "config.json"), "w") as f:
            json.dump(cfg2, f, indent=2)
        variants.append((os.path.relpath(fix_dir, ROOT), "same files, rope_theta copied to the top level"))
        log(f"note: {rel}/config.json keeps rope_theta={cfg['rope_parameters']['rope_theta']} only inside "
            f"'rope_parameters' (transformers >= 5); checking a copy with it at the top level too")

    # transformers 5 cannot save a model it loaded pre-quantized again; same for ours and its own.
    resave = {}
    for label, d in (("transformers-saved", bnb_dir), ("qlora-quantized", os.path.join(MODELS, "smollm2-hf-nf4"))):
        mm = m if d == bnb_dir else load_prequantized(d)[0]
        try:
            mm.save_pretrained(os.path.join(MODELS, "resave.tmp"))
            resave[label] = "ok"
        except Exception as e:
            resave[label] = f"{type(e).__name__} {e}".strip()
        shutil.rmtree(os.path.join(MODELS, "resave.tmp"), ignore_errors=True)
    record("d: transformers save_pretrained of a model loaded pre-quantized (nf4)", True,
           ", ".join(f"{k}: {v}" for k, v in resave.items()), info=len(set(resave.values())) == 1)
    if len(set(resave.values())) != 1:
        record("d: re-saving behaves the same for our checkpoint and transformers' own", False, str(resave))

    hf = [hf_greedy(m, tok, pr) for pr in PROMPTS]
    for vdir, vname in variants:
        ok, lines = compare_greedy(qlora, vdir, tok, hf)
        record(f"d: qlora generate greedy == transformers greedy (fp32 path) on the transformers-saved nf4 model "
               f"[{vname}]", ok == len(PROMPTS), f"{ok}/{len(PROMPTS)} prompts\n" + "\n".join(lines))
    if CPU_HAS_AVX512BF16:
        # The same comparison against bnb's CPU AVX512-BF16 path, which rounds absmax and the
        # activations to bfloat16: an observation, not a requirement.
        ref_logits = prompt_logits(m, tok)  # fp32 path, before any repacking
        set_cpu_fast_path(m, True)
        hf_bf16 = [hf_greedy(m, tok, pr) for pr in PROMPTS]
        ok, lines = compare_greedy(qlora, variants[-1][0], tok, hf_bf16)
        record("d: qlora generate greedy vs transformers greedy with bnb's CPU AVX512-BF16 path",
               ok == len(PROMPTS), f"{ok}/{len(PROMPTS)} prompts\n" + "\n".join(lines), info=True)
        # ... and what save_pretrained writes after such a forward (a model quantized on load:
        # one loaded pre-quantized cannot be saved again, see the resave check above).
        after_dir = os.path.join(MODELS, "smollm2-hf-bnb-nf4-after-cpu-forward")
        shutil.rmtree(after_dir, ignore_errors=True)
        fresh, _ = load_bnb_from_fp("nf4", False, fast_path=True)
        prompt_logits(fresh, tok)
        fresh.save_pretrained(after_dir)
        tok.save_pretrained(after_dir)
        del fresh
        raw, _ = read_safetensors_raw(model_file(after_dir))
        k = "model.layers.0.self_attn.k_proj.weight.absmax"
        m2, _ = load_prequantized(after_dir)
        d_bnb = max(float((x - y).abs().max()) for x, y in zip(ref_logits, prompt_logits(m2, tok)))
        record("e: bnb 0.50 save_pretrained after a CPU AVX512-BF16 forward", True,
               f"{k} saved as {raw[k][0]}{list(raw[k][1])} (bf16, [K/64, N]: the CPU layout, not undone for "
               f"non-nested states); transformers+bnb reloading that directory: logits differ by up to "
               f"{d_bnb:.3g} from the model it saved", info=True)
        p = run([qlora, "inspect", os.path.relpath(after_dir, ROOT)], check=False)
        msg = (p.stderr.strip().splitlines() or [""])[-1]
        record("e: qlora refuses that checkpoint with a clear error instead of misreading it",
               p.returncode != 0 and "absmax" in msg and "BF16" in msg, f"rc {p.returncode}: {msg}")
        del m2, raw
    if args.write_fixtures:
        log(f"\n== writing {os.path.relpath(FIXTURE_DIR, ROOT)} ==")
        write_fixtures()
    return summary()


def compare_greedy(qlora, model_dir, tok, hf):
    n_match, lines = 0, []
    for prompt, (n_prompt_hf, new_ids, margins) in zip(PROMPTS, hf):
        text, n_prompt_q, _ = qlora_generate(qlora, model_dir, prompt, ["--quant", "nf4", "--blocksize", "64"])
        hf_text = tok.decode(new_ids, skip_special_tokens=False)
        if text == hf_text and n_prompt_q == n_prompt_hf:
            n_match += 1
            lines.append(f"  {prompt!r}: match ({len(new_ids)} tokens), smallest top-2 logit margin on the way "
                         f"{min(mg for mg, _ in margins):.3f}: {text!r}")
            continue
        q_ids = tok(prompt + text, return_tensors="pt").input_ids[0].tolist()[n_prompt_hf:]
        k = next((i for i, (a, b) in enumerate(zip(q_ids, new_ids)) if a != b), min(len(q_ids), len(new_ids)))
        why = f"diverges at new token {k}"
        if k < len(margins):
            mg, (t1, t2) = margins[k]
            why += (f": transformers' top-2 there {tok.decode([t1])!r} / {tok.decode([t2])!r}, margin {mg:.3f}; "
                    f"qlora took {tok.decode(q_ids[k:k + 1])!r}")
        lines.append(f"  {prompt!r}: {why}\n    prompt tokens: transformers {n_prompt_hf}, qlora {n_prompt_q}\n"
                     f"    transformers: {hf_text!r}\n    qlora:        {text!r}")
    return n_match, lines


def summary():
    print("\n==== SUMMARY ====")
    for check, ok, detail in RESULTS:
        tag = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        first = detail.splitlines()[0] if detail else ""
        print(f"{tag}  {check}" + (f"  [{first}]" if first else ""))
    n_fail = sum(1 for _, ok, _ in RESULTS if ok is False)
    n_pass = sum(1 for _, ok, _ in RESULTS if ok is True)
    print(f"{n_pass} passed, {n_fail} failed -> {'PASS' if n_fail == 0 else 'FAIL'}")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
