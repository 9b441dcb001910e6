"""The package as an index would serve it: `python -m build` makes a wheel and an sdist that pass
`twine check`, and the wheel, installed (not editable) in a clean venv with its core dependencies,
runs `hubswap --version`, merges and renders the card from the template inside the package.

(The wheel with the eval extra running the demo on vLLM is scripts/ci-wheel-demo.sh: minutes.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from hubswap import __version__
from tests.support.recipes import write_recipe
from tests.support.venvs import REPO, UV_ENV, make_venv

pytestmark = [pytest.mark.slow, pytest.mark.install]

OWN_REPO = re.compile(r"https://(?:github\.com/hubswap/hubswap/blob|raw\.githubusercontent\.com/hubswap/hubswap)/main/(.+)")


def test_readme_links_work_on_a_package_index():
    """An index renders README.md away from the repo: relative links and images would break."""
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    assert targets
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#", "mailto:"))]
    assert relative == [], "use absolute https://github.com/hubswap/hubswap/blob/main/... links"
    for t in targets:  # links into this repository name files that exist
        if m := OWN_REPO.fullmatch(t):
            assert (REPO / m.group(1)).exists(), t


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True, env={**os.environ, **UV_ENV})
    return out


def _reachable_modules() -> set[str]:
    """Files of the package that ``hubswap`` (its API), the command line or a file the code loads by
    path reaches: the import closure read from the source, function-level imports included."""
    import ast

    def file_of(module: str) -> Path | None:
        base = REPO.joinpath(*module.split("."))
        return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)

    todo = ["hubswap", "hubswap.cli", "hubswap.evaluate.metrics.mgsm"]  # the metric: loaded by its path
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        path = file_of(module)
        if path is None or path.relative_to(REPO).as_posix() in seen:
            continue
        seen.add(path.relative_to(REPO).as_posix())
        todo += [module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)]  # its packages
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hubswap"):
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("hubswap")]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("hubswap."):
                todo.append(node.value)  # the API's lazy table names modules as strings
    return seen


def test_the_wheel_holds_only_what_a_command_or_the_api_reaches(dist):
    with zipfile.ZipFile(dist / f"hubswap-{__version__}-py3-none-any.whl") as z:
        files = {n for n in z.namelist() if not n.startswith(f"hubswap-{__version__}.dist-info/")}
    modules = {n for n in files if n.endswith(".py")}
    assert sorted(modules - _reachable_modules()) == []  # nothing unreachable ships
    assert sorted(files - modules) == ["hubswap/templates/model_card.md.j2"]
    assert not any(n.startswith(("experiments/", "hubswap/tinyworld/", "bench/", "scripts/")) for n in files)


def test_wheel_and_sdist_pass_twine_check_and_carry_the_package_data(dist):
    wheel, sdist = dist / f"hubswap-{__version__}-py3-none-any.whl", dist / f"hubswap-{__version__}.tar.gz"
    assert wheel.is_file() and sdist.is_file()
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = Parser().parsestr(z.read(f"hubswap-{__version__}.dist-info/METADATA").decode())
    # every file of the package, its data (card template, evaluate metric) included
    package = {p.relative_to(REPO).as_posix() for p in (REPO / "hubswap").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert "hubswap/templates/model_card.md.j2" in package
    assert sorted(package - names) == []
    assert f"hubswap-{__version__}.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith("tests/") for n in names)
    assert meta["Requires-Python"] == ">=3.11" and meta["License-Expression"] == "Apache-2.0"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert {"eval", "vllm", "demo", "dev"} <= set(meta.get_all("Provides-Extra"))
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert core and not [r for r in core if re.match(r"(torch|transformers|vllm|datasets|evaluate)\b", r)]
    classifiers = meta.get_all("Classifier")
    assert {f"Programming Language :: Python :: 3.{v}" for v in (11, 12, 13)} <= set(classifiers)
    assert any(u.startswith("Source, https://") for u in meta.get_all("Project-URL"))

    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    assert {"hubswap/templates/model_card.md.j2", "LICENSE", "README.md", "tests/conftest.py",
            "tests/support/hub_server.py", "tests/support/numpy_family.py", "scripts/install.sh"} <= members


def test_the_wheel_in_a_clean_venv_merges_and_renders_its_card(dist, tmp_path):
    from hubswap.card import render_card
    from hubswap.demo import make_tokenizer

    wheel = dist / f"hubswap-{__version__}-py3-none-any.whl"
    venv = tmp_path / "venv"
    make_venv(venv, sys.executable, [str(wheel)])
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONNOUSERSITE": "1"}  # no PYTHONPATH: the installed copy

    def run(*args: str) -> str:
        p = subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p.stdout

    assert run("hubswap", "--version").strip() == f"hubswap {__version__}"
    where = run("python", "-c", "import hubswap.card as c; print(c.__file__); print(c.TEMPLATE)").split()
    assert all(Path(w).is_relative_to(venv) for w in where), where

    make_tokenizer(tmp_path / "tokenizer")
    run("python", str(REPO / "tests" / "support" / "numpy_family.py"), "experts", "--tokenizer", str(tmp_path / "tokenizer"))
    write_recipe(tmp_path / "r.toml", {"task": Path("experts/task"), "language": Path("experts/language")},
                 name="wheel-merge", bottom=1, top=1)
    run("hubswap", "build", "r.toml", "--no-eval", "-o", "build")
    card = tmp_path / "build" / "model" / "README.md"
    card.unlink()
    run("hubswap", "card", "build")
    # the installed package's template renders what this checkout's does
    assert card.read_text() == render_card(tmp_path / "build" / "model")
