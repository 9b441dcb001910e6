"""One engine per process (hubswap/evaluate/worker.py), with the real vLLM engine on the CPU: the
parent's peak memory does not grow with the number of models evaluated and stays below what one
engine takes; a worker that dies is an error naming the model and what it was doing; the models
evaluated before it are kept, and a rerun takes them from the cache."""

from __future__ import annotations

import os
import signal

import pytest

from hubswap.errors import EvaluationError
from hubswap.evaluate import run_evaluation
from hubswap.recipe import EvalConfig

CFG = dict(languages=["sw"], prompt="direct", num_fewshot=0, max_new_tokens=4, backend="vllm", limit=2)

def _peak() -> int:
    """This process's peak resident memory since the last reset (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": VmHWM := current RSS (Linux >= 4.0)
        f.write("5")


def test_parent_memory_does_not_grow_with_the_number_of_models(tiny_llama_vllm, mgsm_dir, tmp_path):
    cfg = EvalConfig(**CFG)
    family = tiny_llama_vllm
    workers = {}

    def seen(e):
        if e.peak_rss:
            workers[e.model] = e.peak_rss

    def evaluate(models, out):
        run_evaluation(models, cfg, tmp_path / out, dataset=mgsm_dir, progress=False, on_event=seen)

    evaluate({"m0": family["base"]}, "0")  # everything the parent itself loads, loaded once
    _reset_peak()
    base = _peak()
    evaluate({"m1": family["task"]}, "1")
    after_one = _peak()
    evaluate({"m2": family["language"], "m3": family["base"], "m4": family["task"]}, "2")
    after_four = _peak()
    mib = {"base": base >> 20, "after_one": after_one >> 20, "after_four": after_four >> 20,
           **{m: v >> 20 for m, v in workers.items()}}
    print("peak RSS MiB:", mib)
    assert sorted(workers) == ["m0", "m1", "m2", "m3", "m4"]  # five engines, five worker processes
    # The parent never holds an engine: one CPU engine's KV cache alone is 256 MiB ...
    assert after_one - base < 64 << 20, mib
    # ... and three more models add nothing that stays (results and bookkeeping: < 32 MiB).
    assert after_four - after_one < 32 << 20, mib


def test_a_worker_killed_mid_evaluation_is_an_error_and_a_rerun_keeps_what_was_done(
        tiny_llama_vllm, mgsm_dir, tmp_path):
    models = {"task": tiny_llama_vllm["task"], "language": tiny_llama_vllm["language"]}
    keys = {"task": "1" * 40, "language": "2" * 40}
    cfg = EvalConfig(**CFG)
    stages = []

    def oom_killer(e):  # what the kernel does to a worker that runs the machine out of memory
        stages.append((e.model, e.stage))
        if e.model == "language" and e.stage == "starting the engine":
            os.kill(e.pid, signal.SIGKILL)

    with pytest.raises(EvaluationError) as err:
        run_evaluation(models, cfg, tmp_path / "eval", dataset=mgsm_dir, cache_keys=keys,
                       cache_dir=tmp_path / "cache", progress=False, on_event=oom_killer)
    assert str(err.value) == (f"evaluating language ({models['language']}): its worker process died while "
                              "starting the engine (killed by SIGKILL)")
    assert "out-of-memory killer" in err.value.hint and "rerun" in err.value.hint
    assert ("task", "done") in stages and stages[-1] == ("language", "starting the engine")
    # The model done before it is kept: its records, and its cache entry.
    assert len((tmp_path / "eval" / "task.sw.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "eval" / "language.sw.jsonl").exists()

    stages.clear()
    again = run_evaluation(models, cfg, tmp_path / "eval", dataset=mgsm_dir, cache_keys=keys,
                           cache_dir=tmp_path / "cache", progress=False,
                           on_event=lambda e: stages.append((e.model, e.stage)))
    assert again.models["task"].cached
    assert not again.models["language"].cached and again.models["language"].engine["dtype"] == "float32"
    assert {m for m, _ in stages} == {"language"}  # only the model that was not done got a worker
    assert [s for _, s in stages][-1] == "done"
