"""lm-evaluation-harness 0.4.13 itself against hubswap's lm-eval files, question by question.

A scripted bigram model (``hubswap.demo.make_scripted_model``) answers MGSM's Swahili and English
native-cot prompts and every direct prompt with a fixed line. lm-eval runs it with its `hf` model,
its own MGSM task files (from its wheel, pointed at the local copy of the data by an
``--include_path`` task that includes them), 8-shot, on the first 3 questions; ``hubswap eval``
runs the same model in both modes. For every task, filter and question, lm-eval's generation,
filtered answer, verdict, document, prompt and the three hashes must equal those in hubswap's
samples file, and the scores, their stderr, the task hashes and the task configs in both results
files must agree.

lm-eval is installed from PyPI into a cached venv (tests/support/venvs.py); the test is skipped,
loudly, only when PyPI cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import run_hubswap
from tests.support.venvs import PyPIUnreachable, lm_eval_venv

pytestmark = [pytest.mark.engine, pytest.mark.install, pytest.mark.slow]

ENGINE_FIXTURES = {"compared"}
SCRIPT = {
    # sw native-cot, gold 18 then 3 and 70000: strict-match reads "18" (1 of 3), flexible-extract the
    # last number, "5" (0 of 3)
    "Jibu la Hatua kwa Hatua:": " Jibu ni 18 (siku 5).",
    "Step-by-Step Answer:": " The answer is 1.8.",  # en native-cot: lm-eval drops the "." as punctuation
    "Answer:": " 18.",  # direct, sw
}
TASKS = {"native-cot": ["mgsm_native_cot_sw", "mgsm_native_cot_en"], "direct": ["mgsm_direct_sw"]}
LANGS = {"native-cot": ["sw", "en"], "direct": ["sw"]}
LIMIT, SHOTS, MAX_TOKENS = 3, 8, 8


def _latest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    assert found, f"no {pattern} under {folder}"
    return found[-1]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def compared(mgsm_dir, tmp_path_factory):
    from hubswap.demo import make_scripted_model

    try:
        venv = lm_eval_venv()
    except PyPIUnreachable as e:
        print(f"\nSKIPPED: lm-evaluation-harness cannot be installed: {e}", file=sys.stderr)
        pytest.skip(f"lm-evaluation-harness cannot be installed: {e}")
    root = tmp_path_factory.mktemp("lm_eval")
    model = make_scripted_model(root / "model", SCRIPT)
    python = str(venv / "bin" / "python")
    wheel_tasks = Path(subprocess.run(
        [python, "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
        capture_output=True, text=True, check=True).stdout.strip()) / "tasks" / "mgsm"
    include = root / "tasks"
    include.mkdir()
    for task in [t for ts in TASKS.values() for t in ts]:
        mode = "native_cot" if "native_cot" in task else "direct"
        (include / f"{task}.yaml").write_text(
            f"include: {wheel_tasks / mode / (task + '.yaml')}\ntask: {task}\ndataset_path: {mgsm_dir}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(root / "hf"),
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    lm_out = root / "lm-eval-out"
    run = subprocess.run(
        [str(venv / "bin" / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--tasks", ",".join(t for ts in TASKS.values() for t in ts), "--include_path", str(include),
         "--num_fewshot", str(SHOTS), "--limit", str(LIMIT), "--gen_kwargs", f"max_gen_toks={MAX_TOKENS}",
         "--batch_size", "1", "--device", "cpu", "--log_samples", "--output_path", str(lm_out)],
        capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    ours = {}
    for mode, langs in LANGS.items():
        out = root / f"hubswap-{mode}"
        proc = run_hubswap("eval", str(model), "--dataset", str(mgsm_dir), "--languages", *langs, "--prompt", mode,
                           "--num-fewshot", str(SHOTS), "--max-new-tokens", str(MAX_TOKENS), "--limit", str(LIMIT),
                           "--backend", "transformers", "--batch-size", "1", "--output", str(out), "--no-progress",
                           timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ours[mode] = out / "lm-eval" / "model"
    return _latest(lm_out, "results_*.json").parent, ours


def test_every_question_gets_lm_evals_generation_answer_verdict_and_hashes(compared):
    theirs, ours = compared
    compared_rows = 0
    for mode, tasks in TASKS.items():
        for task in tasks:
            lm_rows = _rows(_latest(theirs, f"samples_{task}_*.jsonl"))
            our_rows = _rows(_latest(ours[mode], f"samples_{task}_*.jsonl"))
            assert len(lm_rows) == len(our_rows) == 2 * LIMIT, task  # a row per filter and question
            for lm, us in zip(lm_rows, our_rows, strict=True):
                where = (task, lm["filter"], lm["doc_id"])
                for key in ("doc_id", "filter", "doc", "target", "arguments", "resps", "filtered_resps", "metrics",
                            "exact_match", "doc_hash", "prompt_hash", "target_hash"):
                    assert us[key] == lm[key], (*where, key, us[key], lm[key])
                compared_rows += 1
    assert compared_rows == 3 * 2 * LIMIT


def test_both_results_files_agree_on_scores_stderr_hashes_and_configs(compared):
    theirs, ours = compared
    lm = json.loads(_latest(theirs, "results_*.json").read_text(encoding="utf-8"))
    figures = []
    for mode, tasks in TASKS.items():
        us = json.loads(_latest(ours[mode], "results_*.json").read_text(encoding="utf-8"))
        assert us["evaluator"] == "hubswap"
        assert us["config"]["gen_kwargs"] == lm["config"]["gen_kwargs"] == {"max_gen_toks": MAX_TOKENS}
        for task in tasks:
            assert set(us["results"][task]) == set(lm["results"][task]), task
            for key, value in lm["results"][task].items():
                if isinstance(value, float):
                    assert us["results"][task][key] == pytest.approx(value, rel=1e-12, abs=1e-15), (task, key)
                else:
                    assert us["results"][task][key] == value, (task, key)
            figures.append((task, {k: v for k, v in us["results"][task].items() if k.startswith("exact_match")}))
            for part in ("versions", "n-shot", "n-samples", "higher_is_better", "task_hashes"):
                assert us[part][task] == lm[part][task], (task, part)
            mine, theirs_cfg = dict(us["configs"][task]), dict(lm["configs"][task])
            for cfg in (mine, theirs_cfg):
                cfg.pop("dataset_path")
            assert mine.pop("metadata")["version"] == theirs_cfg.pop("metadata")["version"]
            assert mine == theirs_cfg, task
    # the figures the comparison was made on, for the record (pytest -s shows them)
    for task, scores in figures:
        print(task, json.dumps(scores))
    assert {task for task, _ in figures} == {t for ts in TASKS.values() for t in ts}
