"""`hubswap demo`, the README's first command, end to end on all 100 questions per language of the
demo world: the process exits 0, writes every path the README's quick start names, prints the
comparison table with the numbers of the build's eval_results.json (and the README's rows of it
as they are printed), the merged model beats both
experts in Swahili with a paired interval above zero and McNemar p < 0.01, the gate passes, and
neither the recipe nor the card names a path of this machine. A separate process, as a user runs
it, on the real vLLM CPU engine."""

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


def readme_demo_table() -> str:
    """The comparison table the README's quick start shows (its first text block)."""
    quick = (REPO / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return quick.split("```text\n", 1)[1].split("```", 1)[0]


def test_demo_runs_offline_and_writes_what_the_readme_says(tmp_path):
    # vLLM's engine in the demo's own process and one OpenMP thread: 3x faster on small machines.
    env = {"HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}
    run = run_hubswap("demo", "--output", "demo", cwd=tmp_path, env=env, timeout=900)
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
            assert r["n"] == 100, (name, lang)
            expected[name, lang] = (r["n"], f"{100 * r['accuracy']:.1f}", f"{100 * r['ci95'][0]:.1f}",
                                    f"{100 * r['ci95'][1]:.1f}")
    assert {m for m, _ in expected} >= {"merged", "task", "language", "soup"}
    assert printed == expected, run.stdout
    # The README's table is the demo's own output, row for row (its header and the rows it shows).
    printed_lines = {line.rstrip() for line in run.stdout.splitlines()}
    shown = [line.rstrip() for line in readme_demo_table().splitlines()]
    assert shown and set(shown) <= printed_lines, set(shown) - printed_lines
    verdict = "passed" if results["gate"]["passed"] else "FAILED"
    assert [line for line in run.stdout.splitlines() if line.startswith("gate")] == [  # said once
        f"gate {verdict}: " + "; ".join(results["gate"]["reasons"] or results["gate"]["checks"])]
    assert run.stdout.rstrip().endswith(f"model card: {(model / 'README.md').resolve()}")

    card = (model / "README.md").read_text()
    assert "This model was not evaluated" not in card
    assert f"**Gate: {verdict.lower()}**" in card

    # The effect: in Swahili the swap beats both experts, clearly; in English it keeps the task's.
    sw = {name: entry["languages"]["sw"] for name, entry in results["models"].items()}
    assert results["gate"]["passed"] and results["gate"]["must_beat"] == ["task", "language", "soup"]
    assert sw["merged"]["accuracy"] >= 0.9
    for other in ("task", "language", "soup"):
        assert sw[other]["accuracy"] <= 0.1, other
        paired = results["comparisons"][other]["sw"]
        assert paired["ci95"][0] > 0 and paired["mcnemar_p"] < 0.01, (other, paired)
    assert results["models"]["task"]["languages"]["en"]["accuracy"] >= 0.9
    for text in (card, (tmp_path / "demo" / "recipe.toml").read_text()):
        assert str(tmp_path) not in text
    assert "constructed, not trained" in card
