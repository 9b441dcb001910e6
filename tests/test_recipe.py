"""Recipe schema: closed, typed, and every mistake reported at file:line: key, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubswap.cli import main
from hubswap.errors import RecipeError
from hubswap.recipe import load_recipe
from tests.support.cli import run_hubswap

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
schema_version = 1
name = "tiny"

[models.base]
repo = "org/base"

[models.task]
repo = "org/task"
revision = "main"

[models.language]
path = "experts/lang"

[swap]
bottom = 2
top = 1
transition = 1
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_good_recipe_loads_with_defaults(tmp_path):
    loaded = load_recipe(write(tmp_path, GOOD))
    r = loaded.recipe
    assert r.models.task.ref == "main" and r.models.language.is_local
    assert r.swap.tb == r.swap.tu == 1 and r.swap.dtype == "bfloat16"
    assert loaded.resolve_path(r.models.language) == (tmp_path / "experts" / "lang").resolve()


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe, capsys):
    assert main(["validate", str(recipe)]) == 0


# (mistake, replace-this, with-this, expected line, expected key, words in the message)
MISTAKES = [
    ("unknown key", 'revision = "main"', 'revison = "main"', 9, "models.task.revison", "did you mean 'revision'"),
    ("wrong type", "bottom = 2", 'bottom = "2"', 15, "swap.bottom", "integer"),
    ("negative count", "top = 1", "top = -1", 16, "swap.top", "greater than or equal to 0"),
    ("repo and path", 'path = "experts/lang"', 'path = "experts/lang"\nrepo = "org/lang"', 11, "models.language", "not both"),
    ("short sha", 'revision = "main"', 'revision = "abc1234"', 9, "models.task.revision", "full 40-hex"),
    ("bad ref", 'revision = "main"', 'revision = "feature..x"', 9, "models.task.revision", "not a valid branch"),
    ("unknown non_layer", "transition = 1", 'transition = 1\nnon_layer = "both"', 18, "swap.non_layer", "'language' or 'task'"),
    ("unknown files_from", "transition = 1", 'transition = 1\nfiles_from = "base"', 18, "swap.files_from", "'task' or 'language'"),
    ("unknown dtype", "transition = 1", 'transition = 1\ndtype = "fp8"', 18, "swap.dtype", "'bfloat16'"),
    ("unknown table", "[swap]", "[swapp]\nbottom = 1\ntop = 1\n[swap]", 14, "swapp", "unknown key"),
    ("missing model", '[models.task]\nrepo = "org/task"\nrevision = "main"\n', "", 4, "models.task", "required key is missing"),
    ("bad repo id", 'repo = "org/base"', 'repo = "org/../base"', 5, "models.base.repo", "not a Hub repo id"),
    ("unknown language", "transition = 1", 'transition = 1\n[eval]\nlanguages = ["sw", "xx"]', 19, "eval.languages", "unknown MGSM language"),
    ("schema version", "schema_version = 1", "schema_version = 2", 1, "schema_version", "reads schema_version 1"),
]


@pytest.mark.parametrize("case", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_file_line_and_key(tmp_path, capsys, case):
    _, old, new, line, key, words = case
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: {key}: " in err, err
    assert words in err, err
    assert "Traceback" not in err


def test_all_problems_reported_at_once(tmp_path):
    text = GOOD.replace('revision = "main"', 'revison = "main"').replace("bottom = 2", "bottom = -3")
    text = text.replace("transition = 1", 'transition = 1\ndtype = "int4"')
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text))
    keys = [p.key for p in e.value.problems]
    assert keys == ["models.task.revison", "swap.bottom", "swap.dtype"]


def test_layer_counts_checked_once_L_is_known(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("bottom = 2", "bottom = 6"))
    assert main(["plan", str(path), "--layers", "8"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:14: swap: " in err and "6 + 1 + 1 + 1 = 9 exceeds the model's 8 layers" in err


def test_toml_syntax_error_has_line(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("top = 1", "top = = 1"))
    assert main(["validate", str(path)]) == 2
    assert f"{path}:16: TOML syntax" in capsys.readouterr().err


def test_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such file" in capsys.readouterr().err


def test_cli_exit_code_is_2_and_nothing_written(tmp_path):
    path = write(tmp_path, GOOD.replace("bottom = 2", "bottom = []"))
    before = sorted(tmp_path.rglob("*"))
    proc = run_hubswap("build", path, "--no-eval", "--output", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: recipe has 1 problem:\n") and "swap.bottom" in proc.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_a_baseline_in_must_beat_must_be_evaluated(tmp_path):
    gated = GOOD + '\n[eval]\ncompare = ["task"]\n{baselines}\n[gate]\nmust_beat = ["task", "soup"]\n'
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, gated.format(baselines="")))
    assert "['soup'], which neither eval.compare nor eval.baselines evaluates" in str(e.value)
    r = load_recipe(write(tmp_path, gated.format(baselines='baselines = ["soup"]'))).recipe
    assert r.eval.baselines == ["soup"] and r.gate.must_beat == ["task", "soup"]
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, gated.format(baselines='baselines = ["ties"]')))
    assert [p.key for p in e.value.problems] == ["eval.baselines[0]"]
