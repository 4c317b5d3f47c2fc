#!/usr/bin/env bash
# Two bench_generate binaries (old commit vs new) on the same GEMV benchmarks, alternated round
# by round so a noisy host's drift falls on both; prints min and median microseconds per
# benchmark and new / old of the minimums. One thread, OMP_WAIT_POLICY=passive.
#   bench/ab_gemv.sh OLD_BENCH_GENERATE NEW_BENCH_GENERATE [FILTER='BM_GemvQ4/1/1536/576/'] [ROUNDS=5]
set -euo pipefail
OLD=$1 NEW=$2 FILTER=${3:-BM_GemvQ4/1/1536/576/} ROUNDS=${4:-5}
for _ in $(seq "$ROUNDS"); do
  for tag in old new; do
    bin=$OLD; [[ $tag == new ]] && bin=$NEW
    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 "$bin" --benchmark_filter="$FILTER" --benchmark_min_time=0.2 \
      --benchmark_format=csv 2>/dev/null | grep '^"BM_' | awk -F, -v T=$tag '{print T, $1, $4}'
  done
done | python3 -c "
import sys, collections
d = collections.defaultdict(list)
for l in sys.stdin:
    tag, name, us = l.split(); d[(name.strip('\"'), tag)].append(float(us))
for n in sorted({k[0] for k in d}):
    o, w = sorted(d[(n, 'old')]), sorted(d[(n, 'new')])
    print(f'{n:36s} old min {o[0]:7.1f} med {o[len(o)//2]:7.1f} | new min {w[0]:7.1f} med {w[len(w)//2]:7.1f} | new/old {w[0]/o[0]:.2f}')
"
