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


def test_a_record_with_an_unknown_key_is_refused_wherever_the_key_is(tmp_path, capsys):
    """Records are closed: a key this hubswap does not know (a typo, a newer writer) is an error
    naming where it is, never silently dropped; at the top, in a nested record, in a list item."""
    build = make_build(tmp_path / "build")
    lock = build / "model" / "hubswap" / "lock.json"
    pristine = lock.read_text()
    for where, change in [
        ("surprise", lambda d: d.update(surprise=1)),
        ("models.task.mirror", lambda d: d["models"]["task"].update(mirror="elsewhere")),
        ("layer_map.layers.0.scale", lambda d: d["layer_map"]["layers"][0].update(scale=2.0)),
        ("output.files.config.json.mode", lambda d: d["output"]["files"]["config.json"].update(mode="0644")),
    ]:
        lock.write_text(pristine)
        _edit(lock, change)
        assert main(["card", str(build)]) == LockMismatchError.exit_code == 2, where
        first = capsys.readouterr().err.splitlines()[0]
        assert first == f"error: {lock}: not a hubswap build record: {where}: Extra inputs are not permitted", first

    results = build / "model" / "hubswap" / "eval_results.json"
    lock.write_text(pristine)
    _edit(results, lambda d: d.update(comment="edited by hand"))
    assert main(["card", str(build)]) == ModelFilesError.exit_code
    assert "eval_results.json: not " in (err := capsys.readouterr().err) and "comment: Extra inputs are not permitted" in err


def test_a_recipe_lock_with_an_unknown_key_is_refused(tmp_path):
    from hubswap.hashing import file_sha256
    from hubswap.inputs import resolve

    experts = {}
    for role in ("task", "language"):
        (tmp_path / role).mkdir()
        (tmp_path / role / "config.json").write_text("{}")
        experts[role] = tmp_path / role
    recipe = write_recipe(tmp_path / "r.toml", experts, name="r", bottom=1, top=1, transition=None, dtype=None)
    entry = {"repo": None, "revision": None, "commit": None, "path": None,
             "files": {"config.json": {"sha256": file_sha256(tmp_path / "task" / "config.json"), "size": 2}}}
    lock = {"lock_version": 1, "hubswap_version": "0.1.0", "recipe": {"path": "r.toml", "name": "r", "sha256": "0" * 64},
            "models": {"task": entry | {"path": str(tmp_path / "task")},
                       "language": entry | {"path": str(tmp_path / "language")}},
            "pinned_by": "a newer hubswap"}
    (tmp_path / "r.lock.json").write_text(json.dumps(lock))
    try:
        resolve(load_recipe(recipe))
    except LockMismatchError as e:
        assert str(e) == f"{tmp_path / 'r.lock.json'}: not a hubswap lock file: pinned_by: Extra inputs are not permitted", str(e)
    else:
        raise AssertionError("a lock with an unknown key was read")


def test_a_build_record_keeps_the_stack_vision_and_modules_it_was_given(tmp_path):
    """A multimodal build's layer map (its stack's prefix, the vision side's source, the top modules
    of each whole part) is written and read back whole; the values are written here by hand."""
    from hubswap.files import write_json

    model = make_build(tmp_path / "build") / "model"
    lock = model / "hubswap" / "lock.json"
    modules = {"non_layer": ["lm_head", "model.language_model.embed_tokens"], "vision": ["model.vision_tower"]}
    _edit(lock, lambda d: d["layer_map"].update(stack="model.language_model.layers", vision="task", modules=modules))
    record = read_build_record(model)
    assert (record.layer_map.stack, record.layer_map.vision, record.layer_map.modules) == \
        ("model.language_model.layers", "task", modules)
    write_json(lock, record.to_json())  # as the build writes it (hubswap/pipeline.py)
    written = json.loads(lock.read_text())["layer_map"]
    assert (written["stack"], written["vision"], written["modules"]) == ("model.language_model.layers", "task", modules)
    assert read_build_record(model) == record
    # and a text-only record has none of the three keys (they are absent, not null)
    plain = make_build(tmp_path / "plain") / "model"
    assert not {"stack", "vision", "modules"} & set(json.loads((plain / "hubswap" / "lock.json").read_text())["layer_map"])
    write_json(plain / "hubswap" / "lock.json", read_build_record(plain).to_json())
    assert not {"stack", "vision", "modules"} & set(json.loads((plain / "hubswap" / "lock.json").read_text())["layer_map"])
