#!/usr/bin/env python3
"""The Python side of the training benchmarks in bench/RESULTS.md: transformers + PEFT LoRA
training on SmolLM2-135M-Instruct, set up the way `qlora train` runs, so the two can be put
side by side (bench/train_vs_python.sh, bench/instruct_epoch.sh).

Run with the reference environment from the repository root:

    .refenv/bin/python tools/bench_train_python.py speed --stack bnb-nf4 --batch-size 2 --seq-len 256 --steps 6 --threads 2
    .refenv/bin/python tools/bench_train_python.py epoch --stack fp32 [--data ../shared/data/text/instruction-data.json]

Both print one JSON object on stdout (progress goes to stderr).

Stacks (--stack):
  fp32     the "16-bit LoRA" baseline as close as the CPU allows: every weight in float32 (the GGUF
           dequantized to float32 by transformers, bit-identical to qlora's own dequantization),
           PEFT LoRA on top.
  bnb-nf4  QLoRA in Python: transformers' BitsAndBytesConfig(load_in_4bit, nf4, double quant,
           compute dtype float32) quantizing that same float32 checkpoint on load, then PEFT's
           prepare_model_for_kbit_training (it casts the non-quantized parameters to float32,
           which they already are, enables gradient checkpointing and input gradients) as the
           QLoRA repository does. bitsandbytes >= 0.48 on a CPU with AVX512-BF16 would run eval
           forwards (no grad, eval mode) through a bfloat16 repacked path; it is switched off
           here (--bnb-cpu-fast-path to keep it), so every matmul is float32 like qlora's.
  Both: LoRA r/alpha/dropout from the command line on all-linear (PEFT's "all-linear": every
  nn.Linear / Linear4bit of the blocks, not lm_head: 7 per layer, 210 modules, the same set as
  qlora's --target all-linear), bias none, gradient checkpointing per decoder layer (reentrant,
  with input gradients enabled: what prepare_model_for_kbit_training does; qlora checkpoints
  per block too, its default), torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0: HF
  Trainer's adamw_torch), transformers' get_scheduler, clip_grad_norm_ (like HF Trainer).
  The training loop is written out here instead of going through HF Trainer so that the loss
  normalisation, the batches and the timing are exactly those of qlora (see below); it does what
  Trainer's inner loop does (forward, backward, clip, optimizer step, scheduler step).

The model directory (--model-dir, default models/smollm2-hf) is the float32 Hugging Face
checkpoint made from models/SmolLM2-135M-Instruct.Q4_1.gguf (from_pretrained(gguf_file=...,
dtype=float32) + save_pretrained, as tools/check_bnb_interop.py does); it is built on first use
when missing (about 550 MB under models/, gitignored).

speed: --steps optimizer steps of --batch-size sequences of --seq-len tokens (grad accum 1) on
  Tiny Shakespeare (../shared/data/text/tinyshakespeare.txt, --text), tokenized the way qlora
  reads a plain text file: prefix + tokens(text) + EOS, cut into chunks of seq_len + 1 tokens
  overlapping by one, each chunk giving seq_len input positions all trained; chunks drawn in
  a seeded random order (full-length ones only). So both sides process batch_size * seq_len
  tokens per step, the count qlora's metrics.jsonl uses. tokens/s excludes step 1 (warm-up):
  tokens of steps 2..N / wall time of steps 2..N, each step timed from zero_grad through the
  optimizer and scheduler step. Memory: peak_rss_bytes is getrusage(RUSAGE_SELF).ru_maxrss of
  the whole process (imports, model load, training: what qlora's "peak memory (RSS)" line and
  /usr/bin/time report); train_peak_rss_bytes is the kernel's VmHWM reset (/proc/self/clear_refs
  5) just before step 1, i.e. the peak while training only; step_rss_max_bytes is the largest
  current RSS sampled after each step (what qlora's metrics.jsonl rss_bytes samples).

epoch: one epoch (--epochs) of LoRA on the first 1 - eval_split of the Alpaca records of --data,
  eval loss on the held-out last eval_split before and after. Reproduces qlora's data path
  (src/train/sft_dataset.cpp; tools/make_sft_fixtures.py checks the tokens match id for id):
    - each record: prompt = QLoRA's ALPACA_PROMPT_DICT (prompt_input when "input" is a non-empty
      string, else prompt_no_input), tokens = tokens(prompt) + tokens(output) + [EOS] with each
      piece tokenized alone (add_special_tokens=False; SmolLM2 adds no BOS), EOS not repeated if
      the output already ends with it; loss only on output tokens and EOS;
    - records longer than seq_len + 1 tokens truncated to their first seq_len + 1 (dropped if no
      response token is left), as qlora's default --on-too-long truncate;
    - eval split: the last llround(eval_split * n) examples; examples without targets dropped;
    - one sequence per example (no packing): inputs tokens[:-1], targets tokens[1:] where trained
      else -100 (the same positions qlora computes; HF's labels= would feed the last token too);
    - steps = ceil(epochs * n_train / (batch * grad_accum)); sequences drawn from a seeded
      shuffled order that reshuffles when exhausted, so the last step is full (qlora does the
      same; HF Trainer would make it short). The order itself differs from qlora's (different
      RNG), as does the LoRA A initialisation (same kaiming-uniform distribution, B = 0);
    - a step's loss/gradient: sum of the token losses of all its sequences (all micro-batches) /
      number of target tokens in the step (qlora's weighting; transformers >= 4.46 Trainer with
      num_items_in_batch does the same). Micro-batches are right-padded (pad tokens attend to
      nothing, have no target, and are not counted as tokens);
    - eval loss: sum of the token losses over all held-out sequences / number of target tokens,
      dropout off, no grad, one sequence at a time by default (--eval-batch-size).
  warmup steps = ceil(warmup_ratio * steps) (HF's and qlora's rule).

--max-steps (epoch) overrides --epochs like qlora's (for smoke tests); --metrics FILE appends
per-step JSON lines.
"""
import argparse
import json
import math
import os
import random
import resource
import shutil
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIR = os.path.join(ROOT, "models", "smollm2-hf")
DEFAULT_TEXT = os.path.join(ROOT, "..", "shared", "data", "text", "tinyshakespeare.txt")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "text", "instruction-data.json")

# QLoRA's qlora.py ALPACA_PROMPT_DICT (the same strings as src/train/sft_dataset.cpp and
# tools/make_sft_fixtures.py).
ALPACA_PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: "
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response: "
    ),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_hwm():
    """Resets the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_status(key):
    """A "kB" field of /proc/self/status in bytes (VmHWM, RssAnon, RssFile), None if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def vm_hwm():
    return proc_status("VmHWM")


# ---- model ----------------------------------------------------------------------------------

def build_hf_dir(model_dir):
    """The float32 Hugging Face directory made from the GGUF (as tools/check_bnb_interop.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    models = os.path.join(ROOT, "models")
    if not os.path.exists(os.path.join(models, GGUF)):
        sys.exit(f"{model_dir} is missing and so is models/{GGUF} (scripts/fetch_model.sh)")
    log(f"building {model_dir} from models/{GGUF} (once)")
    m = AutoModelForCausalLM.from_pretrained(models, gguf_file=GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(models, gguf_file=GGUF)
    m.hf_quantizer = None
    if hasattr(m.config, "quantization_config"):
        del m.config.quantization_config
    tmp = model_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    m.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.rename(tmp, model_dir)


def ensure_model_dir(model_dir):
    """Builds the default model directory from the GGUF when it is missing (tokenizer and
    weights are both read from it)."""
    if os.path.exists(os.path.join(model_dir, "model.safetensors")):
        return
    if os.path.abspath(model_dir) != os.path.abspath(DEFAULT_MODEL_DIR):
        sys.exit(f"{model_dir}: no model.safetensors")
    # Built in a child process so that its memory does not count in this one's peak RSS.
    import subprocess
    subprocess.run([sys.executable, os.path.abspath(__file__), "build-model-dir", "--model-dir", model_dir],
                   check=True)


def load_model(args):
    """Base model of the chosen stack + PEFT LoRA, ready to train. Returns (model, info)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    model_dir = args.model_dir
    ensure_model_dir(model_dir)

    t0 = time.perf_counter()
    if args.stack == "fp32":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu")
        if not args.no_gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
    else:
        from transformers import BitsAndBytesConfig
        import bitsandbytes as bnb
        # --compute-dtype bf16: the QLoRA recipe's bf16 compute (weights loaded in bf16 too,
        # as the QLoRA repository's torch_dtype=bfloat16; prepare_model_for_kbit_training then
        # upcasts what is not 4-bit to float32).
        cdt = torch.bfloat16 if args.compute_dtype == "bf16" else torch.float32
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=cdt)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=cdt, device_map="cpu",
                                                     quantization_config=qc)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=not args.no_gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": True})
        n4 = 0
        for mod in model.modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                n4 += 1
                if not args.bnb_cpu_fast_path:
                    mod.support_avx512bf16_for_cpu = False
        if n4 == 0:
            sys.exit("bnb-nf4: no bitsandbytes Linear4bit in the loaded model")
    load_s = time.perf_counter() - t0

    torch.manual_seed(args.seed)
    cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                     target_modules=args.target_modules.split(",") if args.target_modules != "all-linear" else "all-linear",
                     bias="none", task_type="CAUSAL_LM",
                     target_parameters=args.target_parameters.split(",") if args.target_parameters else None)
    model = get_peft_model(model, cfg)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_lora = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    info = {"load_s": round(load_s, 2), "gradient_checkpointing": not args.no_gradient_checkpointing, "lora_modules": n_lora, "trainable_params": trainable,
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    log(f"{args.stack}: loaded in {load_s:.1f} s, LoRA r {args.lora_r} on {n_lora} modules, "
        f"{trainable} trainable parameters, attention {info['attn_implementation']}")
    return model, info


def make_optimizer(model, args, total_steps):
    import torch
    from transformers import get_scheduler
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)
    warmup = math.ceil(total_steps * args.warmup_ratio)
    sched = get_scheduler(args.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=total_steps)
    return params, opt, sched, warmup


def micro_batch_tensors(seqs, pad_id):
    """Right-padded input ids, targets (-100 where none), attention mask for a list of
    (inputs, targets) sequences."""
    import torch
    T = max(len(s[0]) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(seqs), T), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, (inp, tg) in enumerate(seqs):
        ids[b, :len(inp)] = torch.tensor(inp)
        tgt[b, :len(tg)] = torch.tensor(tg)
        att[b, :len(inp)] = 1
    return ids, tgt, att


def loss_sum(model, ids, tgt, att):
    """Sum of the token cross-entropies over the positions with a target (float32 logits)."""
    import torch.nn.functional as F
    same_len = bool(att.all())
    out = model(input_ids=ids, attention_mask=None if same_len else att, use_cache=False)
    logits = out.logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=-100,
                           reduction="sum")


def train_step(model, params, opt, sched, micro_batches, pad_id, max_grad_norm):
    """One optimizer step over the micro-batches (lists of (inputs, targets)). Returns the
    step's mean loss per target token, the gradient norm before clipping and the lr used."""
    import torch
    n_targets = sum(sum(1 for t in tg if t != -100) for mb in micro_batches for _, tg in mb)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for mb in micro_batches:
        ids, tgt, att = micro_batch_tensors(mb, pad_id)
        ls = loss_sum(model, ids, tgt, att)
        (ls / max(1, n_targets)).backward()
        total += float(ls.detach())
    lr = opt.param_groups[0]["lr"]
    if max_grad_norm > 0:
        gn = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    else:
        gn = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
    skipped = not math.isfinite(gn) or n_targets == 0
    if not skipped:
        opt.step()
    sched.step()
    return total / max(1, n_targets), gn, lr, skipped


# ---- data -----------------------------------------------------------------------------------

def load_tokenizer(args):
    from transformers import AutoTokenizer
    ensure_model_dir(args.model_dir)
    if not os.path.exists(os.path.join(args.model_dir, "tokenizer.json")):
        sys.exit(f"{args.model_dir}: no tokenizer.json")
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    with_special = tok("x", add_special_tokens=True)["input_ids"]
    prefix = with_special[: len(with_special) - len(enc("x"))]
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    return tok, enc, prefix, eos, pad


def alpaca_example(rec, enc, prefix, eos):
    """(tokens, mask) of one Alpaca record as src/train/sft_dataset.cpp builds it, or None for a
    record qlora would skip as bad."""
    if not isinstance(rec, dict):
        return None
    ins, out, inp = rec.get("instruction"), rec.get("output"), rec.get("input")
    if not isinstance(ins, str) or not isinstance(out, str) or not (inp is None or isinstance(inp, str)):
        return None
    inp = inp or ""
    key = "prompt_input" if inp else "prompt_no_input"
    prompt = ALPACA_PROMPT_DICT[key].format(instruction=ins, input=inp)
    tokens, mask = list(prefix), [0] * len(prefix)
    for text, trained in ((prompt, 0), (out, 1)):
        if text:
            ids = enc(text)
            tokens += ids
            mask += [trained] * len(ids)
    if eos is not None and (not tokens or tokens[-1] != eos):
        tokens.append(eos)
        mask.append(1)
    if mask:
        mask[0] = 0
    return tokens, mask


def load_alpaca(path, enc, prefix, eos, seq_len):
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            records = [json.loads(line) for line in f if line.strip()]
        else:
            records = json.load(f)
    examples, skipped, truncated = [], 0, 0
    for rec in records:
        ex = alpaca_example(rec, enc, prefix, eos)
        if ex is None:
            skipped += 1
            continue
        tokens, mask = ex
        if len(tokens) > seq_len + 1:
            tokens, mask = tokens[: seq_len + 1], mask[: seq_len + 1]
            truncated += 1
            if not any(mask[1:]):
                skipped += 1
                continue
        examples.append((tokens, mask))
    return examples, len(records), skipped, truncated


def split_eval(examples, fraction):
    n = len(examples)
    k = int(math.floor(fraction * n + 0.5)) if fraction > 0 else 0  # llround (fraction*n >= 0)
    if fraction > 0 and (k == 0 or k == n):
        sys.exit(f"eval split {fraction} of {n} examples leaves an empty side")
    return examples[: n - k], examples[n - k:]


def to_sequences(examples):
    """One (inputs, targets) per example with at least one target."""
    seqs = []
    for tokens, mask in examples:
        if not any(mask[1:]):
            continue
        inputs = tokens[:-1]
        targets = [tokens[i + 1] if mask[i + 1] else -100 for i in range(len(tokens) - 1)]
        seqs.append((inputs, targets))
    return seqs


def n_targets(seqs):
    return sum(sum(1 for t in tg if t != -100) for _, tg in seqs)


def evaluate(model, seqs, pad_id, batch_size):
    import torch
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            mb = seqs[i:i + batch_size]
            ids, tgt, att = micro_batch_tensors(mb, pad_id)
            total += float(loss_sum(model, ids, tgt, att))
            count += int((tgt != -100).sum())
    model.train()
    return total / max(1, count), count


class OrderStream:
    """Sequence indices in a seeded random order, reshuffled each time it runs out (qlora's
    trainer draws its batches the same way)."""

    def __init__(self, n, seed):
        self.n, self.rng, self.order, self.next = n, random.Random(seed), [], 0

    def take(self):
        if self.next >= len(self.order):
            self.order = list(range(self.n))
            self.rng.shuffle(self.order)
            self.next = 0
        self.next += 1
        return self.order[self.next - 1]


# ---- subcommands ----------------------------------------------------------------------------

def set_threads(args):
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def cmd_speed(args):
    t_start = time.perf_counter()
    threads = set_threads(args)
    import torch
    import transformers
    import peft
    tok, enc, prefix, eos, pad = load_tokenizer(args)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    ids = list(prefix) + enc(text) + ([eos] if eos is not None else [])
    L = args.seq_len
    chunks = [ids[s:s + L + 1] for s in range(0, len(ids) - 1, L)]
    chunks = [c for c in chunks if len(c) == L + 1]
    need = args.steps * args.batch_size
    if len(chunks) < need:
        sys.exit(f"{args.text}: only {len(chunks)} chunks of {L + 1} tokens, {need} needed")
    stream = OrderStream(len(chunks), args.seed)

    model, info = load_model(args)
    params, opt, sched, _ = make_optimizer(model, args, args.steps)
    rss_after_load = rss_now()
    hwm_reset = reset_hwm()
    steps, step_rss_max = [], 0
    for step in range(1, args.steps + 1):
        batch = []
        for _ in range(args.batch_size):
            c = chunks[stream.take()]
            batch.append((c[:-1], c[1:]))
        t0 = time.perf_counter()
        loss, gn, lr, skipped = train_step(model, params, opt, sched, [batch], pad, args.max_grad_norm)
        dt = time.perf_counter() - t0
        tokens = sum(len(b[0]) for b in batch)
        r = rss_now()
        step_rss_max = max(step_rss_max, r)
        steps.append({"step": step, "loss": loss, "seconds": dt, "tokens": tokens, "rss_bytes": r})
        log(f"step {step}/{args.steps}: loss {loss:.4f} grad_norm {gn:.3f} {dt:.2f} s {tokens / dt:.1f} tok/s "
            f"rss {r / 2**20:.0f} MiB")
        if args.metrics:
            with open(args.metrics, "a") as f:
                f.write(json.dumps(steps[-1]) + "\n")
    timed = steps[1:] if len(steps) > 1 else steps
    tok_s = sum(s["tokens"] for s in timed) / sum(s["seconds"] for s in timed)
    out = {
        "bench": "speed", "stack": args.stack, "threads": threads, "batch_size": args.batch_size,
        "seq_len": L, "steps": args.steps, "lora_r": args.lora_r, "data": "tinyshakespeare chunks" if
        args.text == DEFAULT_TEXT else args.text,
        "tokens_per_step": args.batch_size * L, "tokens_per_s": round(tok_s, 2),
        "tokens_per_s_incl_step1": round(sum(s["tokens"] for s in steps) / sum(s["seconds"] for s in steps), 2),
        "step_seconds": [round(s["seconds"], 3) for s in steps],
        "first_loss": round(steps[0]["loss"], 4), "last_loss": round(steps[-1]["loss"], 4),
        "peak_rss_bytes": peak_rss(), "train_peak_rss_bytes": vm_hwm() if hwm_reset else None,
        "step_rss_max_bytes": step_rss_max, "rss_after_load_bytes": rss_after_load,
        "rss_anon_end_bytes": proc_status("RssAnon"), "rss_file_end_bytes": proc_status("RssFile"),
        "wall_s": round(time.perf_counter() - t_start, 2),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        **info,
    }
    if args.stack == "bnb-nf4":
        import bitsandbytes as bnb
        out["versions"]["bitsandbytes"] = bnb.__version__
        out["bnb_cpu_fast_path"] = bool(args.bnb_cpu_fast_path)
    print(json.dumps(out), flush=True)


def cmd_epoch(args):
    t_start = time.perf_counter()
    threads = set_threads(args)
    import torch
    import transformers
    import peft
    tok, enc, prefix, eos, pad = load_tokenizer(args)
    examples, n_records, skipped, truncated = load_alpaca(args.data, enc, prefix, eos, args.seq_len)
    train_ex, eval_ex = split_eval(examples, args.eval_split)
    train_seqs, eval_seqs = to_sequences(train_ex), to_sequences(eval_ex)
    log(f"data: {n_records} records ({skipped} skipped, {truncated} truncated to {args.seq_len + 1} tokens); "
        f"train {len(train_seqs)} sequences, {sum(len(s[0]) for s in train_seqs)} tokens, "
        f"{n_targets(train_seqs)} target tokens; eval {len(eval_seqs)} sequences, {n_targets(eval_seqs)} target tokens")
    micro = args.batch_size * args.grad_accum
    # --max-steps overrides --epochs, the schedule included (as qlora's --max-steps does).
    total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.epochs * len(train_seqs) / micro))

    model, info = load_model(args)
    params, opt, sched, warmup = make_optimizer(model, args, total_steps)
    log(f"plan: {total_steps} steps of {args.batch_size} x {args.grad_accum} sequences"
        f", warmup {warmup}, lr {args.lr} "
        f"({args.lr_scheduler}), max_grad_norm {args.max_grad_norm}")

    t0 = time.perf_counter()
    before, eval_tokens = evaluate(model, eval_seqs, pad, args.eval_batch_size)
    eval0_s = time.perf_counter() - t0
    log(f"eval at step 0: loss {before:.4f}, perplexity {math.exp(before):.3f} ({eval_tokens} tokens) [{eval0_s:.1f} s]")

    stream = OrderStream(len(train_seqs), args.seed)
    train_s, train_tokens, losses = 0.0, 0, []
    for step in range(1, total_steps + 1):
        mbs = [[train_seqs[stream.take()] for _ in range(args.batch_size)] for _ in range(args.grad_accum)]
        t1 = time.perf_counter()
        loss, gn, lr, skipped_step = train_step(model, params, opt, sched, mbs, pad, args.max_grad_norm)
        dt = time.perf_counter() - t1
        tokens = sum(len(s[0]) for mb in mbs for s in mb)
        train_s += dt
        train_tokens += tokens
        losses.append(loss)
        rec = {"step": step, "loss": loss, "lr": lr, "grad_norm": gn, "tokens": tokens, "seconds": dt,
               "skipped": skipped_step}
        if args.metrics:
            with open(args.metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if step == 1 or step % args.log_every == 0 or step == total_steps:
            log(f"step {step}/{total_steps}: loss {loss:.4f} lr {lr:.2e} grad_norm {gn:.3f} "
                f"{train_tokens / train_s:.1f} tok/s rss {rss_now() / 2**20:.0f} MiB")
    t2 = time.perf_counter()
    after, _ = evaluate(model, eval_seqs, pad, args.eval_batch_size)
    eval1_s = time.perf_counter() - t2
    log(f"eval at step {total_steps}: loss {after:.4f}, perplexity {math.exp(after):.3f} ({eval_tokens} tokens) [{eval1_s:.1f} s]")
    if args.save_adapter:
        model.save_pretrained(args.save_adapter)  # a PEFT adapter directory: `qlora eval --adapter` reads it
        log(f"adapter saved to {args.save_adapter}")
    out = {
        "bench": "epoch", "stack": args.stack, "threads": threads, "data": os.path.basename(args.data),
        "records": n_records, "train_sequences": len(train_seqs), "eval_sequences": len(eval_seqs),
        "eval_tokens": eval_tokens, "steps": total_steps, "warmup_steps": warmup,
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "seq_len": args.seq_len, "lr": args.lr,
        "lr_scheduler": args.lr_scheduler, "max_grad_norm": args.max_grad_norm, "seed": args.seed,
        "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout,
        "eval_loss_before": before, "eval_loss_after": after,
        "first_step_loss": losses[0] if losses else None, "last_step_loss": losses[-1] if losses else None,
        "train_tokens": train_tokens, "train_s": round(train_s, 2),
        "tokens_per_s": round(train_tokens / train_s, 2) if train_s > 0 else None,
        "eval_s": round(eval0_s + eval1_s, 2), "peak_rss_bytes": peak_rss(),
        "wall_s": round(time.perf_counter() - t_start, 2),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        **info,
    }
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--stack", choices=["fp32", "bnb-nf4"], default="fp32")
        sp.add_argument("--compute-dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bnb-nf4: bitsandbytes' compute dtype (bf16: the QLoRA recipe, weights loaded in bf16)")
        sp.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                        help="float32 HF checkpoint (default models/smollm2-hf, built from the GGUF if missing)")
        sp.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
        sp.add_argument("--seq-len", type=int, default=256)
        sp.add_argument("--batch-size", type=int, default=2)
        sp.add_argument("--lora-r", type=int, default=16)
        sp.add_argument("--lora-alpha", type=float, default=16)
        sp.add_argument("--lora-dropout", type=float, default=0.05)
        sp.add_argument("--target-modules", default="all-linear",
                        help="PEFT target_modules: all-linear, or comma-separated names (as qlora's --target)")
        sp.add_argument("--target-parameters", default="",
                        help="comma-separated PEFT target_parameters (MoE experts), as qlora's --target-parameters")
        sp.add_argument("--lr", type=float, default=2e-4)
        sp.add_argument("--weight-decay", type=float, default=0.0)
        sp.add_argument("--lr-scheduler", default="constant_with_warmup",
                        choices=["constant", "constant_with_warmup", "linear", "cosine"])
        sp.add_argument("--warmup-ratio", type=float, default=0.03)
        sp.add_argument("--max-grad-norm", type=float, default=0.3)
        sp.add_argument("--seed", type=int, default=42)
        sp.add_argument("--bnb-cpu-fast-path", action="store_true",
                        help="bnb-nf4: keep bitsandbytes' AVX512-BF16 CPU path (bfloat16 matmuls in eval forwards)")
        sp.add_argument("--metrics", help="append per-step JSON lines to this file")
        sp.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="keep all activations (qlora's --no-gradient-checkpointing); default: checkpoint each layer")

    sp = sub.add_parser("speed", help="training throughput and peak memory")
    common(sp)
    sp.add_argument("--steps", type=int, default=6)
    sp.add_argument("--text", default=DEFAULT_TEXT, help="plain text file cut into seq_len + 1 token chunks")

    ep = sub.add_parser("epoch", help="eval loss before/after an epoch of LoRA on Alpaca records")
    common(ep)
    ep.set_defaults(seq_len=512, batch_size=4, lr=5e-4)
    ep.add_argument("--data", default=DEFAULT_DATA)
    ep.add_argument("--eval-split", type=float, default=0.1)
    ep.add_argument("--epochs", type=float, default=1.0)
    ep.add_argument("--grad-accum", type=int, default=1)
    ep.add_argument("--max-steps", type=int, default=0,
                    help="optimizer steps, overriding --epochs (the lr schedule too), as qlora's --max-steps")
    ep.add_argument("--eval-batch-size", type=int, default=1)
    ep.add_argument("--log-every", type=int, default=10)
    ep.add_argument("--save-adapter", help="write the trained PEFT adapter here (to cross-check with qlora eval --adapter)")

    bp = sub.add_parser("build-model-dir", help=argparse.SUPPRESS)
    bp.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)

    args = p.parse_args()
    if args.cmd == "build-model-dir":
        build_hf_dir(args.model_dir)
    elif args.cmd == "speed":
        cmd_speed(args)
    else:
        cmd_epoch(args)


if __name__ == "__main__":
    main()
