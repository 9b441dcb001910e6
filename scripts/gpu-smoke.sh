#!/usr/bin/env bash
# GPU smoke check (issue 13): random Llama-3.1-8B-shaped experts made on the GPU, `hubswap build
# --no-eval` timed against `cp -r`, a full build with the transformers backend on CUDA (--limit 16),
# the result loaded with from_pretrained(device_map="cuda"). One line per step; see
# scripts/gpu_smoke.py for the steps, and `scripts/gpu-smoke.sh --help` for the options.
#
#   scripts/gpu-smoke.sh [--wheels DIR] [--mgsm DIR] [--work DIR] [--logs DIR] [--bench] [--keep] [--gpus N|auto]
#   (--gpus: the evaluation through [eval] gpus' scheduler, and vLLM with tensor_parallel_size=1 when present)
#   scripts/gpu-smoke.sh --tiny      # a 6-layer shape on the CPU: checks the script itself
#
# On a host without network, and without some of hubswap's dependencies, bring them as wheels in
# a folder (default .whl/, ignored by git); they are installed into <work>/site for this run only
# (`pip install --no-index --no-deps --target`), never into the host's Python. For a Python 3.12
# host with torch, transformers, huggingface_hub, safetensors, numpy, jinja2, tqdm, pyarrow,
# pandas and accelerate already there (the H200 device host), on a machine with network:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#       pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#       datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 evaluate==0.4.6
#
# (4 MB) and an MGSM copy in the juletxara/mgsm layout, e.g. `cp -r ../shared/mgsm .mgsm` (2.5 MB;
# .mgsm/ is ignored by git and found by default). The env step names any module still missing.
# Needs about 50 GB free disk in the work folder (default .smoke/) and ~5 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
wheels=""
work="$PWD/.smoke"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels=$2; shift 2 ;;
        --wheels=*) wheels=${1#*=}; shift ;;
        --work) work=$2; shift 2 ;;
        --work=*) work=${1#*=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
[ -z "$wheels" ] && [ -d .whl ] && wheels=.whl
mkdir -p "$work"
work=$(cd "$work" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$wheels" ]; then
    site="$work/site"
    rm -rf "$site"
    trap 'rm -rf "$site"' EXIT
    shopt -s nullglob
    whl=("$wheels"/*.whl)
    if [ ${#whl[@]} -eq 0 ]; then
        echo "smoke env: FAILED: no .whl files in $wheels" >&2
        exit 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --target "$site" "${whl[@]}"
    echo "smoke wheels: ${#whl[@]} wheels from $wheels installed into $site for this run"
    export PYTHONPATH="$site:$PYTHONPATH"
fi
"$PY" scripts/gpu_smoke.py --work "$work" ${args[@]+"${args[@]}"}
