"""`hubswap build` with evaluation, end to end: merge, MGSM on the real vLLM engine for the merged
model and every compared model (the base included), the gate, the card, and the cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hubswap.cli import main
from tests.support.recipes import write_recipe


def tables(mgsm: Path) -> dict:
    """[eval], [gate] and [publish] of the recipe."""
    return dict(
        eval={"dataset": str(mgsm), "languages": ["sw"], "prompt": "direct", "num_fewshot": 0, "max_new_tokens": 8,
              "compare": ["task", "language", "base"], "backend": "vllm", "limit": 3,
              "vllm": {"max_model_len": 1024}},
        gate={"must_beat": ["task"], "min_accuracy": 0.5},
        publish={"repo": "org/never-pushed"},
    )


def test_failing_gate_stops_the_build_after_writing_every_result(tiny_llama_vllm, mgsm_dir, tmp_path, capsys, caplog):
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama_vllm, **tables(mgsm_dir))
    out = tmp_path / "build"

    # --push: a failed gate must stop before publishing (a publish attempt here would be exit 4).
    assert main(["build", str(recipe), "--push", "-o", str(out)]) == 6
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(error) == 2 and error[0].startswith("error: gate failed: "), error
    assert "0.0%" in error[0] and "50.0%" in error[0], error  # the numbers, in percent
    assert "nothing was published" in error[1]

    model = out / "model"
    results = json.loads((model / "hubswap" / "eval_results.json").read_text())
    assert list(results["models"]) == ["merged", "task", "language", "base"]
    for name, entry in results["models"].items():
        assert entry["languages"]["sw"]["n"] == 3, name
        rows = (out / "eval" / f"{name}.sw.jsonl").read_text().splitlines()
        assert len(rows) == 3 and all("generation" in json.loads(r) for r in rows), name
    assert set(results["comparisons"]) == {"task", "language", "base"}
    assert results["gate"]["passed"] is False
    card = (model / "README.md").read_text()
    assert "Gate: failed" in card or "gate failed" in card.lower()
    # No path of this machine in what is published: the recipe's folder names only.
    lm_eval = sorted(p.relative_to(model).as_posix() for p in (model / "hubswap" / "lm-eval").rglob("*.json*"))
    # lm-eval's results and samples files of every model, published beside eval_results.json
    assert sorted(f.split("/")[2] for f in lm_eval) == sorted(m for m in results["models"] for _ in range(2)), lm_eval
    for published in ("hubswap/lock.json", "hubswap/eval_results.json", *lm_eval):
        text = (model / published).read_text()
        assert str(tmp_path) not in text and str(mgsm_dir) not in text and str(tiny_llama_vllm["task"]) not in text, published
    assert results["settings"]["dataset"] == mgsm_dir.name
    assert results["models"]["merged"]["source"] == "this model" and results["models"]["task"]["source"] == "task"
    assert [results["models"][m]["engine"]["eos"]["source"] for m in ("merged", "task")] == ["generation_config.json"] * 2
    lock = json.loads((model / "hubswap" / "lock.json").read_text())
    assert any(f.endswith(".safetensors") for f in lock["models"]["base"]["files"])  # evaluated, so hashed

    # A second build evaluates only the new merge: the compared models come from the cache.
    assert main(["build", str(recipe), "-o", str(out)]) == 6
    again = json.loads((model / "hubswap" / "eval_results.json").read_text())
    assert [again["models"][m]["cached"] for m in ("merged", "task", "language", "base")] == [False, True, True, True]
    assert again["models"]["task"]["languages"] == results["models"]["task"]["languages"]
    assert again["models"]["task"]["engine"]["eos"] == results["models"]["task"]["engine"]["eos"]  # from the cache

    # A sweep of the same recipe shares that cache: one key per model, so its experts are not
    # evaluated again (only its own merge is: on the selection half, 1 of the 3 questions, then,
    # as the winner, on the held-out half).
    caplog.set_level(logging.INFO, logger="hubswap.evaluate.runner")
    sweep = ["sweep", str(recipe), "--bottom", "2", "--top", "1", "--transition", "1", "--limit", "3",
             "-o", str(tmp_path / "sweep")]
    assert main(sweep) == 0
    for expert in ("task", "language"):
        assert f"evaluating {expert}: cached (sw from " in caplog.text, expert
    assert "evaluating b2-u1-t1: 1 prompts" in caplog.text
    assert "evaluating b2-u1-t1.heldout: 2 prompts" in caplog.text
