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
from hubswap.evaluate.answer_language import answer_languages
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

    evaluate({"m0": family["base"]}, "0")  # everything the parent itself loads, loaded once ...
    # ... and lingua's language models, which it loads the first time a short answer needs them
    # (Swahili ~45 MB, English ~100 MB more; 250 MB for these eleven): else the later models'
    # answers load new ones, and this test passed only after another test had loaded them.
    answer_languages(["উত্তর হল 8।", "Die Antwort ist 8.", "The answer is 8.", "La respuesta es 8.", "La réponse est 8.",
                      "答えは8です。", "Ответ 8.", "Jibu ni 8.", "సమాధానం 8.", "คำตอบคือ 8", "答案是 8。"])
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


def test_a_worker_that_crashes_is_not_said_to_be_out_of_memory(tiny_llama_vllm, mgsm_dir, tmp_path):
    """Only SIGKILL is the out-of-memory killer's: a crash in native code (SIGSEGV) is named as
    what it is, with the log that says why."""
    cfg = EvalConfig(**CFG)

    def crash(e):
        if e.stage == "starting the engine":
            os.kill(e.pid, signal.SIGSEGV)

    with pytest.raises(EvaluationError) as err:
        run_evaluation({"task": tiny_llama_vllm["task"]}, cfg, tmp_path / "eval", dataset=mgsm_dir,
                       cache_keys={"task": "1" * 40}, cache_dir=tmp_path / "cache", progress=False, on_event=crash)
    assert str(err.value).endswith("starting the engine (killed by SIGSEGV)"), err.value
    assert "memory" not in err.value.hint and "rerun" in err.value.hint, err.value.hint


def test_an_error_in_the_worker_gets_the_memory_hint_only_when_it_is_about_memory():
    from hubswap.evaluate.worker import _rebuild

    def hint(type_: str, message: str) -> str:
        return _rebuild({"type": type_, "message": message, "hint": None, "stage": "generating"}, "merged").hint

    assert "out of GPU memory" in hint("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "out of GPU memory" in hint("RuntimeError", "CUDA error: out of memory")
    assert "memory" not in hint("ValueError", "size mismatch for model.layers.0.mlp.up_proj.weight")


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


def test_a_sweep_session_loads_each_configuration_into_one_engine(tiny_llama_vllm, tmp_path):
    """WorkerSession(reuse=True), as the sweep runs it, with the real vLLM engine: one engine start
    for three configurations (counted from the worker's own reports), the later two loaded into the
    running engine, each generating what a fresh engine on it generates, token for token; a model
    whose side files differ gets a fresh worker; a worker that dies while loading weights is one
    error naming the model and the stage."""
    import shutil

    from hubswap.evaluate.prompts import Prompt
    from hubswap.evaluate.worker import WorkerSession
    from hubswap.pipeline import BuildOptions, build
    from tests.support.recipes import write_recipe

    models = {}
    for name, swap in (("a", dict(bottom=2, top=1, transition=1)), ("b", dict(bottom=1, top=2, transition=0)),
                       ("c", dict(bottom=0, top=0, transition=0))):
        recipe = write_recipe(tmp_path / f"{name}.toml", tiny_llama_vllm, name=name, **swap)
        models[name] = build(recipe, BuildOptions(output=tmp_path / name, evaluate=False, progress=False)).model_dir
    prompts = [Prompt("sw", i, 0, (), text=f"Swali {i}: {i} na {3 * i} ni ngapi? Jibu:") for i in range(6)]
    args = dict(backend="vllm", options={}, seed=0, batch_size=16, max_new_tokens=12, progress=False, token_ids=True)
    events = []

    def tokens(result) -> list[tuple[int, ...]]:
        assert all(g.token_ids for g in result.generations)
        return [g.token_ids for g in result.generations]

    with WorkerSession(reuse=True) as session:
        got = {m: tokens(session.generate(m, models[m], prompts, on_event=events.append, **args)) for m in "abc"}
        starts = [(e.model, e.pid) for e in events if e.stage == "starting the engine"]
        reloads = [(e.model, e.pid) for e in events if e.stage == "loading the weights into the running engine"]
        pid = starts[0][1]
        assert starts == [("a", pid)] and reloads == [("b", pid), ("c", pid)]
        assert got["a"] != got["b"] != got["c"]  # the weights did change
        with WorkerSession() as fresh:  # without reuse: a fresh engine on each, in a worker of its own
            for m in "bc":
                events.clear()
                assert tokens(fresh.generate(m, models[m], prompts, on_event=events.append, **args)) == got[m], m
                assert "starting the engine" in {e.stage for e in events} and events[0].pid != pid

        # Other side files (here the generation config, vLLM's sampling defaults): a fresh worker.
        other = tmp_path / "a-other"
        shutil.copytree(models["a"], other)
        (other / "generation_config.json").write_text('{"do_sample": false, "max_new_tokens": 5}\n')
        events.clear()
        session.generate("a-other", other, prompts, on_event=events.append, **args)
        assert {e.stage for e in events} >= {"starting the engine"} and events[0].pid != pid
        assert not os.path.exists(f"/proc/{pid}")  # the first worker was stopped and reaped first

        # A worker that dies while taking the next model's weights: the model and the stage.
        other_b = tmp_path / "b-other"
        shutil.copytree(models["b"], other_b)
        shutil.copy(other / "generation_config.json", other_b / "generation_config.json")

        def killer(e):
            if e.stage == "loading the weights into the running engine":
                os.kill(e.pid, signal.SIGKILL)

        with pytest.raises(EvaluationError) as err:
            session.generate("b-other", other_b, prompts, on_event=killer, **args)
        assert str(err.value) == (f"evaluating b-other ({other_b}): its worker process died while "
                                  "loading the weights into the running engine (killed by SIGKILL)")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed Ctrl-C, printed
def test_a_ctrl_c_swallowed_during_a_command_stops_the_wait_for_a_worker(tiny_llama_vllm):
    """CI saw a Ctrl-C land in a weakref callback during the evaluation ("Exception ignored in
    ... KeyboardInterrupt"): Python printed it and went on, and the build evaluated every other
    model and exited 0. Remembered by interrupts.command(), it stops the wait for the worker at
    the next poll, and the worker goes with it."""
    import gc
    import signal
    import weakref

    from hubswap import interrupts
    from hubswap.evaluate.prompts import Prompt
    from hubswap.evaluate.worker import WorkerSession

    class Target:
        pass

    def swallowing_callback(_ref) -> None:  # the handler runs in here: its exception is printed and dropped
        signal.raise_signal(signal.SIGINT)

    prompts = [Prompt("sw", i, 0, (), text=f"Swali {i}: {i} na {3 * i} ni ngapi? Jibu:") for i in range(4)]
    with interrupts.command():
        target = Target()
        ref = weakref.ref(target, swallowing_callback)
        del target
        gc.collect()
        assert ref() is None and interrupts.requested()  # swallowed: nothing was raised here
        session = WorkerSession()
        with pytest.raises(KeyboardInterrupt):  # the old code generated every answer and returned them
            session.generate("task", tiny_llama_vllm["task"], prompts, backend="transformers", options={}, seed=0,
                             batch_size=4, max_new_tokens=4, progress=False)
        assert session._proc is None  # stopped, not left running
