#!/usr/bin/env bash
# CI leg: the versions pyproject.toml declares are versions tested. Installs the LOWEST versions
# of hubswap's direct dependencies that pyproject allows (uv --resolution lowest-direct) into a
# venv of its own, then runs the merge, preflight and Hub tests there.
#
# torch is the one exception: any torch from PyPI is a multi-GB CUDA build, so it is pinned by an
# override to 2.13.0's CPU build, from $WHEELS (/opt/wheels) when a wheel for this Python is
# there, else from the PyTorch CPU index (uv --torch-backend cpu), as scripts/install.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOWEST_VENV:-.venv-lowest}
PY=${PYTHON:-python3.11}
UV=${UV:-.venv/bin/uv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s\n' triton torchvision torchaudio torchcodec >"$work/excludes"
printf '%s\n' "torch==2.13.0+cpu" >"$work/overrides"
WHEELS=${WHEELS:-/opt/wheels}
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if ls "$WHEELS"/torch-2.13.0+cpu-"$tag"-*.whl >/dev/null 2>&1; then
    source_args=(--find-links "$WHEELS")
else
    source_args=(--torch-backend cpu)
fi
rm -rf "$VENV"
"$UV" venv -q --python "$PY" "$VENV"
UV_NO_CONFIG=1 "$UV" pip install -q -p "$VENV/bin/python" --compile-bytecode --resolution lowest-direct \
    "${source_args[@]}" --excludes "$work/excludes" --overrides "$work/overrides" \
    -e ".[demo]" "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
"$UV" pip list -p "$VENV/bin/python" 2>/dev/null |
    grep -Ei '^(huggingface.hub|safetensors|pydantic|numpy|tqdm|jinja2|torch|transformers|tokenizers) '
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_swap.py tests/test_preflight.py \
    tests/test_real_traits.py tests/test_hub.py tests/test_hub_publish.py
