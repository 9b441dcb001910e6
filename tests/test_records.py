"""Typed records: what the build writes reads back as the same record, and a file of another
version (or of none) is refused with one line that names the version, and the right exit code."""

from __future__ import annotations

import json
from pathlib import Path

from hubswap.cli import main
from hubswap.errors import LockMismatchError, ModelFilesError
from hubswap.evaluate.results import EvalResults, read_eval_results
from hubswap.recipe import load_recipe
from hubswap.records import BuildRecord, read_build_record
from tests.support.fixed_build import make_build
from tests.support.recipes import write_recipe


def _edit(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_records_round_trip(tmp_path):
    model = make_build(tmp_path / "build") / "model"
    record = read_build_record(model)
    assert isinstance(record, BuildRecord) and record.models["task"].commit == "1" * 40
    assert BuildRecord.model_validate(record.to_json()) == record
    results = read_eval_results(model / "hubswap" / "eval_results.json")
    assert isinstance(results, EvalResults) and results.gate is not None and results.gate.passed
    assert results.scores("merged", "sw").n == 250 and results.scores("merged", "xx") is None
    assert "verdicts" not in results.to_json()  # per-question verdicts live in eval/*.jsonl


def test_eval_results_of_an_older_hubswap_are_refused(tmp_path, capsys):
    build = make_build(tmp_path / "build")
    _edit(build / "model" / "hubswap" / "eval_results.json", lambda d: d.pop("results_version"))
    assert main(["card", str(build)]) == ModelFilesError.exit_code
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("eval_results.json: no results_version (written by an older hubswap); "
                           "this hubswap reads results_version 2"), err
    assert err[1].startswith("hint: ")


def test_eval_results_of_version_1_without_the_answers_language_are_refused(tmp_path, capsys):
    # version 2 added target_language_share; a version-1 file says which version it is
    def as_version_1(d: dict) -> None:
        d["results_version"] = 1
        for model in d["models"].values():
            for scores in model["languages"].values():
                scores.pop("target_language_share")

    build = make_build(tmp_path / "build")
    _edit(build / "model" / "hubswap" / "eval_results.json", as_version_1)
    assert main(["card", str(build)]) == ModelFilesError.exit_code
    assert "eval_results.json: results_version 1; this hubswap reads results_version 2" in capsys.readouterr().err


def test_build_record_of_another_version_is_refused(tmp_path, capsys):
    build = make_build(tmp_path / "build")
    _edit(build / "model" / "hubswap" / "lock.json", lambda d: d.update(lock_version=2))
    assert main(["card", str(build)]) == LockMismatchError.exit_code == 2
    assert "lock.json: lock_version 2; this hubswap reads lock_version 1" in capsys.readouterr().err


def test_recipe_lock_of_another_version_is_refused(tmp_path, capsys):
    from hubswap.inputs import resolve

    recipe = write_recipe(tmp_path / "r.toml", {"task": Path("t"), "language": Path("l")}, name="r", bottom=1, top=1,
                          transition=None, dtype=None)
    (tmp_path / "r.lock.json").write_text(json.dumps({"lock_version": 0, "models": {}}))
    try:
        resolve(load_recipe(recipe))
    except LockMismatchError as e:
        assert str(e).endswith("r.lock.json: lock_version 0; this hubswap reads lock_version 1")
        assert e.hint == f"refresh it with `hubswap lock {recipe}`"
    else:
        raise AssertionError("a lock of another version was used")
    (tmp_path / "r.lock.json").write_text("{not json")
    assert main(["build", str(recipe), "--no-eval"]) == 2
    assert "r.lock.json" in capsys.readouterr().err
