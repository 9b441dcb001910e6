#!/usr/bin/env bash
# CI leg: the core install (`pip install hubswap`, no torch) on another Python. tests/test_core_install.py
# makes (or reuses) a uv venv of that Python with hubswap's core dependencies from PyPI only and
# runs validate, plan, lock, build --no-eval, push, card and analyze in it. pytest itself runs in .venv ($DEV_VENV).
#   scripts/ci-core.sh 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
dev=${DEV_VENV:-.venv}  # the venv of `make install`, with the dev extra
version=${1:?usage: scripts/ci-core.sh PYTHON_VERSION (3.12, 3.13) or a path to an interpreter}
start=$SECONDS
HUBSWAP_CORE_PYTHON=$version "$dev/bin/python" -m pytest -q -p no:cacheprovider tests/test_core_install.py
echo "core install on Python $version: passed in $((SECONDS - start)) s"
