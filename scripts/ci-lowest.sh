#!/usr/bin/env bash
# CI leg: the versions pyproject.toml declares are versions tested. Installs the LOWEST versions
# of hubswap's direct dependencies that pyproject allows (uv --resolution lowest-direct) into a
# venv of its own, then runs the merge, preflight and Hub tests there.
#
# torch is the one exception: only torch 2.13.0's CPU build is at hand (/opt/wheels), and any
# torch from PyPI is a multi-GB CUDA build, so it is pinned to that wheel by an override.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOWEST_VENV:-.venv-lowest}
PY=${PYTHON:-python3.11}  # /opt/wheels holds cp311 wheels
UV=${UV:-.venv/bin/uv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s\n' triton torchvision torchaudio torchcodec >"$work/excludes"
printf '%s\n' "torch==2.13.0+cpu" >"$work/overrides"
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
rm -rf "$VENV"
"$UV" venv -q --python "$PY" "$VENV"
UV_NO_CONFIG=1 "$UV" pip install -q -p "$VENV/bin/python" --compile-bytecode --resolution lowest-direct \
    "${find_links[@]}" --excludes "$work/excludes" --overrides "$work/overrides" \
    -e ".[demo]" "pytest>=8" "hypothesis>=6.100"
"$UV" pip list -p "$VENV/bin/python" 2>/dev/null |
    grep -Ei '^(huggingface.hub|safetensors|pydantic|numpy|tqdm|jinja2|torch|transformers|tokenizers) '
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_swap.py tests/test_compat.py \
    tests/test_real_traits.py tests/test_hub.py tests/test_hub_publish.py
