"""`hubswap demo`, the README's first command, end to end at its smallest setting (one MGSM question
per language): the process exits 0, writes every path the README's quick start names, prints the
comparison table with the numbers of the build's eval_results.json, and the card is an evaluated
one. A separate process, as a user runs it, on the real vLLM CPU engine and the offline MGSM copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.cli import run_hubswap

pytestmark = [pytest.mark.slow, pytest.mark.engine]  # the demo makes its experts with torch and runs vLLM
REPO = Path(__file__).resolve().parent.parent
# A table row of `format_table`: model, language, n, accuracy [95% CI] in percent, then the rest.
ROW = re.compile(r"^(\w+)\s+(\w\w)\s+(\d+)\s+(\d+\.\d) \[\s*(\d+\.\d),\s*(\d+\.\d)\]", re.M)


def readme_demo_paths() -> list[str]:
    """The paths under demo/ that the README's quick start says the demo writes."""
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`(demo/[^`\s]*)`", quick)
    assert paths, "the README's quick start names no file the demo writes"
    return paths


def test_demo_runs_offline_and_writes_what_the_readme_says(mgsm_dir, tmp_path):
    # vLLM's engine in the demo's own process and one OpenMP thread: 3x faster on small machines.
    env = {"HUBSWAP_MGSM": str(mgsm_dir), "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "OMP_NUM_THREADS": "1"}
    run = run_hubswap("demo", "--output", "demo", "--limit", "1", cwd=tmp_path, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr

    for rel in readme_demo_paths():
        path = tmp_path / rel
        assert (path.is_dir() if rel.endswith("/") else path.is_file()), f"the README says the demo writes {rel}"
    for role in ("base", "task", "language"):
        assert (tmp_path / "demo" / "experts" / role / "config.json").is_file(), role

    model = tmp_path / "demo" / "build" / "model"
    results = json.loads((model / "hubswap" / "eval_results.json").read_text())
    printed = {(m, lang): (int(n), acc, lo, hi) for m, lang, n, acc, lo, hi in ROW.findall(run.stdout)}
    expected = {}
    for name, entry in results["models"].items():
        for lang, r in entry["languages"].items():
            assert r["n"] == 1, (name, lang)  # --limit 1 reached the evaluation
            expected[name, lang] = (r["n"], f"{100 * r['accuracy']:.1f}", f"{100 * r['ci95'][0]:.1f}",
                                    f"{100 * r['ci95'][1]:.1f}")
    assert {m for m, _ in expected} >= {"merged", "task", "language"}
    assert printed == expected, run.stdout
    verdict = "passed" if results["gate"]["passed"] else "FAILED"
    assert f"\ngate: {verdict}\n" in run.stdout
    assert run.stdout.rstrip().endswith(f"model card: {(model / 'README.md').resolve()}")

    card = (model / "README.md").read_text()
    assert "This model was not evaluated" not in card
    assert f"**Gate: {verdict.lower()}**" in card
