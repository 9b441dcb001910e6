"""On CI (CI=true) a test that skips itself is a failure unless it may skip there (tests/conftest.py):
checked on a small test file run by pytest with this suite's conftest as a plugin."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TESTS = '''
import pytest

def test_needs_a_capability():
    pytest.skip("strace is not installed")

@pytest.mark.may_skip_on_ci(reason="no such Python on the runners")
def test_may_skip_on_ci():
    pytest.skip("no python3.10")

@pytest.mark.skipif(True, reason="declared where the test is written")
def test_declared_skip():
    pass

@pytest.fixture
def capability():
    pytest.skip("cannot mount a tmpfs")

def test_skipped_by_its_fixture(capability):
    pass

def test_runs():
    pass
'''


def _run(tmp_path: Path, ci: str | None) -> dict[str, str]:
    """Each test's outcome (passed, failed, error, skipped) and its message, from pytest's junit XML."""
    (tmp_path / "test_skips.py").write_text(TESTS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    if ci is not None:
        env["CI"] = ci
    subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", str(REPO / "pyproject.toml"),
                    "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-q", "--junitxml", "out.xml",
                    "test_skips.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    outcomes = {}
    for case in ET.parse(tmp_path / "out.xml").iter("testcase"):
        child = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        outcomes[case.get("name")] = ("passed", "") if child is None else (child.tag, child.get("message", "") + (child.text or ""))
    return outcomes


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_skip_on_ci_fails_unless_the_test_may_skip_there(tmp_path, ci):
    got = _run(tmp_path, ci)
    assert got["test_needs_a_capability"][0] == "failure", got
    assert "skipped on CI: strace is not installed" in got["test_needs_a_capability"][1], got
    assert got["test_skipped_by_its_fixture"][0] == "error", got  # in its setup
    assert "skipped on CI: cannot mount a tmpfs" in got["test_skipped_by_its_fixture"][1], got
    assert got["test_may_skip_on_ci"][0] == got["test_declared_skip"][0] == "skipped", got
    assert got["test_runs"][0] == "passed", got


def test_elsewhere_a_skip_is_a_skip(tmp_path):
    got = _run(tmp_path, None)
    assert {name: outcome for name, (outcome, _) in got.items()} == {
        "test_needs_a_capability": "skipped", "test_may_skip_on_ci": "skipped", "test_declared_skip": "skipped",
        "test_skipped_by_its_fixture": "skipped", "test_runs": "passed"}
