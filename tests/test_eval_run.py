"""run_evaluation with the real vLLM engine: records, results, paired comparison, cache, gate, CLI."""

from __future__ import annotations

import json

import pytest

from hubswap.cli import main
from hubswap.errors import GateFailedError
from hubswap.evaluate import apply_gate, format_table, run_evaluation, score_response
from hubswap.evaluate.results import EvalResults
from hubswap.recipe import EvalConfig, Gate

LANGS = ["sw", "en"]
LIMIT = 4


def _cfg(**kw) -> EvalConfig:
    base = dict(languages=LANGS, prompt="native-cot", num_fewshot=2, max_new_tokens=16, backend="vllm", limit=LIMIT)
    base.update(kw)
    return EvalConfig(**base)


@pytest.fixture(scope="module")
def first_run(tiny_llama_vllm, mgsm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_run")
    models = {"merged": tiny_llama_vllm["base"], "task": tiny_llama_vllm["task"], "language": tiny_llama_vllm["language"]}
    keys = {"task": "a" * 40, "language": "b" * 40}
    results = run_evaluation(models, _cfg(), root / "eval", dataset=mgsm_dir, cache_keys=keys,
                             cache_dir=root / "cache", progress=False)
    return root, models, keys, results


def test_results_layout(first_run, mgsm_dir):
    root, models, _, typed = first_run
    results = typed.to_json()  # what eval_results.json holds
    assert results["results_version"] == 2 and "verdicts" not in results
    s = results["settings"]
    assert s["languages"] == LANGS and s["target_language"] == "sw" and s["backend"] == "vllm"
    assert s["limit"] == LIMIT and s["num_fewshot"] == 2 and s["dataset"] == str(mgsm_dir)
    assert s["dataset_revisions"]["sw"].startswith("sha256:")
    assert results["versions"]["vllm"] and results["versions"]["torch"] and results["versions"]["transformers"]
    assert results["hardware"]["device"] in ("cpu", "cuda")
    assert list(results["models"]) == ["merged", "task", "language"]
    for model in results["models"].values():
        assert model["cached"] is False
        assert model["engine"]["dtype"] == "float32"
        for lang in LANGS:
            summary = model["languages"][lang]
            assert summary["n"] == LIMIT
            lo, hi = summary["ci95"]
            assert 0 <= lo <= summary["accuracy"] <= hi <= 1
            for rate in ("strict_match", "flexible_extract", "truncation_rate", "no_answer_rate"):
                assert 0 <= summary[rate] <= 1
    assert set(results["comparisons"]) == {"task", "language"}
    c = results["comparisons"]["task"]["sw"]
    assert c["n"] == LIMIT and c["ci95"][0] <= c["diff"] <= c["ci95"][1] and 0 <= c["mcnemar_p"] <= 1
    assert results["gate"] is None
    json.dumps(results)  # the caller writes it as is


def test_jsonl_records_are_rescorable(first_run):
    root, _, _, results = first_run
    for name in ("merged", "task", "language"):
        for lang in LANGS:
            rows = [json.loads(line) for line in (root / "eval" / f"{name}.{lang}.jsonl").read_text().splitlines()]
            assert [r["index"] for r in rows] == list(range(LIMIT))
            for r in rows:
                assert r["prompt"].endswith("\nJibu la Hatua kwa Hatua:" if lang == "sw" else "\nStep-by-Step Answer:")
                assert r["finish_reason"] in ("stop", "length") and r["generated_tokens"] > 0
                again = score_response(r["generation"], lang, r["gold"])
                assert (again.strict_match, again.flexible_extract, again.correct) == (
                    r["strict_match"], r["flexible_extract"], r["correct"])
            summary = results.scores(name, lang)
            assert summary.accuracy == sum(r["correct"] for r in rows) / LIMIT
            assert summary.truncation_rate == sum(r["finish_reason"] == "length" for r in rows) / LIMIT
            assert results.verdicts[name][lang] == [r["correct"] for r in rows]


def test_second_run_uses_the_cache(first_run, mgsm_dir):
    root, models, keys, results = first_run
    (root / "eval2").mkdir()
    workers = set()
    again = run_evaluation(models, _cfg(limit=2), root / "eval2", dataset=mgsm_dir, cache_keys=keys,
                           cache_dir=root / "cache", progress=False, on_event=lambda e: workers.add(e.model))
    assert again.models["task"].cached and again.models["language"].cached
    assert not again.models["merged"].cached  # no key: always evaluated
    assert workers == {"merged"}  # no engine was started for the cached ones ...
    assert again.models["task"].engine["dtype"] == "float32"  # ... whose record keeps its settings
    # the per-question verdicts come back with the results, as the jsonl records them
    rows = [json.loads(line) for line in (root / "eval2" / "task.sw.jsonl").read_text().splitlines()]
    assert again.verdicts["task"]["sw"] == [r["correct"] for r in rows]
    table = format_table(again).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["merged", "merged", "task", "task", "language", "language"]
    assert "task (cached)     sw      2" in table[4]
    for name in models:
        first = (root / "eval" / f"{name}.sw.jsonl").read_text().splitlines()[:2]
        assert (root / "eval2" / f"{name}.sw.jsonl").read_text().splitlines() == first
    # another setting, another cache entry: the expert is evaluated again (here in chat mode)
    changed = run_evaluation({"task": models["task"]}, _cfg(prompt="chat", languages=["sw"]), root / "eval3",
                             dataset=mgsm_dir, cache_keys=keys, cache_dir=root / "cache", progress=False)
    assert not changed.models["task"].cached
    assert changed.settings.num_fewshot == 0
    rows = [json.loads(line) for line in (root / "eval3" / "task.sw.jsonl").read_text().splitlines()]
    assert len(rows) == LIMIT
    assert all(r["prompt"].startswith("<s><|user|>\n") and r["prompt"].endswith("<|assistant|>\n") for r in rows)
    assert all('"Jibu ni N."' in r["prompt"] for r in rows)


def _with(real: EvalResults, merged: float, task: float, language: float) -> EvalResults:
    """The real results with these target-language accuracies (n=100)."""
    data = real.to_json()
    for name, acc in (("merged", merged), ("task", task), ("language", language)):
        data["models"][name]["languages"]["sw"].update(n=100, accuracy=acc)
    return EvalResults.model_validate(data)


def test_gate_pass_and_fail(first_run):
    _, _, _, results = first_run
    verdict = apply_gate(_with(results, 0.40, 0.35, 0.20), Gate(must_beat=["task", "language"], margin=0.02))
    assert verdict.passed and verdict.reasons == [] and len(verdict.checks) == 3
    failed = apply_gate(_with(results, 0.40, 0.39, 0.20), Gate(must_beat=["task", "language"], margin=0.02))
    assert not failed.passed
    assert failed.reasons == ["merged 40.0% < task 39.0% +2.0 points (n=100)"]
    too_low = apply_gate(_with(results, 0.40, 0.1, 0.1), Gate(must_beat=[], min_accuracy=0.5))
    assert not too_low.passed and "min_accuracy 50.0%" in too_low.reasons[0]
    err = failed.error()
    assert isinstance(err, GateFailedError) and err.exit_code == 6 and "39.0%" in str(err)
    assert failed.record().to_json()["must_beat"] == ["task", "language"]
    # on the real results: the merged model must at least equal itself
    real = apply_gate(results, Gate(must_beat=[], min_accuracy=0.0))
    assert real.passed and real.accuracy == results.models["merged"].languages["sw"].accuracy
    assert "gate passed: " in format_table(results.model_copy(update={"gate": real.record()}))


def test_eval_command_end_to_end(tiny_llama_vllm, mgsm_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["eval", str(tiny_llama_vllm["task"]), "--dataset", str(mgsm_dir), "--languages", "te", "ja",
               "--prompt", "direct", "--num-fewshot", "3", "--max-new-tokens", "8", "--limit", "3",
               "--backend", "vllm", "--compare", f"language={tiny_llama_vllm['language']}",
               "--vllm", "max_model_len=2048", "--output", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["settings"]["prompt"] == "direct" and results["settings"]["vllm"] == {"max_model_len": 2048}
    assert results["models"]["model"]["engine"]["max_model_len"] == 2048
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["language.ja.jsonl", "language.te.jsonl",
                                                          "model.ja.jsonl", "model.te.jsonl"]
    assert "model" in printed and "language" in printed and "te" in printed and "McNemar" in printed


def test_eval_command_user_errors(tmp_path, mgsm_dir, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--dataset", str(mgsm_dir)]) == 7
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path / "m"), "--dataset", str(mgsm_dir), "--languages", "xx"]) == 7
    assert "unknown MGSM language" in capsys.readouterr().err
    # a config without weights is found before any dataset or engine (a missing split: test_user_path.py)
    assert main(["eval", str(tmp_path / "m"), "--dataset", str(tmp_path), "--languages", "sw",
                 "--backend", "transformers"]) == 3
    err = capsys.readouterr().err
    assert f"evaluated model {tmp_path / 'm'} has no safetensors weights" in err


def test_eval_model_from_the_hub(hub, tiny_llama_vllm, tmp_path):
    from hubswap.errors import HubError
    from hubswap.evaluate.command import resolve_model

    hub.upload_folder("org/task", tiny_llama_vllm["task"], message="tiny task")
    folder = resolve_model("org/task", endpoint=hub.url)
    src = tiny_llama_vllm["task"]
    weights = sorted(p.name for p in src.glob("*.safetensors"))
    assert sorted(p.name for p in folder.glob("*.safetensors")) == weights
    assert all((folder / n).read_bytes() == (src / n).read_bytes() for n in weights + ["config.json"])
    assert (folder / "tokenizer.json").exists()
    with pytest.raises(HubError):
        resolve_model("org/missing", endpoint=hub.url)


def test_prompt_longer_than_the_engine_is_a_user_error(tiny_llama_vllm, mgsm_dir, tmp_path, capsys):
    rc = main(["eval", str(tiny_llama_vllm["task"]), "--dataset", str(mgsm_dir), "--languages", "sw",
               "--num-fewshot", "2", "--limit", "1", "--vllm", "max_model_len=128", "--output", str(tmp_path),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 7
    assert "Swahili (sw) prompts do not fit the engine" in err and "--vllm max_model_len=N (now 128)" in err
