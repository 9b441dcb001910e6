"""``[eval] gpus``: several engines at once on one machine (hubswap/evaluate/parallel.py).

The plan (which worker gets which devices, which model or share of questions) is logic; the
equality of results is checked with the real vLLM engine on the CPU, where a "device" is a worker
slot: two CPU workers give, question by question, what one gives."""

from __future__ import annotations

import json
import logging
import time

import pytest

from hubswap.errors import EvaluationError, RecipeError
from hubswap.evaluate.parallel import Job, device_groups, plan_jobs, visible_gpus
from hubswap.recipe import EvalConfig, load_recipe
from tests.support.cli import run_hubswap
from tests.support.recipes import write_recipe


def test_workers_get_disjoint_device_groups_of_tensor_parallel_size():
    eight = [str(i) for i in range(8)]
    assert device_groups("auto", 1, eight) == eight
    assert device_groups("auto", 2, eight) == ["0,1", "2,3", "4,5", "6,7"]
    assert device_groups(4, 2, eight) == ["0,1", "2,3"]
    # CUDA_VISIBLE_DEVICES names are kept as given (a worker sees its own, renumbered from 0).
    assert device_groups("auto", 2, ["3", "5", "6"]) == ["3,5"]
    with pytest.raises(EvaluationError, match="shows 8 GPU"):
        device_groups(9, 1, eight)
    with pytest.raises(EvaluationError, match="tensor_parallel_size = 4 needs 4 GPUs"):
        device_groups(2, 4, eight)
    # Without a GPU: worker slots, not pinned; "auto" is one; no gpus at all is today's one worker.
    assert device_groups(2, 1, []) == [None, None]
    assert device_groups("auto", 1, []) == [None]
    assert device_groups(None, 2, eight) == [None]


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_whole_models_first_then_the_rest_shared_out():
    # 3 models, 2 workers: a round of two whole models, then the third split in two.
    assert plan_jobs({"merged": 9, "task": 9, "language": 9}, 2) == [
        Job("merged", 0, 9), Job("task", 0, 9), Job("language", 0, 4), Job("language", 4, 9)]
    # 1 model, 8 workers: 8 shares; never more shares than prompts; nothing for a cached model.
    assert [j.stop - j.start for j in plan_jobs({"merged": 250}, 8)] == [31, 31, 31, 32, 31, 31, 31, 32]
    assert plan_jobs({"merged": 2, "task": 0}, 4) == [Job("merged", 0, 1), Job("merged", 1, 2)]
    assert plan_jobs({"a": 5, "b": 5}, 1) == [Job("a", 0, 5), Job("b", 0, 5)]


def test_data_parallel_size_is_refused_naming_gpus(tmp_path):
    tiny_llama = {role: tmp_path / role for role in ("base", "task", "language")}  # (not read)
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama, eval={"vllm": {"data_parallel_size": 2}})
    with pytest.raises(RecipeError, match=r"data_parallel_size is not supported: set \[eval\] gpus"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="gpus must be at least 1"):
        load_recipe(write_recipe(tmp_path / "g.toml", tiny_llama, eval={"gpus": 0}))
    assert load_recipe(write_recipe(tmp_path / "a.toml", tiny_llama, eval={"gpus": "auto"})).recipe.eval.gpus == "auto"
    r = run_hubswap("validate", recipe)
    assert r.returncode == 2 and "set [eval] gpus" in r.stderr and "Traceback" not in r.stderr
    r = run_hubswap("eval", tmp_path, "--gpus", "0")
    assert r.returncode == 2 and "--gpus: expected a number of devices" in r.stderr


def test_two_cpu_workers_give_what_one_gives_question_by_question(tiny_llama_vllm, mgsm_dir, tmp_path, caplog):
    from hubswap.evaluate import run_evaluation

    # Three models on two workers: two whole, the third's 9 prompts in two shares (4 + 5, the cut
    # inside a language); no cache, so every answer is generated in both runs.
    models = {"merged": tiny_llama_vllm["base"], "task": tiny_llama_vllm["task"],
              "language": tiny_llama_vllm["language"]}
    base = dict(languages=["sw", "en", "fr"], prompt="direct", num_fewshot=0, max_new_tokens=6, backend="vllm",
                limit=3, compare=["task", "language"])
    caplog.set_level(logging.INFO, logger="hubswap")
    times, results = {}, {}
    for gpus in (None, 2):
        t = time.perf_counter()
        results[gpus] = run_evaluation(models, EvalConfig(**base, gpus=gpus), tmp_path / f"w{gpus}",
                                       dataset=mgsm_dir, progress=False)
        times[gpus] = time.perf_counter() - t
    one, two = results[None], results[2]
    print(f"one worker {times[None]:.1f} s, two CPU workers {times[2]:.1f} s")
    for name in models:
        for lang in base["languages"]:
            a = (tmp_path / f"wNone/{name}.{lang}.jsonl").read_text().splitlines()
            b = (tmp_path / f"w2/{name}.{lang}.jsonl").read_text().splitlines()
            assert [json.loads(x) for x in a] == [json.loads(x) for x in b], (name, lang)
    assert one.verdicts == two.verdicts and one.comparisons == two.comparisons
    assert one.workers is None and all(m.shares is None for m in one.models.values())
    assert two.workers is not None and two.workers.count == 2 and two.workers.devices == [None, None]
    assert [two.models[m].shares for m in models] == [None, None, [4, 5]]
    assert "evaluating language (prompts 4-8): 5 prompts" in caplog.text
    written = json.loads(two.model_dump_json())
    assert written["models"]["language"]["shares"] == [4, 5] and written["workers"]["count"] == 2
