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


# -- item 5: a Hub that cannot be reached fails fast ----------------------------------------------


def _dead_port() -> int:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["refused", "unresolvable"])
@pytest.mark.parametrize("command", ["plan", "lock", "build", "eval"])
def test_an_unreachable_hub_is_one_line_within_seconds(command, where, tmp_path):
    import time

    from tests.support.recipes import hub_models

    endpoint = f"http://127.0.0.1:{_dead_port()}" if where == "refused" else "http://nonexistent.invalid"
    recipe = write_recipe(tmp_path / "r.toml", hub_models())
    args = {"plan": ["plan", recipe], "lock": ["lock", recipe], "build": ["build", recipe, "--no-eval"],
            "eval": ["eval", "org/task", "-o", tmp_path / "e"]}[command]
    start = time.monotonic()
    r = run_hubswap(*args, env={"HF_ENDPOINT": endpoint}, cwd=tmp_path)
    took = time.monotonic() - start
    error = one_line(r, 4)
    reason = "connection refused" if where == "refused" else "the name nonexistent.invalid does not resolve"
    assert error.startswith(f"error: cannot reach {endpoint}: {reason}"), error
    assert len(r.stderr.splitlines()) == 2, r.stderr  # the error and its hint, printed once; no retries
    assert took < 10, took  # the interpreter's start included; 73 s with the retries before
    assert ("pass --layers L to plan without the Hub" in r.stderr) == (command == "plan")
    assert not (tmp_path / "e").exists()


def test_plan_offline_names_layers_as_the_way_without_the_hub(tmp_path):
    from tests.support.recipes import hub_models

    r = run_hubswap("plan", write_recipe(tmp_path / "r.toml", hub_models()), env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert one_line(r, 4).startswith("error: offline mode is on (HF_HUB_OFFLINE=1): cannot fetch config.json of org/task@main")
    assert r.stderr.splitlines()[-1].endswith("; or pass --layers L to plan without the Hub")
    ok = run_hubswap("plan", tmp_path / "r.toml", "--layers", "6", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert ok.returncode == 0 and "LL~T~L" in ok.stdout, ok.stderr


def test_eval_on_the_hub_dataset_without_the_hub_is_one_line(family, tmp_path):
    r = run_hubswap("eval", family["task"], "-o", tmp_path / "e", env={"HF_ENDPOINT": f"http://127.0.0.1:{_dead_port()}"})
    assert "connection refused" in one_line(r, 4)
    assert "--dataset DIR" in r.stderr
