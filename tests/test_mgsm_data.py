"""MGSM from the Hub as it is (a loading script on main, parquet on ``refs/convert/parquet``) and as
it may become (parquet on main), through the real ``datasets`` loader and the test Hub; and the
check CI runs on its copy (250 questions, 8 exemplars with their cues)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubswap.errors import EvaluationError
from hubswap.evaluate.data import PARQUET_REVISION, holds_mgsm, load_language, write_local
from hubswap.evaluate.languages import LANGUAGES
from tests.support.hub_server import HubServer
from tests.support.mgsm import parquet as _parquet
from tests.support.mgsm import rows as _rows

REPO = Path(__file__).resolve().parent.parent
LANGS = ("sw", "en")


@pytest.fixture(scope="module")
def mgsm_hub(hub, mgsm_dir):
    """``juletxara/mgsm`` as the Hub serves it: a loading script on main and the Hub's parquet
    conversion on refs/convert/parquet; ``converted/mgsm`` as it would be after a move to parquet."""
    hub.commit_files("datasets/juletxara/mgsm", {
        "README.md": b"---\nlicense: cc-by-sa-4.0\n---\n# MGSM\n",
        "mgsm.py": b"import datasets  # the original loading script\n",
        **{f"mgsm_{lang}.tsv": b"question\tanswer\n" for lang in LANGS},
    })
    parquet = {f"{lang}/{split}/0000.parquet": _parquet(_rows(mgsm_dir, lang, split))
               for lang in LANGS for split in ("test", "train")}
    hub.commit_files("datasets/juletxara/mgsm", parquet, branch=PARQUET_REVISION, message="parquet conversion")
    configs = "".join(f"- config_name: {lang}\n  data_files:\n  - split: train\n    path: {lang}/train-*.parquet\n"
                      f"  - split: test\n    path: {lang}/test-*.parquet\n" for lang in LANGS)
    hub.commit_files("datasets/converted/mgsm", {
        "README.md": f"---\nconfigs:\n{configs}---\n".encode(),
        **{f"{lang}/{split}-00000-of-00001.parquet": _parquet(_rows(mgsm_dir, lang, split))
           for lang in LANGS for split in ("test", "train")},
    })
    return hub


def _mgsm_script(*args: str, tmp_path: Path, hub: HubServer | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0" if hub else "1",
           **({"HF_ENDPOINT": hub.url} if hub else {}),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "mgsm.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_loading_script_dataset_is_read_from_its_parquet_conversion(mgsm_hub, mgsm_dir, tmp_path):
    out = _mgsm_script("fetch", str(tmp_path / "mgsm"), "--languages", *LANGS, hub=mgsm_hub, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    parquet_commit = mgsm_hub.head("datasets/juletxara/mgsm", PARQUET_REVISION).sha
    assert f"juletxara/mgsm@{parquet_commit}" in out.stdout  # the revision recorded is the parquet commit
    for lang in LANGS:
        assert f"{lang}: 250 test questions, 8 exemplars with their cues" in out.stdout
        for split in ("test", "train"):
            assert _rows(tmp_path / "mgsm", lang, split) == _rows(mgsm_dir, lang, split)
    # main's script was looked at, never run: neither it nor the TSVs it reads were downloaded, only
    # the parquet files of the languages asked for
    gets = [p for m, p, _ in mgsm_hub.requests if m == "GET" and "/resolve/" in p]
    assert not [p for p in gets if p.endswith((".py", ".tsv"))], gets
    assert mgsm_hub.count("GET", "/datasets/juletxara/mgsm/resolve/*/sw/test/0000.parquet") == 1


def test_a_dataset_converted_to_parquet_on_main_loads_directly(mgsm_hub, mgsm_dir, tmp_path):
    out = _mgsm_script("fetch", str(tmp_path / "mgsm"), "--dataset", "converted/mgsm", "--languages", "sw",
                       hub=mgsm_hub, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"converted/mgsm@{mgsm_hub.head('datasets/converted/mgsm').sha}" in out.stdout
    assert _rows(tmp_path / "mgsm", "sw", "test") == _rows(mgsm_dir, "sw", "test")


def _copy(mgsm_dir: Path, dest: Path) -> Path:
    """The Swahili part of the shared copy."""
    write_local(dest, {"sw": {s: _rows(mgsm_dir, "sw", s) for s in ("train", "test")}}, title="copy")
    return dest


def test_check_accepts_the_shared_copy(mgsm_dir, tmp_path):
    out = _mgsm_script("check", str(mgsm_dir), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("250 test questions, 8 exemplars with their cues") == 11


def test_exemplars_without_their_cues_are_refused(mgsm_dir, tmp_path):
    copy = _copy(mgsm_dir, tmp_path / "mgsm")
    rows = _rows(copy, "sw", "train")
    rows[3]["answer"] = rows[3]["answer"].removeprefix("Jibu la Hatua kwa Hatua: ")
    (copy / "sw" / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pytest.raises(EvaluationError, match="exemplar 3 answer does not start with 'Jibu la Hatua kwa Hatua:'"):
        load_language(copy, "sw")
    out = _mgsm_script("check", str(copy), "--languages", "sw", tmp_path=tmp_path)
    assert out.returncode == 1 and "exemplar 3 answer" in out.stderr


def test_mgsm_is_told_by_its_questions_whatever_the_files(mgsm_hub, mgsm_dir, tmp_path):
    """Every language of the shared copy, the same rows from the Hub's parquet, and a copy written
    anew hold MGSM; one changed question or answer, or a language's rows under another, do not."""
    assert all(holds_mgsm(load_language(mgsm_dir, lang)) for lang in LANGUAGES)
    out = _mgsm_script("fetch", str(tmp_path / "fetched"), "--languages", "sw", hub=mgsm_hub, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert holds_mgsm(load_language(tmp_path / "fetched", "sw"))
    copy = _copy(mgsm_dir, tmp_path / "mgsm")
    assert holds_mgsm(load_language(copy, "sw"))
    rows = {s: _rows(copy, "sw", s) for s in ("train", "test")}
    for field, value in (("answer_number", rows["test"][7]["answer_number"] + 1),
                         ("question", rows["test"][7]["question"] + " ")):
        edited = [dict(r) for r in rows["test"]]
        edited[7][field] = value
        write_local(tmp_path / field, {"sw": {"train": rows["train"], "test": edited}}, title="edited")
        assert not holds_mgsm(load_language(tmp_path / field, "sw")), field
    english = {s: _rows(mgsm_dir, "en", s) for s in ("train", "test")}
    english["train"] = _rows(mgsm_dir, "sw", "train")  # (the exemplars must carry Swahili's cues)
    write_local(tmp_path / "mislabelled", {"sw": english}, title="English under sw")
    assert not holds_mgsm(load_language(tmp_path / "mislabelled", "sw"))


def test_a_copy_edited_in_place_is_read_as_edited_at_once(mgsm_dir, tmp_path, capfd):
    """The same size, the same second: datasets' own cache once gave the old rows back. Each load
    rebuilds the rows, quietly (no "Generating test split" bars on the console)."""
    import datasets

    copy = _copy(mgsm_dir, tmp_path / "mgsm")
    before = load_language(copy, "sw")
    assert "Generating" not in capfd.readouterr().err
    assert not datasets.utils.are_progress_bars_disabled()  # given back as it was
    rows = _rows(copy, "sw", "test")
    rows[7]["answer_number"] += 1
    (copy / "sw" / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    after = load_language(copy, "sw")
    assert after.test[7].answer_number == before.test[7].answer_number + 1
    assert after.revision != before.revision


def test_check_counts_questions_and_exemplars(mgsm_dir, tmp_path):
    copy = _copy(mgsm_dir, tmp_path / "mgsm")
    rows = _rows(copy, "sw", "test")[:-1]
    (copy / "sw" / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = _mgsm_script("check", str(copy), "--languages", "sw", tmp_path=tmp_path)
    assert out.returncode == 1
    assert "sw: 249 test questions and 8 exemplars (expected 250 and 8)" in out.stderr
