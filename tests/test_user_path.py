"""A user's mistakes and hostile surroundings, each through the real command (issue 25): folders
that cannot be written (a real read-only mount), bad flags, rebuilds, an unreachable Hub, wrong
diagnoses and machine paths in what is published.

The models are the numpy family (tests/support/numpy_family.py): real safetensors, no torch, so
everything here that evaluates nothing runs in the fast tier.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubswap.errors import EXIT_CODES
from tests.support.cli import run_hubswap
from tests.support.filesystems import read_only_mount
from tests.support.recipes import write_recipe


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """base/task/language of 6 layers, written with numpy (the tokenizer with `tokenizers`)."""
    from tests.support.numpy_family import make_family, write_tokenizer

    root = tmp_path_factory.mktemp("family")
    return make_family(root / "experts", write_tokenizer(root / "tokenizer"))


def one_line(r, code: int) -> str:
    """The run failed with ``code`` (a documented one) in one error line, maybe a hint, and no
    traceback; returns the error line."""
    assert code in EXIT_CODES
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


# -- item 1: a folder that cannot be written ------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "eval", "analyze", "sweep"])
def test_an_output_folder_on_a_read_only_filesystem_is_one_line(command, family, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", family, eval={"dataset": str(tmp_path / "no-mgsm")})
    with read_only_mount(tmp_path / "ro") as ro:
        out = ro / "out"
        args = {"build": ["build", recipe, "--no-eval"], "eval": ["eval", family["task"], "--limit", "2"],
                "analyze": ["analyze", recipe], "sweep": ["sweep", recipe, "--bottom", "1..2", "--top", "1"]}
        r = run_hubswap(*args[command], "-o", out, cwd=tmp_path)
        assert one_line(r, 10) == f"error: cannot write to {out}: its filesystem is read-only"
        assert "hint: write elsewhere: pass --output DIR" in r.stderr
        assert os.listdir(ro) == []


def test_lock_beside_a_recipe_on_a_read_only_filesystem_is_one_line(family, tmp_path):
    from tests.support.recipes import recipe_toml

    with read_only_mount(tmp_path / "ro", files={"r.toml": recipe_toml(family)}) as ro:
        r = run_hubswap("lock", ro / "r.toml", cwd=tmp_path)
        assert one_line(r, 10) == f"error: cannot write to {ro}: its filesystem is read-only"
        assert "hint: copy the recipe (and its lock) to a writable folder" in r.stderr
        assert os.listdir(ro) == ["r.toml"]


def test_a_small_read_only_filesystem_is_read_only_not_full(family, tmp_path):
    """The merge (2.2 MB) does not fit in 1 MB either: read-only is what the user must hear."""
    recipe = write_recipe(tmp_path / "r.toml", family)
    with read_only_mount(tmp_path / "ro", "1m") as ro:
        r = run_hubswap("build", recipe, "--no-eval", "-o", ro / "b", cwd=tmp_path)
        assert one_line(r, 10) == f"error: cannot write to {ro / 'b'}: its filesystem is read-only"
        assert "space" not in r.stderr


# -- item 3: --limit is a count -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "eval", "sweep"])
def test_a_negative_limit_is_refused_by_every_command(command, family, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", family)
    args = {"build": ["build", recipe, "--no-eval"], "eval": ["eval", family["task"]],
            "sweep": ["sweep", recipe, "--bottom", "1", "--top", "1"]}
    r = run_hubswap(*args[command], "--limit", "-3", "-o", tmp_path / "out", cwd=tmp_path)
    assert one_line(r, 7) == "error: --limit -3: a number of questions must be 0 or more"
    assert not (tmp_path / "out").exists()
