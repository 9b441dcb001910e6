"""The lm-eval files' writer (hubswap/evaluate/lm_eval_files.py) on its own, without lm-eval: its
numbers are lm-eval's arithmetic, a new evaluation replaces a model's files whole, and the chat
mode (no lm-eval task) writes none. tests/test_lm_eval_files.py checks it against lm-eval itself."""

from __future__ import annotations

import json
from pathlib import Path

from hubswap.evaluate.lm_eval_files import mean_stderr, task_name, write_lm_eval_files
from tests.support.fixed_build import TASK_COMMIT, eval_results


def test_the_stderr_is_lm_evals_sample_stderr_of_the_mean():
    # 1 of 3 right: lm-eval 0.4.13 reports 0.33333333333333337 (not 1/3: its float arithmetic)
    assert mean_stderr([1.0, 0.0, 0.0]) == 0.33333333333333337
    assert mean_stderr([1.0, 0.0]) == 0.5
    assert mean_stderr([1.0]) == "N/A"
    assert (task_name("native-cot", "sw"), task_name("en-cot", "te"), task_name("direct", "ja")) == \
        ("mgsm_native_cot_sw", "mgsm_en_cot_te", "mgsm_direct_ja")
    assert task_name("chat", "sw") is None


def _records(folder: Path, results) -> None:
    """Per model and language, question i answered with i (right on even questions, gold i)."""
    for name, model in results.models.items():
        for lang in results.settings.languages:
            n = model.languages[lang].n
            rows = [{"index": i, "gold": i if i % 2 == 0 else i + 1, "prompt": f"Swali: {i}?\nJibu la Hatua kwa Hatua:",
                     "generation": f" Jibu ni {i}.", "strict_answer": f"{i}.", "flexible_answer": f"{i}.",
                     "strict_match": i % 2 == 0, "flexible_extract": i % 2 == 0,
                     "doc": {"question": f"{i}?", "answer": None, "answer_number": i, "equation_solution": None}}
                    for i in range(n)]
            (folder / f"{name}.{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_new_evaluation_replaces_a_models_files(tmp_path):
    results = eval_results()
    _records(tmp_path, results)
    first = write_lm_eval_files(results, tmp_path, tmp_path / "lm-eval")
    second = write_lm_eval_files(results, tmp_path, tmp_path / "lm-eval")
    assert first == second == [tmp_path / "lm-eval" / m for m in results.models]
    for folder in second:
        names = sorted(p.name.split("_20")[0] for p in folder.iterdir())
        assert names == ["results", "samples_mgsm_native_cot_en", "samples_mgsm_native_cot_sw"], names
        doc = json.loads(next(folder.glob("results_*.json")).read_text())
        assert doc["results"]["mgsm_native_cot_sw"]["exact_match,strict-match"] == 125 / 250
        assert doc["n-samples"]["mgsm_native_cot_sw"] == {"original": 250, "effective": 250}
    assert sorted(p.name for p in (tmp_path / "lm-eval").iterdir()) == sorted(results.models)  # no leftovers
    task = json.loads(next((tmp_path / "lm-eval" / "task").glob("results_*.json")).read_text())
    # the model as lm-eval names it: the repo, its commit, the dtype it was evaluated in
    assert task["config"]["model_args"] == {"pretrained": "hubswap-test/tiny-math", "revision": TASK_COMMIT,
                                            "dtype": "bfloat16"}
    assert (task["config"]["model_sha"], task["model_name"]) == (TASK_COMMIT, "hubswap-test/tiny-math")


def test_the_chat_mode_writes_no_lm_eval_files(tmp_path):
    results = eval_results()
    chat = results.model_copy(update={"settings": results.settings.model_copy(update={"prompt": "chat"})})
    assert write_lm_eval_files(chat, tmp_path, tmp_path / "lm-eval") == []
    assert not (tmp_path / "lm-eval").exists()
