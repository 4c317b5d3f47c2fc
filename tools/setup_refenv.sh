#!/usr/bin/env bash
# Creates .refenv/ (gitignored): the Python reference libraries the fixtures and the
# side-by-side benchmarks come from. Not needed to build or test qlora.cpp; needed to
# regenerate fixtures (tools/make_*_fixtures.py) or to run bench comparisons.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .refenv
.refenv/bin/pip install -q --upgrade pip
.refenv/bin/pip install -q -r tools/requirements-ref.txt
.refenv/bin/python -c "import bitsandbytes, torch; print('bitsandbytes', bitsandbytes.__version__, 'torch', torch.__version__)"
