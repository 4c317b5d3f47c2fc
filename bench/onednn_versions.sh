#!/usr/bin/env bash
# Debian's oneDNN 2.6 (what qlora links) against PyPI's newer oneDNN (onednn-cpu-gomp: 3.x,
# GNU OpenMP, no other dependencies) on dnnl_sgemm, same machine, same run, 2 threads:
#   bash bench/onednn_versions.sh
# Downloads the wheel into .onednn3/ (gitignored) on first use; needs pip (.refenv's or the
# system's) and g++.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-$( [ -x .refenv/bin/pip ] && echo .refenv/bin/pip || echo pip3 )}
DIR=.onednn3
if [ -z "$(find $DIR -name libdnnl.so.3 2>/dev/null)" ]; then
  mkdir -p $DIR
  "$PIP" download --no-deps -d $DIR onednn-cpu-gomp >&2
  (cd $DIR && python3 -m zipfile -e onednn_cpu_gomp-*.whl .)
fi
NEW=$(find $DIR -name 'libdnnl.so.3' | head -1)
OLD=$(ldconfig -p | awk '/libdnnl.so.2 /{print $NF; exit}')
g++ -O2 -std=c++20 bench/onednn_versions.cpp -o $DIR/onednn_versions -ldl
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg); OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}"
for lib in "$OLD" "$NEW"; do
  echo "## $lib"
  OMP_WAIT_POLICY=passive OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} $DIR/onednn_versions "$lib"
done
