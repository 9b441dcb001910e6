"""What a user reads on the console, from the real command in a process of its own.

- Quiet by default: hubswap's lines and its progress bars, which end at 100% and never run
  backwards; the engines' and libraries' messages (vLLM, torch) only with ``-v``.
- Cached results say so; final paths are printed once; one unit for accuracies (percent, one
  decimal) and p-values with two significant digits.
- ``hubswap eval`` has no recipe: its hints name its flags, and a prompt too long for the engine
  is refused before any engine starts, naming the language.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.cli import run_hubswap
from tests.support.recipes import write_recipe

ENGINE_NOISE = ("Warning", "FutureWarning", "NUMA", "Triton", "Loading safetensors", "INFO ", "WARNING ")


def _bars(stderr: str) -> dict[str, list[int]]:
    """Each progress bar's successive counts (``evaluating task:  50%|...| 1/2``), by description."""
    out: dict[str, list[int]] = {}
    for frame in re.split(r"[\r\n]", stderr):
        if m := re.match(r"(evaluating \S+?):\s+\d+%\|.*?\| (\d+)/(\d+)", frame):
            out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def _final_bars(stderr: str) -> list[str]:
    return [line.rsplit("\r", 1)[-1] for line in stderr.splitlines() if "prompt/s" in line or "s/prompt" in line]


def test_eval_help_prints_percent_signs_once():
    r = run_hubswap("eval", "--help")
    assert r.returncode == 0, r.stderr
    assert "95%%" not in r.stdout and "95% interval" in r.stdout


def test_eval_hints_name_its_flags_not_recipe_keys(tmp_path):
    from tests.support.numpy_family import make_family, write_tokenizer

    # a real model (its weights are checked before the dataset is read), made without torch
    model = make_family(tmp_path / "experts", write_tokenizer(tmp_path / "tok"))["task"]
    r = run_hubswap("eval", model, "--dataset", "nobody/no-such-mgsm", "--languages", "sw", "-o", tmp_path / "e",
                    env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 7, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: cannot load MGSM 'sw' from nobody/no-such-mgsm"), r.stderr
    assert lines[1].startswith("hint: ") and "--dataset" in lines[1], r.stderr
    assert "[eval" not in r.stderr and "Traceback" not in r.stderr


def test_a_prompt_too_long_is_refused_before_the_engine_starts_naming_the_language(tiny_llama_vllm, mgsm_dir,
                                                                                  tmp_path):
    r = run_hubswap("-v", "eval", tiny_llama_vllm["task"], "--dataset", mgsm_dir, "--languages", "en", "sw",
                    "--num-fewshot", "2", "--limit", "1", "--vllm", "max_model_len=128", "-o", tmp_path / "e")
    assert r.returncode == 7, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert re.fullmatch(r"error: 1 of the 1 English \(en\) prompts do not fit the engine: the longest is \d+ "
                        r"tokens, and max_model_len is 128 \(a prompt must be shorter\)", errors[0]), r.stderr
    assert errors[1].startswith("hint: raise --vllm max_model_len=N (now 128) to at least "), r.stderr
    assert "--num-fewshot" in errors[1] and "[eval" not in r.stderr
    assert "in worker process" not in r.stderr  # -v logs every worker started: none was


def test_a_build_is_quiet_its_bars_reach_100_and_cached_results_say_so(tiny_llama_vllm, mgsm_dir, tmp_path):
    recipe = write_recipe(
        tmp_path / "r.toml", tiny_llama_vllm,
        eval={"dataset": str(mgsm_dir), "languages": ["sw"], "prompt": "direct", "num_fewshot": 0,
              "max_new_tokens": 8, "compare": ["task"], "backend": "vllm", "limit": 3,
              "vllm": {"max_model_len": 512}},
        gate={"must_beat": [], "min_accuracy": 0.0})
    env = {"HUBSWAP_CACHE": tmp_path / "cache", "OMP_NUM_THREADS": "1"}
    first = run_hubswap("build", recipe, "-o", tmp_path / "b", env=env, timeout=900)
    assert first.returncode == 0, first.stderr

    # Quiet: no engine or library message; hubswap's own lines and its bars.
    noise = [line for line in first.stderr.splitlines() if any(n in line for n in ENGINE_NOISE)]
    assert not noise, first.stderr
    # Every bar counts up to its total (3 prompts) and stays on screen there.
    bars = _bars(first.stderr)
    assert set(bars) == {"evaluating merged", "evaluating task"}, first.stderr
    for counts in bars.values():
        assert counts == sorted(counts) and counts[-1] == 3, first.stderr
    # No staging folder named; the model folder once.
    assert ".model.partial" not in first.stderr + first.stdout
    out = first.stdout
    model = str(tmp_path / "b" / "model")
    assert (first.stderr + out).count(model + "\n") + (first.stderr + out).count(model + " ") == 1, out
    # Percent with one decimal; the difference column says what it is; p-values as 1.0, not 1.
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert "merged - this row [95% CI]" in header and "model - model" not in header
    task_row = next(line for line in out.splitlines() if line.startswith("task "))
    assert re.search(r"\s\d+\.\d \[\s*\d+\.\d,\s*\d+\.\d\]", task_row), task_row
    assert not re.search(r"\s1$", task_row), task_row
    assert "gate passed: merged " in out and "% >= min_accuracy 0.0%" in out, out

    # Again: the task expert's generations come from the cache, and the console says so.
    again = run_hubswap("build", recipe, "-o", tmp_path / "b", env=env, timeout=900)
    assert again.returncode == 0, again.stderr
    assert f"evaluating task: cached (sw from {tmp_path / 'cache'}" in again.stderr, again.stderr
    assert "task (cached)" in again.stdout
    results = json.loads((tmp_path / "b" / "model" / "hubswap" / "eval_results.json").read_text())
    assert results["models"]["task"]["cached"] is True

    # -v: the engine's messages are there for whoever wants them.
    loud = run_hubswap("-v", "eval", tiny_llama_vllm["task"], "--dataset", mgsm_dir, "--languages", "sw",
                       "--num-fewshot", "0", "--max-new-tokens", "4", "--limit", "1", "--vllm", "max_model_len=512",
                       "-o", tmp_path / "e", env=env, timeout=900)
    assert loud.returncode == 0, loud.stderr
    assert "Loading safetensors" in loud.stderr or "INFO " in loud.stderr, loud.stderr
    assert "eval_results.json" in loud.stdout


def test_a_worker_that_fails_names_the_log_of_its_engine(tiny_llama_vllm, mgsm_dir, tmp_path):
    """Without -v the engine's messages go to a log file; when the worker fails, the hint names
    that file (kept) and it holds the worker's traceback."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_llama_vllm["task"].iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2  # the weights disagree with it
    (bad / "config.json").write_text(json.dumps(config))
    r = run_hubswap("eval", bad, "--dataset", mgsm_dir, "--languages", "sw", "--num-fewshot", "0",
                    "--max-new-tokens", "4", "--limit", "1", "--vllm", "max_model_len=512", "-o", tmp_path / "e",
                    env={"TMPDIR": tmp_path}, timeout=900)
    assert r.returncode == 7, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint: "))
    assert "memory" not in hint, hint  # weights that disagree with the config: no out-of-memory guess
    m = re.search(r"are in (\S+\.log)", hint)
    assert m, hint
    log = Path(m.group(1))
    assert log.parent == tmp_path and "Traceback" in log.read_text()
