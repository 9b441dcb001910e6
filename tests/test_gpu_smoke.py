"""scripts/gpu-smoke.sh, checked on the CPU: every step of the GPU smoke check with a 6-layer shape
(`--tiny`), its one-line-per-step summary, and the cleanup. What it measures on a GPU is not
tested here: the lead runs it on the device host (docs/operations.md, "GPU smoke check")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu-smoke.sh"


def smoke(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def summary(out: str) -> dict[str, str]:
    tail = out.split("--- summary ---\n", 1)[1]
    return dict(line.removeprefix("smoke ").split(": ", 1) for line in tail.splitlines() if line.startswith("smoke "))


@pytest.mark.slow
@pytest.mark.engine  # the script's steps make and evaluate models with torch
def test_tiny_smoke_runs_every_step_and_leaves_only_its_logs(tmp_path, mgsm_dir):
    work = tmp_path / "work"
    p = smoke("--tiny", "--bench", "--work", str(work), "--mgsm", str(mgsm_dir))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = summary(p.stdout)
    assert list(lines) == ["env", "experts", "copy", "merge", "eval", "load", "bench", "done"], p.stdout
    assert "no GPU (--tiny: CPU)" in lines["env"]
    assert lines["experts"].startswith("2 x 0.1 GB (bf16, vocab 128256)")
    assert "x cp -r" in lines["merge"] and "layer 3 and layer 0's norm equal their experts' bytes" in lines["merge"]
    assert "3 models x {'sw': 2}" in lines["eval"] and "gate passed" in lines["eval"], lines["eval"]
    assert "bfloat16 on cpu, logits finite over 128256 tokens" in lines["load"]
    assert lines["bench"] in ("skipped: bench/merge.py has no --shape option",
                              "--tiny: would run bench/merge.py --shape 8b")
    assert lines["done"].startswith("ok in ")
    # Only the logs and the recipe are left behind.
    left = sorted(p.name for p in work.iterdir())
    assert left == ["logs", "smoke.toml"], left
    assert {f.name for f in (work / "logs").iterdir()} == {"env.log", "experts.log", "copy.log", "merge.log",
                                                          "eval.log", "load.log"}


def test_missing_inputs_are_one_line_each(tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    p = smoke("--tiny", "--wheels", str(empty), "--work", str(tmp_path / "w1"))
    assert p.returncode == 1 and p.stderr.strip() == f"smoke env: FAILED: no .whl files in {empty}"

    p = smoke("--tiny", "--work", str(tmp_path / "w2"), "--mgsm", str(tmp_path / "nowhere"))
    assert p.returncode == 1
    lines = summary(p.stdout)
    assert lines["env"].startswith("FAILED: no MGSM copy: pass --mgsm DIR"), p.stdout
    assert lines["done"].startswith("FAILED in ")
