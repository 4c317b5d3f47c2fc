#!/usr/bin/env python3
"""QLoRA training parity fixtures: transformers + PEFT + torch.optim.AdamW on the same
NF4-quantized base weights qlora.cpp uses (tests/train/test_train_parity.cpp).

    scripts/fetch_model.sh                                   # models/SmolLM2-135M-Instruct.Q4_1.gguf
    .refenv/bin/python tools/make_train_parity_fixtures.py [--skip-smollm2] [--qlora build/qlora]

Everything is deterministic (fixed seeds, CPU, eager attention; a rerun rewrites the same
bytes). About 5 CPU-minutes with SmolLM2 (its float64 20-step run dominates). It writes
tests/fixtures/train_parity/:

  <model>/initial_adapter/        PEFT save_pretrained of the initial LoRA (B NOT zero, so
                                  A gets gradients too), the "PEFT-exported initial weights"
  <model>/grads.safetensors       d loss / d (A, B) of every LoRA tensor, transformers + PEFT
                                  in float32, F32, keyed by the PEFT key
                                  (base_model.model.<module>.lora_A.weight)
  <model>/grads_fp64.safetensors  the same computed in float64 (rounded to F32)
  stories260k/final_adapter.safetensors  A, B after the 20 float32 AdamW steps
  <model>/reference.json          the batch (ids, labels), the loss, the 20-step loss curve
                                  (+ the loss after the last step), all of it also in
                                  float64, and torch float32's distance from float64 on each
                                  (the measured size of float32 rounding here, which the C++
                                  test's tolerances are multiples of)
  stories260k/peft_logits.safetensors   PeftModel logits (all positions) of a prompt with the
                                  initial adapter, and the base model's logits (no adapter)
  smollm2/peft_logits.safetensors       the same for SmolLM2, last position only
  qlora_adapter/                  an adapter trained by qlora.cpp itself (`qlora train` on
                                  stories260K, NF4), committed; regenerated only with --qlora
  qlora_adapter_logits.safetensors  PeftModel.from_pretrained(base, qlora_adapter/) logits
                                  (after checking PEFT holds exactly the tensors qlora wrote)

The float64 reference is the same PeftModel deep-copied and .double()'d, with two things
transformers would still do in float32 done in float64: the loss (ForCausalLMLoss calls
logits.float(), a downcast for a float64 model; on SmolLM2's 49152-token vocabulary that
float32 log-softmax alone moves the loss by 2e-6 relative) and LlamaRMSNorm (it casts its
input to float32). The rotary tables stay float32 angles on both sides, as transformers and
qlora.cpp both build them.

Models, as qlora.cpp loads them:
  stories260K  shared/data/stories260K/stories260K.bin converted to LlamaForCausalLM (tied
               head) with llama2.c export.py's q/k permutation (tools/make_model_reference.py)
  SmolLM2      models/SmolLM2-135M-Instruct.Q4_1.gguf through transformers' GGUF loader
               (dequantized Q4_1 -> float32, q/k un-permuted; tools/make_logits_fixtures.py)
and then every Linear inside the blocks replaced by its bitsandbytes NF4 round trip
(quantize_4bit nf4, blocksize 64, no double quantization, CPU; dequantize_4bit to float32):
exactly the weights qlora.cpp computes with (its NF4 bytes equal bitsandbytes', see
tests/model/test_stories_nf4_bytes.cpp and test_smollm2_parity.cpp). Embeddings, norms and
the head stay full precision. The PEFT logits fixtures use this same NF4 base.

LoRA: stories260K r=4 all-linear, SmolLM2 r=2 q_proj,v_proj; alpha 8, dropout 0; PEFT's
default init (A kaiming-uniform from torch.manual_seed, B zero), then B filled with seeded
N(0, 0.05²) values.

Batch: 2 sequences x 32 (stories, stories-style text, llama2.c tokenizer with BOS) / 48
(SmolLM2, Tiny Shakespeare) tokens, labels = input ids with a few positions set to -100.
Loss: transformers' ForCausalLMLoss for a batch = the mean cross-entropy over ALL
non-ignored (shifted) targets of both sequences (token-weighted, not the mean of
per-sequence means). 20 steps of torch.optim.AdamW(lr 1e-3, weight_decay 0, betas
(0.9, 0.999), eps 1e-8, foreach=False) on the same batch, no clipping, no schedule.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_logits_fixtures import write_safetensors  # noqa: E402  deterministic safetensors writer
from make_model_reference import load_llama2c, stories_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODELS = ROOT / "models"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "train_parity"

STEPS = 20
LR = 1e-3
ALPHA = 8
B_STD = 0.05

STORIES_TEXTS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun with her "
    "dog, Max. One day, they found a big red ball in the park.",
    "Tom had a small boat. Every morning he took the boat to the pond and watched the ducks swim. "
    "The ducks were happy and said quack to Tom.",
]
STORIES_PROMPT = "One day, a little bird flew over the tall green tree and saw a shiny star in the sky."
SMOL_PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"
# Positions (in the label tensor, before transformers' shift) set to -100 per sequence.
STORIES_IGNORE = [[5, 6, 7, 20], [12, 31]]
SMOL_IGNORE = [[3, 4, 30], [10, 11, 12, 13, 47]]


# --- llama2.c tokenizer (run.c's encode), for the stories text ---------------------------
def llama2c_encode(text: str, tok_path: Path, bos: bool = True) -> list[int]:
    raw = tok_path.read_bytes()
    off = 4
    vocab, scores = [], []
    while off < len(raw):
        score, n = struct.unpack_from("<fi", raw, off)
        off += 8
        vocab.append(raw[off:off + n])
        scores.append(score)
        off += n
    lookup = {}
    for i, v in enumerate(vocab):
        lookup.setdefault(v, i)
    ids = [1] if bos else []
    if text:
        ids.append(lookup[b" "])  # sentencepiece's dummy prefix
    for ch in text:
        b = ch.encode("utf-8")
        if b in lookup:
            ids.append(lookup[b])
        else:
            ids.extend(x + 3 for x in b)  # byte fallback: <0xXX> tokens start at id 3
    while True:  # merge the best-scoring adjacent pair until none is in the vocabulary
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(ids) - 1):
            m = lookup.get(vocab[ids[i]] + vocab[ids[i + 1]])
            if m is not None and scores[m] > best:
                best, best_i, best_id = scores[m], i, m
        if best_i < 0:
            break
        ids[best_i:best_i + 2] = [best_id]
    return ids


# --- models -------------------------------------------------------------------------------
def nf4_roundtrip(model: torch.nn.Module) -> None:
    """Every Linear except lm_head -> bitsandbytes NF4 (blocksize 64, no double quant) and back."""
    import bitsandbytes.functional as F
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            q, state = F.quantize_4bit(mod.weight.data.float().contiguous(), blocksize=64, compress_statistics=False,
                                       quant_type="nf4")
            mod.weight.data = F.dequantize_4bit(q, state).float()
            n += 1
    assert n > 0


def stories_base() -> torch.nn.Module:
    cfg, w = load_llama2c(DATA / "stories260K" / "stories260K.bin")
    m = stories_model(cfg, w)
    m.config._attn_implementation = "eager"
    nf4_roundtrip(m)
    return m.eval()


_SMOL_CACHE = {}


def smollm2_base() -> torch.nn.Module:
    if "m" not in _SMOL_CACHE:
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32,
                                                 attn_implementation="eager")
        nf4_roundtrip(m)
        _SMOL_CACHE["m"] = m.eval()
    return copy.deepcopy(_SMOL_CACHE["m"])


def patch_rmsnorm_for_fp64() -> None:
    """LlamaRMSNorm computes in float32 whatever its input (hidden.to(torch.float32)), which
    would put float32 rounding into every norm of the float64 reference. For float64 inputs
    compute it in float64; float32 inputs take transformers' own code unchanged. (Rotary
    tables stay as transformers makes them, float32 angles: both sides use those tables.)"""
    from transformers.models.llama import modeling_llama as ml
    original = ml.LlamaRMSNorm.forward
    if getattr(original, "_fp64_patched", False):
        return

    def forward(self, hidden_states):
        if hidden_states.dtype != torch.float64:
            return original(self, hidden_states)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    forward._fp64_patched = True
    ml.LlamaRMSNorm.forward = forward


# --- PEFT helpers -------------------------------------------------------------------------
def peft_key(param_name: str) -> str:
    """PEFT parameter name (…lora_A.default.weight) -> adapter file key (…lora_A.weight)."""
    return param_name.replace(".default.", ".")


def lora_params(pm) -> dict[str, torch.nn.Parameter]:
    return {peft_key(n): p for n, p in pm.named_parameters() if "lora_" in n}


def make_peft(base, r: int, targets, seed: int):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)  # A's kaiming-uniform init
    cfg = LoraConfig(r=r, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=targets)
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for n, p in sorted(pm.named_parameters()):
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * B_STD)
    return pm


def clean_adapter_dir(d: Path, base_name: str) -> None:
    """Machine-independent, diff-friendly adapter_config.json; no README."""
    p = d / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = base_name
    if isinstance(cfg.get("target_modules"), list):  # a set inside PEFT: arbitrary order
        cfg["target_modules"] = sorted(cfg["target_modules"])
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (d / "README.md").unlink(missing_ok=True)


def batch_loss(pm, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' own loss (labels=...): what a user of transformers + PEFT trains on."""
    return pm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss


def batch_loss_fp64(pm64, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same loss as ForCausalLMLoss (shift, flatten, mean over non-ignored targets) for a
    float64 model, but in float64: ForCausalLMLoss upcasts logits with .float(), which for
    a float64 model is a DOWNcast, so labels=... would compute the loss (and the gradient
    that starts there) in float32 even there. With a 49152-token vocabulary that float32
    log-softmax is off by ~2e-6 relative, large next to everything else here."""
    logits = pm64(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.dtype == torch.float64
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), shift.reshape(-1),
                                             ignore_index=-100)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| over one tensor (element-wise relative error means nothing
    for entries near zero)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# --- the training parity fixture ------------------------------------------------------------
def run_adamw(pm, loss_fn, ids_t, labels, steps: int) -> tuple[list[float], float]:
    """`steps` torch.optim.AdamW steps on one batch: the loss before each step, and after the last."""
    params = lora_params(pm)
    opt = torch.optim.AdamW(list(params.values()), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            foreach=False, fused=False)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        l = loss_fn(pm, ids_t, labels)
        l.backward()
        opt.step()
        losses.append(float(l.detach()))
    with torch.no_grad():
        final = float(loss_fn(pm, ids_t, labels))
    return losses, final


def train_fixture(name: str, base_fn, r: int, targets, seed: int, ids: list[list[int]], ignore, source: str,
                  save_final: bool):
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ids_t = torch.tensor(ids, dtype=torch.long)
    labels = ids_t.clone()
    for s, pos in enumerate(ignore):
        labels[s, pos] = -100

    pm = make_peft(base_fn(), r, targets, seed)
    pm.save_pretrained(out / "initial_adapter")
    clean_adapter_dir(out / "initial_adapter", name)
    pm.train()  # dropout 0: train and eval mode compute the same
    pm64 = copy.deepcopy(pm).double()  # the same model and adapter in float64
    params, params64 = lora_params(pm), lora_params(pm64)
    keys = sorted(params)

    # Loss and gradients at the initial adapter: transformers + PEFT in float32, and float64.
    loss = batch_loss(pm, ids_t, labels)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    loss64 = batch_loss_fp64(pm64, ids_t, labels)
    loss64.backward()
    grads64 = {k: p.grad.detach().clone() for k, p in params64.items()}
    fp32_grad_rel = max(rel_err(grads[k], grads64[k]) for k in keys)

    # 20 AdamW steps on the same batch, in float32 (the reference) and float64.
    losses, final_loss = run_adamw(pm, batch_loss, ids_t, labels, STEPS)
    losses64, final64 = run_adamw(pm64, batch_loss_fp64, ids_t, labels, STEPS)
    fp32_curve_rel = max(abs(a - b) / abs(b) for a, b in zip(losses + [final_loss], losses64 + [final64]))
    fp32_final_param = max(float((params[k].double() - params64[k].detach()).abs().max()) for k in keys)

    meta = {"source": source, "generator": "tools/make_train_parity_fixtures.py"}
    write_safetensors(out / "grads.safetensors", {k: grads[k].contiguous() for k in keys},
                      {**meta, "what": "d loss / d param, transformers + PEFT, float32"})
    write_safetensors(out / "grads_fp64.safetensors", {k: grads64[k].float().contiguous() for k in keys},
                      {**meta, "what": "d loss / d param, the same model in float64 (loss in float64), "
                                       "rounded to float32"})
    if save_final:
        write_safetensors(out / "final_adapter.safetensors", {k: params[k].detach().contiguous() for k in keys},
                          {**meta, "what": f"A, B after {STEPS} AdamW steps, float32"})
    n_targets = int((labels[:, 1:] != -100).sum())
    ref = {
        "source": source,
        "r": r, "lora_alpha": ALPHA, "lora_dropout": 0.0,
        "target_modules": targets,
        "ids": ids, "labels": labels.tolist(),
        "num_targets": n_targets,
        "loss": float(loss), "loss_fp64": float(loss64),
        "adamw": {"lr": LR, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "steps": STEPS},
        "losses": losses, "final_loss": final_loss,
        "losses_fp64": losses64, "final_loss_fp64": final64,
        # torch float32 against float64, by the measures the C++ test uses:
        "torch_fp32_vs_fp64": {
            "loss_rel": abs(float(loss) - float(loss64)) / float(loss64),
            "grads_max_rel": fp32_grad_rel,  # per tensor, max |diff| / max |fp64|
            "curve_max_rel": fp32_curve_rel,  # 20 losses and the final one
            "final_params_max_abs": fp32_final_param,
        },
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"{name}: loss {float(loss):.7f} (fp64 {float(loss64):.7f}), {len(keys)} LoRA tensors, grads fp32 vs fp64 "
          f"max rel {fp32_grad_rel:.2e}; loss {losses[0]:.5f} -> {losses[-1]:.5f} -> {final_loss:.5f}, curve fp32 "
          f"vs fp64 max rel {fp32_curve_rel:.2e}, final params max abs {fp32_final_param:.2e}")
    return out


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float()


def peft_logits(name: str, base_fn, adapter_dir: Path, ids: list[int], last_only: bool, source: str) -> None:
    """Logits of PeftModel.from_pretrained(base, adapter_dir) and of the base alone."""
    from peft import PeftModel
    base = base_fn()
    plain = logits_of(base, ids)
    pm = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with_adapter = logits_of(pm, ids)
    if last_only:
        plain, with_adapter = plain[-1:], with_adapter[-1:]
    diff = float((with_adapter - plain).abs().max())
    write_safetensors(OUT / name / "peft_logits.safetensors",
                      {"logits": with_adapter.contiguous(), "base_logits": plain.contiguous()},
                      {"source": source + "; PeftModel.from_pretrained(base, initial_adapter/), eval",
                       "generator": "tools/make_train_parity_fixtures.py", "ids": json.dumps(ids),
                       "last_only": str(last_only).lower()})
    print(f"{name}: PEFT logits {tuple(with_adapter.shape)}, adapter moves them by up to {diff:.3f}")


def qlora_adapter(qlora_bin: str | None) -> None:
    """The qlora.cpp -> PEFT direction: an adapter written by `qlora train` (regenerated when
    --qlora is given, else the committed one), loaded by PeftModel.from_pretrained."""
    from peft import PeftModel
    d = OUT / "qlora_adapter"
    if qlora_bin:
        shutil.rmtree(d, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "stories.txt"
            data.write_text("\n\n".join(STORIES_TEXTS * 4) + "\n")
            cmd = [qlora_bin, "train", "--model", str(DATA / "stories260K" / "stories260K.bin"), "--data", str(data),
                   "--out", str(d), "--overwrite-output-dir", "--quant", "nf4", "--blocksize", "64", "--lora-r", "4", "--lora-alpha", "8",
                   "--lora-dropout", "0", "--target", "all-linear", "--lr", "1e-2", "--max-steps", "10",
                   "--batch-size", "2", "--seq-len", "32", "--seed", "3", "--threads", "1", "--quiet"]
            subprocess.run(cmd, check=True)
        # Only the adapter itself: metrics.jsonl (timings), loss plots, checkpoints are not needed.
        for p in d.iterdir():
            if p.name not in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = "stories260K"  # the CLI writes the --model path
        (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if not (d / "adapter_model.safetensors").exists():
        raise SystemExit(f"{d} missing: run with --qlora build/qlora")
    ids = llama2c_encode(STORIES_PROMPT, DATA / "stories260K" / "tok512.bin")
    base = stories_base()
    plain = logits_of(base, ids)
    pm = PeftModel.from_pretrained(base, str(d)).eval()
    # PEFT holds exactly the weights qlora wrote (no transposition or renaming on the way).
    from safetensors.torch import load_file
    ours = load_file(str(d / "adapter_model.safetensors"))
    got = lora_params(pm)
    assert sorted(ours) == sorted(got), (sorted(ours)[:3], sorted(got)[:3])
    for k, v in ours.items():
        assert torch.equal(got[k].detach(), v), k
    logits = logits_of(pm, ids)
    write_safetensors(OUT / "qlora_adapter_logits.safetensors",
                      {"logits": logits.contiguous(), "base_logits": plain.contiguous()},
                      {"source": "PeftModel.from_pretrained(stories260K NF4 base, qlora_adapter/) float32 logits",
                       "generator": "tools/make_train_parity_fixtures.py", "ids": json.dumps(ids)})
    print(f"qlora_adapter: {len(ours)} tensors loaded by PEFT bit-exact; logits {tuple(logits.shape)}, adapter "
          f"moves them by up to {float((logits - plain).abs().max()):.3f}")


def main() -> None:
    import bitsandbytes
    import peft
    import transformers
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--qlora", help="qlora binary: regenerate qlora_adapter/ with `qlora train`")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    patch_rmsnorm_for_fp64()
    OUT.mkdir(parents=True, exist_ok=True)
    versions = (f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}, "
                f"bitsandbytes {bitsandbytes.__version__}")

    tok = DATA / "stories260K" / "tok512.bin"
    s_ids = [llama2c_encode(t, tok)[:32] for t in STORIES_TEXTS]
    assert all(len(x) == 32 for x in s_ids)
    src = f"{versions}: stories260K.bin -> LlamaForCausalLM float32, block Linears NF4 round trip (bs 64)"
    d = train_fixture("stories260k", stories_base, 4, "all-linear", 1, s_ids, STORIES_IGNORE, src, True)
    p_ids = llama2c_encode(STORIES_PROMPT, tok)
    peft_logits("stories260k", stories_base, d / "initial_adapter", p_ids, False, src)

    if not args.skip_smollm2:
        from transformers import AutoTokenizer
        if not (MODELS / GGUF).exists():
            raise SystemExit(f"{MODELS / GGUF} missing: run scripts/fetch_model.sh (or --skip-smollm2)")
        t = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
        text = (DATA / "text" / "tinyshakespeare.txt").read_text()[:2000]
        all_ids = t(text)["input_ids"]
        m_ids = [all_ids[0:48], all_ids[48:96]]
        src = f"{versions}: {GGUF} via transformers' GGUF loader, float32, block Linears NF4 round trip (bs 64)"
        d = train_fixture("smollm2", smollm2_base, 2, ["q_proj", "v_proj"], 2, m_ids, SMOL_IGNORE, src, False)
        peft_logits("smollm2", smollm2_base, d / "initial_adapter", t(SMOL_PROMPT)["input_ids"], True, src)

    qlora_adapter(args.qlora)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{OUT}: {total / 1024:.0f} KB")


if __name__ == "__main__":
    main()
