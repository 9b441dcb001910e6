"""The core install (`pip install hubswap`): every command that needs no model runs without torch.

A venv made by uv from PyPI with only ``[project] dependencies`` (cached, see tests/support/venvs.py; torch,
transformers, tokenizers, vllm, datasets and evaluate are not even installed in it) runs hubswap
from this checkout: validate, plan, lock, build --no-eval and push against the test Hub, analyze
and card, on tiny experts written with numpy and ``safetensors.numpy`` by that same venv. Each
command reports which heavy modules it imported: none may be. CI runs this file again with
``HUBSWAP_CORE_PYTHON=3.12`` and ``3.13`` (scripts/ci-core.sh).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.support.hub_server import WRITE, seed
from tests.support.recipes import hub_models, write_recipe
from tests.support.venvs import HEAVY, REPO, core_venv

pytestmark = [pytest.mark.slow, pytest.mark.install]

# Run the CLI, then say on stderr which heavy modules were imported and where hubswap came from.
_WRAPPER = f"""
import sys
from hubswap.cli import main
try:
    rc = main(sys.argv[1:])
finally:
    import hubswap
    heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
    sys.stderr.write("\\nCORE-CHECK " + repr((heavy, hubswap.__file__)) + "\\n")
sys.exit(rc)
"""

def write_core_recipe(path: Path, models) -> Path:
    """The recipe every command here runs: ``models`` from the test Hub or local folders."""
    return write_recipe(path, models, name="core-merge", bottom=1, top=1, transition=1, non_layer="language",
                        publish={"repo": "org/core-merged"})
# The language expert's weight per layer for that [swap] on 6 layers: L ~ T T ~ L.
LANGUAGE_WEIGHT = [1.0, 0.5, 0.0, 0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def core() -> Path:
    return core_venv() / "bin" / "python"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """A clean environment: nothing of the test process leaks in but PATH and the checkout."""
    tmp = tmp_path_factory.mktemp("core_env")
    return {"PATH": os.environ["PATH"], "HOME": str(tmp), "HF_HOME": str(tmp / "hf_home"),
            "HUBSWAP_CACHE": str(tmp / "hubswap_cache"), "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO), "PYTHONNOUSERSITE": "1",
            "PYTHONUTF8": "1"}


@pytest.fixture(scope="module")
def family(core, env, tmp_path_factory) -> dict[str, Path]:
    """base/task/language written by the core venv's numpy and safetensors (the tokenizer files
    come from ``tests.support.numpy_family.write_tokenizer``: tokenizers alone, no transformers)."""
    from tests.support.numpy_family import write_tokenizer

    root = tmp_path_factory.mktemp("numpy_family")
    write_tokenizer(root / "tokenizer")
    subprocess.run([str(core), str(REPO / "tests" / "support" / "numpy_family.py"), str(root / "experts"),
                    "--tokenizer", str(root / "tokenizer")], env=env, check=True, capture_output=True)
    return {role: root / "experts" / role for role in ("base", "task", "language")}


@pytest.fixture(scope="module")
def hub(hub, family):
    """The test Hub of tests/conftest.py with the usual users and the numpy family."""
    return seed(hub, family)


def hubswap(core: Path, env: dict, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    """``hubswap ARGS`` in the core venv; fails the test if it imported a heavy module."""
    p = subprocess.run([str(core), "-c", _WRAPPER, *args], cwd=cwd, env={**env, **extra},
                       capture_output=True, text=True, timeout=300)
    marker = [line for line in p.stderr.splitlines() if line.startswith("CORE-CHECK ")]
    assert marker, f"hubswap {' '.join(args)} died before reporting:\n{p.stderr}"
    heavy, where = ast.literal_eval(marker[-1].removeprefix("CORE-CHECK "))
    assert heavy == [], f"hubswap {' '.join(args)} imported {heavy}"
    assert Path(where).is_relative_to(REPO / "hubswap"), where
    return p


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_the_core_venv_holds_no_torch(core, env):
    probe = f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"
    out = subprocess.run([str(core), "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.rstrip().endswith("[]"), out


def test_version_validate_plan_without_torch(core, env, family, tmp_path):
    assert ok(hubswap(core, env, "--version", cwd=tmp_path)).startswith("hubswap ")
    recipe = write_core_recipe(tmp_path / "local.toml", family)
    assert ": ok (core-merge" in ok(hubswap(core, env, "validate", str(recipe), cwd=tmp_path))
    plan = ok(hubswap(core, env, "plan", str(recipe), cwd=tmp_path))
    assert "6 layers" in plan and "L~TT~L" in plan


def test_lock_build_card_push_against_the_test_hub_without_torch(core, env, family, hub, tmp_path):
    write_core_recipe(tmp_path / "merge.toml", hub_models())
    at_hub = {"HF_ENDPOINT": hub.url}

    ok(hubswap(core, env, "lock", "merge.toml", cwd=tmp_path, **at_hub))
    lock = json.loads((tmp_path / "merge.lock.json").read_text())
    assert {r: m["commit"] for r, m in lock["models"].items()} == {r: hub.head(f"org/{r}").sha for r in family}

    out = ok(hubswap(core, env, "build", "merge.toml", "--no-eval", "-o", "build", cwd=tmp_path, **at_hub))
    assert "L~TT~L" in out
    model = tmp_path / "build" / "model"
    assert json.loads((model / "hubswap" / "lock.json").read_text())["versions"].keys() >= {"numpy", "safetensors"}

    # the merged tensors: whole layers copied, transition layers blended in float32
    def tensors(folder: Path) -> dict[str, np.ndarray]:
        return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}

    merged, task, lang = tensors(model), tensors(family["task"]), tensors(family["language"])
    assert merged.keys() == task.keys()
    for name, t in merged.items():
        parts = name.split(".")
        w = LANGUAGE_WEIGHT[int(parts[2])] if parts[:2] == ["model", "layers"] else 1.0
        if w in (0.0, 1.0):
            assert np.array_equal(t, lang[name] if w else task[name]), name
        else:
            np.testing.assert_allclose(t, w * lang[name] + (1 - w) * task[name], rtol=1e-6, atol=1e-7)

    card = ok(hubswap(core, env, "card", "build", cwd=tmp_path))
    assert tmp_path / card.strip() == model / "README.md"
    text = (model / "README.md").read_text()
    assert "org/task" in text and "org/language" in text and "Not evaluated" in text
    assert "not evaluated" in ok(hubswap(core, env, "card", "build", "--summary", cwd=tmp_path)).lower()

    ok(hubswap(core, env, "push", "build", cwd=tmp_path, HF_TOKEN=WRITE, **at_hub))
    assert hub.read("org/core-merged", "README.md") == (model / "README.md").read_bytes()
    for f in model.glob("*.safetensors"):
        assert hub.read("org/core-merged", f.name) == f.read_bytes()


def test_analyze_without_torch(core, env, family, hub, tmp_path):
    write_core_recipe(tmp_path / "merge.toml", hub_models())
    out = ok(hubswap(core, env, "analyze", "merge.toml", "-o", "analysis", cwd=tmp_path, HF_ENDPOINT=hub.url))
    # the experts changed layers 0 and 5 (language) and 1-4 (task): the suggestion says so
    assert "suggested swap: bottom = 1, top = 1" in out
    assert {p.name for p in (tmp_path / "analysis").iterdir()} >= {"changes.csv", "changes.json", "changes.svg"}


def test_evaluation_and_demo_name_the_extra_to_install(core, env, family, mgsm_dir, tmp_path):
    ev = hubswap(core, env, "eval", str(family["task"]), "--dataset", str(mgsm_dir), "--languages", "sw",
                 cwd=tmp_path)
    assert ev.returncode == 7 and 'pip install "hubswap[eval]"' in ev.stderr and "Traceback" not in ev.stderr
    # a build or a sweep that would evaluate says so before downloading or merging anything
    write_core_recipe(tmp_path / "merge.toml", hub_models())
    for args in (["build", "merge.toml"], ["sweep", "merge.toml", "--bottom", "1", "--top", "1"]):
        p = hubswap(core, env, *args, cwd=tmp_path, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens
        assert p.returncode == 7, p.stderr
        assert "evaluation needs datasets, evaluate, torch, transformers, vllm, which are not installed" in p.stderr
        assert 'hint: pip install "hubswap[eval]" and an engine' in p.stderr and "Traceback" not in p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["merge.toml"]
    demo = hubswap(core, env, "demo", "--no-eval", "-o", "demo", cwd=tmp_path)
    assert demo.returncode == 1 and 'pip install "hubswap[demo]"' in demo.stderr
    assert "Traceback" not in demo.stderr
