#!/usr/bin/env python3
"""Times bitsandbytes' CPU dequantize_4bit (NF4) on the tensors bench/bench_dequant.cpp uses.

For each shape, output dtype and thread count it prints GB/s of output written, two ways:
  api    bitsandbytes.functional.dequantize_4bit(packed, quant_state): what a user calls
         (allocates the output tensor on every call);
  kernel the native kernel it ends in (lib.cdequantize_blockwise_cpu_nf4_{fp32,bf16})
         writing into a preallocated tensor, the like-for-like comparison with our kernels.

Thread counts run in child processes with OMP_NUM_THREADS set before torch and the
bitsandbytes library start their OpenMP runtimes (torch.set_num_threads is set too).

Usage: .refenv/bin/python tools/bench_bnb_dequant.py [--threads 1 2] [--reps 20]
"""
import argparse
import ctypes as ct
import os
import statistics
import subprocess
import sys
import time

SHAPES = [(4096, 4096), (2048, 5632)]
BLOCKSIZE = 64


def run_one(threads: int, reps: int) -> None:
    import logging

    logging.disable(logging.WARNING)  # bitsandbytes warns about optional packages
    import torch

    torch.set_num_threads(threads)
    import bitsandbytes.functional as F
    from bitsandbytes.cextension import lib
    from bitsandbytes.functional import get_ptr

    kernels = {torch.float32: lib.cdequantize_blockwise_cpu_nf4_fp32, torch.bfloat16: lib.cdequantize_blockwise_cpu_nf4_bf16}
    names = {torch.float32: "f32", torch.bfloat16: "bf16"}
    torch.manual_seed(0)
    for rows, cols in SHAPES:
        w = torch.randn(rows, cols, dtype=torch.float32) * 0.02
        packed, state = F.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4")
        for dtype in (torch.float32, torch.bfloat16):
            state.dtype = dtype
            out_bytes = rows * cols * torch.finfo(dtype).bits // 8

            def api():
                return F.dequantize_4bit(packed, state)

            out = torch.empty((rows, cols), dtype=dtype)
            a = packed.reshape(rows, cols // 2)
            args = (get_ptr(a), get_ptr(state.absmax), get_ptr(out), ct.c_longlong(BLOCKSIZE),
                    ct.c_longlong(rows), ct.c_longlong(cols))

            def kernel():
                kernels[dtype](*args)

            # The kernel must agree with the API (and the API with the pure-torch definition).
            kernel()
            assert torch.equal(out, api())
            for label, fn in (("api", api), ("kernel", kernel)):
                for _ in range(3):
                    fn()
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                best, med = min(times), statistics.median(times)
                print(f"bnb/{label:6s} nf4 {rows}x{cols} {names[dtype]:4s} threads:{threads}  "
                      f"median {med * 1e3:8.3f} ms  {out_bytes / med / 1e9:7.2f} GB/s   "
                      f"(best {out_bytes / best / 1e9:7.2f} GB/s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        run_one(args.child, args.reps)
        return
    import bitsandbytes

    print(f"bitsandbytes {bitsandbytes.__version__}, blocksize {BLOCKSIZE}", flush=True)
    for t in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(t))
        subprocess.run([sys.executable, __file__, "--child", str(t), "--reps", str(args.reps)], env=env, check=True)


if __name__ == "__main__":
    main()
