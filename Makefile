# The two commands of the README's quick start, plus the checks CI runs.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint install workflows bench mutants
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) scripts/install.sh

demo: install  ## tiny experts made on the spot, the whole pipeline offline on the CPU
	$(BIN)/hubswap demo --output demo

test: install workflows  ## lint, then the whole test suite (real vLLM on the CPU, real Hub protocol)
	$(BIN)/ruff check hubswap tests bench
	$(BIN)/python -m pytest -q

test-fast: install  ## the logic tier: no torch, vLLM, venvs or wheels (seconds; tests/conftest.py enforces the tiers)
	$(BIN)/python -m pytest -q -m "not engine and not install"

lint: install
	$(BIN)/ruff check hubswap tests bench

workflows: install  ## the GitHub Actions workflows, offline: security audit and schema
	$(BIN)/zizmor --offline --no-progress .github/workflows
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

bench: install  ## two cases (bf16, float32 language expert) vs cp, floor, naive, mergekit; two timings; the bf16 conversions; then cloning on an XFS image (root); writes docs/PERFORMANCE.md (~30 min, ~25 GB)
	$(BIN)/python bench/merge.py
	$(BIN)/python bench/bf16.py
	if [ "$$(id -u)" = 0 ]; then $(BIN)/python bench/clone.py; else echo "bench/clone.py skipped: it mounts an XFS image (run as root)"; fi

mutants: install  ## the mutation check: ~40 hand-written bugs in the core modules, each against the tests that claim it, in a copy of the tree (~9 min)
	$(BIN)/python scripts/mutants.py
