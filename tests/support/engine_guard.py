"""The guard that makes the ``engine`` marker true by construction (tests/conftest.py installs it).

Why a guard and not a list kept by hand: a marker written by hand rots the day someone adds
``import torch`` to an unmarked test, and the fast tier silently gets slower (or needs torch
again) without anyone noticing. So:

- at collection, a test module that imports torch, transformers or vLLM at import time is a
  collection error: the stack is imported inside the tests and fixtures that need it, as in
  hubswap itself;
- while a test without ``engine`` runs (its fixtures included), executing any of them raises
  :class:`UnmarkedEngineTest` and the test fails, naming the marker to add; so do CLI processes
  that the test starts through ``tests.support.cli`` (this folder's ``guard_site/sitecustomize.py``
  installs the same guard in them, and reports a refusal to the test through a file).

One limit: an import already done cannot be seen, so in the full run the guard checks the
unmarked tests that run before the first engine test imports the stack. In the fast tier
(``-m "not engine ..."``) no engine test runs, and every unmarked test is checked.
``importlib.util.find_spec("torch")`` probes answer as usual: only executing the module is refused.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

# The ML stack: `import torch` alone costs ~3 s, `import vllm` 15-25 s on these machines.
HEAVY = ("torch", "transformers", "vllm")
TEST_VAR = "HUBSWAP_TEST_WITHOUT_ENGINE"  # the node id of the running test that lacks `engine`
LOG_VAR = "HUBSWAP_TEST_ENGINE_REFUSALS"  # where child processes append what they refused
SITE = Path(__file__).resolve().parent / "guard_site"  # put first on a child's PYTHONPATH


class UnmarkedEngineTest(RuntimeError):  # not an ImportError: `except ImportError` must not hide it
    pass


def loaded() -> set[str]:
    return {m for m in HEAVY if m in sys.modules}


class HeavyImportGuard(importlib.abc.MetaPathFinder):
    def __init__(self, log: str | None = None) -> None:
        self.test: str | None = None  # the unmarked test running now; None: imports are allowed
        self.refused: list[str] = []
        self.log = log

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if self.test is None or top not in HEAVY or top in sys.modules:
            return None
        if importlib.machinery.PathFinder.find_spec(name, path) is None:
            return None
        return importlib.util.spec_from_loader(name, _Refuse(self, name))

    def refuse(self, name: str) -> None:
        self.refused.append(name)
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{name}\n")
        raise UnmarkedEngineTest(f"{self.test} imports {name} but is not marked `engine`: add "
                                 "pytestmark = pytest.mark.engine (or @pytest.mark.engine), or use an engine fixture")


class _Refuse(importlib.abc.Loader):
    def __init__(self, guard: HeavyImportGuard, name: str) -> None:
        self.guard, self.name = guard, name

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        self.guard.refuse(self.name)


def install_in_child() -> None:
    """In a process started by an unmarked test (from guard_site/sitecustomize.py)."""
    test = os.environ.get(TEST_VAR)
    if test:
        guard = HeavyImportGuard(log=os.environ.get(LOG_VAR))
        guard.test = test
        sys.meta_path.insert(0, guard)
