"""scripts/mutants.py stays runnable: each mutation's text is still in its file exactly once, and
each test it names still exists. (A comment edited in hubswap/swap.py once left `make mutants`
stopping with exit 2 before it ran anything: this says so at once, in the fast tier.)"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _mutants():
    spec = importlib.util.spec_from_file_location("mutants", REPO / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.MUTANTS


MUTANTS = _mutants()


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_the_mutation_still_applies_and_its_tests_exist(mutant):
    text = (REPO / mutant.path).read_text(encoding="utf-8")
    for old, new in mutant.edits:
        assert text.count(old) == 1, f"{mutant.path} holds {text.count(old)}x {old!r}"
        assert new != old
    assert mutant.tests
    for test in mutant.tests:
        path, _, name = test.partition("::")
        source = (REPO / path).read_text(encoding="utf-8")
        if name:
            function = name.split("::")[-1].split("[")[0]
            assert re.search(rf"^\s*def {re.escape(function)}\(", source, re.M), f"{test}: no such test"


def test_the_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
