"""The pipeline's judgement on a family whose models were trained, not drawn (hubswap.tinyworld).

The family is trained once per machine (minutes, the first time; CI trains it once) and read from
``$HUBSWAP_TINYWORLD`` afterwards: see ``tiny_world`` in conftest.py. Everything else is the real
pipeline: merge, vLLM on the CPU, the synthetic MGSM through ``datasets``, gate, analyze, sweep.
"""

from __future__ import annotations

import json

import pytest

from hubswap.cli import main

LIMIT = 60  # questions per language: enough to exercise every verdict, cheap on a busy CPU


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """The demo's folder for the tiny world: experts, synthetic MGSM and recipe (not built)."""
    from hubswap.tinyworld.demo import prepare

    out = tmp_path_factory.mktemp("world")
    prepare(out, limit=LIMIT)
    return out


def test_analyze_points_at_where_the_experts_changed(world, tmp_path, capsys):
    assert main(["analyze", str(world / "recipe.toml"), "-o", str(tmp_path / "a")]) == 0
    data = json.loads((tmp_path / "a" / "changes.json").read_text())
    task, lang = data["per_layer"]["task"], data["per_layer"]["language"]
    n = len(task)
    outer = [0, 1, n - 2, n - 1]
    middle = [i for i in range(n) if i not in outer]
    # Each expert trained only its own layers: analyze sees exactly those, and swaps accordingly.
    assert min(task[i] for i in middle) > 0.01 and max(task[i] for i in outer) == 0
    assert min(lang[i] for i in outer) > 0.01 and max(lang[i] for i in middle) == 0
    s = data["suggestion"]
    assert (s["bottom"], s["top"], s["transition_bottom"], s["transition_top"]) == (2, 2, 0, 0)
    assert "suggested swap: bottom = 2, top = 2" in capsys.readouterr().out


def test_a_gate_that_should_fail_fails_with_exit_6(vllm_cpu, world, capsys):
    strict = world / "strict.toml"
    strict.write_text((world / "recipe.toml").read_text().replace("margin = 0.0", "margin = 0.5"))
    assert main(["build", str(strict), "--output", str(world / "strict")]) == 6
    err = capsys.readouterr().err
    assert "gate failed" in err and "margin 0.500" in err
    res = json.loads((world / "strict" / "model" / "hubswap" / "eval_results.json").read_text())
    assert not res["gate"]["passed"]
    models = res["models"]
    assert {m["languages"]["sw"]["n"] for m in models.values()} == {LIMIT}
    # Trained, not drawn: each expert writes its own language's answer line (what the scorers read).
    lines = {}
    for name, lang, cue in (("task", "en", "The answer is"), ("language", "sw", "Jibu ni")):
        rows = [json.loads(x) for x in (world / "strict" / "eval" / f"{name}.{lang}.jsonl").read_text().splitlines()]
        assert len(rows) == LIMIT
        lines[name] = sum(cue in r["generation"] for r in rows) / LIMIT
    assert lines["task"] > 0.8 and lines["language"] > 0.8, lines


def test_sweep_ranks_on_one_half_and_scores_on_the_other(vllm_cpu, world, tmp_path):
    rc = main(["sweep", str(world / "recipe.toml"), "--bottom", "1..2", "--top", "1..2", "--transition", "0",
               "--output", str(tmp_path / "s")])
    assert rc == 0
    data = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert data["holdout"] and data["heldout_questions"] == LIMIT // 2
    assert len(data["configs"]) == 4
    accs = [c["selection_accuracy"] for c in data["configs"]]
    assert accs == sorted(accs, reverse=True)
    h = data["heldout"]
    assert set(h["accuracy"]) == {"chosen", "task", "language"}
