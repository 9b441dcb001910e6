"""hubswap sweep: the grid, the paired statistics, the held-out split, the winning recipe."""

from __future__ import annotations

import random
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hubswap.errors import HubswapError
from hubswap.recipe import load_recipe
from hubswap.sweep_figure import sweep_heatmap
from hubswap.sweeps import (
    Config,
    grid,
    parse_range,
    rank,
    split_halves,
    write_recipe,
)
from tests.support.cli import run_hubswap

REPO = Path(__file__).resolve().parent.parent


def test_parse_range():
    assert parse_range("3..8", "--bottom") == [3, 4, 5, 6, 7, 8]
    assert parse_range("2", "--top") == [2]
    assert parse_range("0,2,1", "--transition") == [0, 1, 2]
    for bad in ("8..3", "a..b", "-1", "1..", ""):
        with pytest.raises(HubswapError, match="--bottom"):
            parse_range(bad, "--bottom")


def test_grid_keeps_a_task_layer():
    configs, skipped = grid([1, 2, 3], [1, 2], [0, 1], num_layers=6)
    assert all(c.bottom + c.top + 2 * c.transition < 6 for c in configs)
    assert len(configs) + skipped == 12
    assert Config(3, 2, 0) in configs and Config(3, 2, 1) not in configs


def test_split_halves_is_fixed_and_disjoint():
    a, b = split_halves(250, seed=0)
    assert (a, b) == split_halves(250, seed=0)
    assert len(a) == 125 and len(b) == 125 and not set(a) & set(b)
    assert a != list(range(125))  # not simply the first half: MGSM's order is not random
    assert split_halves(250, seed=1) != (a, b)


def test_rank_chooses_on_the_selection_half_only():
    rng = random.Random(0)
    n = 200
    select, heldout = split_halves(n, seed=0)
    s = set(select)
    configs = [Config(1, 1, 0), Config(2, 1, 0), Config(2, 2, 1)]
    verdicts = {
        "task": [rng.random() < 0.3 for _ in range(n)],
        "language": [rng.random() < 0.2 for _ in range(n)],
        # Right on every selection question and on no held-out one: a config that "overfits".
        "b1-u1-t0": [i in s for i in range(n)],
        "b2-u1-t0": [rng.random() < 0.5 for _ in range(n)],
        "b2-u2-t1": [rng.random() < 0.4 for _ in range(n)],
    }
    rows, held = rank(verdicts, configs, select, heldout)
    assert rows[0].config == Config(1, 1, 0) and rows[0].accuracy == 1.0
    assert [r.config for r in rows] == [Config(1, 1, 0), Config(2, 1, 0), Config(2, 2, 1)]
    # ... and the held-out half shows it: 0 accuracy, worse than both experts there.
    assert held.accuracy["b1-u1-t0"] == 0.0 and held.n == 100
    assert held.vs_task.other_only == sum(verdicts["task"][i] for i in heldout)
    assert held.vs_task.merged_only == 0 and held.vs_task.mcnemar_p < 0.05
    assert rows[1].vs_best.other_only > 0 and rows[0].vs_best.mcnemar_p == 1.0


def test_rank_ties_go_to_the_smaller_swap():
    configs = [Config(3, 2, 1), Config(2, 1, 0), Config(2, 2, 0)]
    verdicts = {c.name: [False] * 10 for c in configs} | {"task": [False] * 10, "language": [False] * 10}
    rows, _ = rank(verdicts, configs, list(range(5)), list(range(5, 10)))
    assert rows[0].config == Config(2, 1, 0)


def test_a_tie_goes_to_the_smaller_swap_even_when_it_comes_later_in_config_order():
    """Config order (bottom, top, transition) and swap size disagree here: b1-u6-t0 sorts first but
    swaps 7 layers; b2-u1-t0 swaps 3, b1-u2-t0 swaps 3 too with the lower bottom; b1-u1-t1 swaps
    4 (two transition layers). All four tie; a better one is ranked above them all."""
    configs = [Config(1, 6, 0), Config(1, 1, 1), Config(2, 1, 0), Config(1, 2, 0), Config(4, 4, 0)]
    tie = [True, False, True, False, False, False]
    verdicts = {c.name: list(tie) for c in configs} | {"task": [False] * 6, "language": [False] * 6}
    verdicts["b4-u4-t0"] = [True, True, True, False, False, False]
    rows, _ = rank(verdicts, configs, list(range(6)), list(range(6)))
    assert [r.config.name for r in rows] == ["b4-u4-t0", "b1-u2-t0", "b2-u1-t0", "b1-u1-t1", "b1-u6-t0"]


def test_write_recipe_changes_only_swap(tmp_path):
    src = tmp_path / "r.toml"
    shutil.copyfile(REPO / "recipes" / "llama-swahili-math.toml", src)
    loaded = load_recipe(src)
    out = write_recipe(loaded, Config(4, 3, 0), tmp_path / "r.sweep.toml", ["chosen by a test"])
    new = load_recipe(out).recipe
    assert (new.swap.bottom, new.swap.top, new.swap.transition) == (4, 3, 0)
    assert new.model_copy(update={"swap": loaded.recipe.swap}) == loaded.recipe
    text = out.read_text()
    assert text.startswith("# chosen by a test\n")
    assert "# Llama 3.1 8B that does math in Swahili" in text  # comments kept


def test_write_recipe_adds_transition_and_drops_overrides(tmp_path):
    src = tmp_path / "r.toml"
    text = (REPO / "recipes" / "llama-swahili-math.toml").read_text()
    src.write_text(text.replace("transition = 1\n", "transition_bottom = 2  # wide\ntransition_top = 0\n"))
    out = write_recipe(load_recipe(src), Config(3, 1, 1), tmp_path / "o.toml", ["x"])
    swap = load_recipe(out).recipe.swap
    assert (swap.bottom, swap.top, swap.tb, swap.tu) == (3, 1, 1, 1)
    assert swap.transition_bottom is None and swap.transition_top is None


def test_render_svg_is_valid_and_marks_the_choice():
    from hubswap.evaluate.stats import paired_comparison
    from hubswap.sweeps import Ranked

    p = paired_comparison([True] * 10, [False] * 10)
    rows = [Ranked(Config(b, u, t), (b + u + t) / 10, p, p, p)
            for b in (1, 2) for u in (1, 2) for t in (0, 1)]
    rows.sort(key=lambda r: -r.accuracy)
    svg = ET.fromstring(sweep_heatmap("t", rows, {"task": 0.1, "language": 0.2}, questions=10))
    rects = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.get("stroke-width") == "3"]
    assert len(rects) == 1 and rects[0].find("{http://www.w3.org/2000/svg}title").text == "chosen: b2-u2-t1"
    # Percent with one decimal, as build and eval print; how many questions stand behind a cell;
    # a colour scale from the lowest to the highest accuracy shown (the task expert's 10%).
    texts = [e.text for e in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "50.0" in texts and "0.50" not in texts  # b2-u2-t1's cell
    assert "b2-u2-t1: 50.0% of 10 questions" in [e.text for e in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert any("the same 10 questions" in (t or "") for t in texts)
    assert "accuracy %" in texts and "10.0" in texts


# Written out: the sweep rewrites this text, and its comments must survive (test_sweep_end_to_end).
SWEEP_RECIPE = """\
schema_version = 1
name = "tiny-sweep"

[models.base]
path = "{root}/base"
[models.task]
path = "{root}/task"
[models.language]
path = "{root}/language"

[swap]
bottom = 2      # replaced by the sweep's choice
top = 1
transition = 1
dtype = "float32"

[eval]
dataset = "{mgsm}"
languages = ["sw", "en"]
num_fewshot = 0       # tiny random models answer nothing: keep the prompts and generations short
max_new_tokens = 4
backend = "transformers"
limit = 6

[gate]
must_beat = []
"""


@pytest.fixture(scope="module")
def sweep_recipe(tiny_llama, mgsm_dir, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("sweep") / "recipe.toml"
    p.write_text(SWEEP_RECIPE.format(root=tiny_llama["task"].parent, mgsm=mgsm_dir))
    return p


def test_sweep_end_to_end(sweep_recipe, tiny_llama, tmp_path, capsys, caplog):
    import json
    import logging

    from safetensors import safe_open

    from hubswap.cli import main

    out = tmp_path / "sweep"
    argv = ["sweep", str(sweep_recipe), "--bottom", "1..2", "--top", "1", "--transition", "0..1",
            "-o", str(out), "--keep"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "selected on a fixed half of the questions (3); scored on the other, held-out half (3" in printed

    data = json.loads((out / "sweep.json").read_text())
    assert (data["questions"], data["selection_questions"], data["heldout_questions"]) == (6, 3, 3)
    names = {c["name"] for c in data["configs"]}
    assert names == {"b1-u1-t0", "b1-u1-t1", "b2-u1-t0", "b2-u1-t1"}
    # Only the target language: the experts on all 6 questions, every configuration on the
    # selection half only, and only the chosen one on the held-out half too.
    select, held = split_halves(6, seed=0)

    def indices(name: str) -> list[int]:
        return [json.loads(x)["index"] for x in (out / "eval" / f"{name}.sw.jsonl").read_text().splitlines()]

    for name in [*names, "task", "language"]:
        assert indices(name) == (list(range(6)) if name in ("task", "language") else select), name
        assert not (out / "eval" / f"{name}.en.jsonl").exists()
    winner = data["configs"][0]["name"]
    assert indices(f"{winner}.heldout") == held
    assert sorted(p.name for p in (out / "eval").glob("*.heldout.*")) == [f"{winner}.heldout.sw.jsonl"]
    # The selection accuracy is computed on those records; the held-out accuracy on the others.
    for c in data["configs"]:
        records = [json.loads(x) for x in (out / "eval" / f"{c['name']}.sw.jsonl").read_text().splitlines()]
        assert c["selection_accuracy"] == sum(r["correct"] for r in records) / 3
        assert c["cost"]["questions"] == 3 and c["cost"]["merge_s"] > 0 and c["cost"]["eval_s"] > 0
    records = [json.loads(x) for x in (out / "eval" / f"{winner}.heldout.sw.jsonl").read_text().splitlines()]
    assert data["heldout"]["accuracy"]["chosen"] == sum(r["correct"] for r in records) / 3
    assert data["heldout_cost"]["questions"] == 3
    assert "cost per configuration (median of 4):" in printed
    assert "the chosen configuration on the held-out half:" in printed

    # --keep: the merged models stay, and each is the layer swap it claims to be.
    kept = out / "scratch" / "b1-u1-t0"
    assert (kept / "config.json").is_file()

    def tensor(folder: Path, name: str):
        index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        with safe_open(str(folder / index[name]), framework="pt") as f:
            return f.get_tensor(name)

    for name, role in [("model.layers.0.mlp.up_proj.weight", "language"),
                       ("model.layers.3.mlp.up_proj.weight", "task"),
                       ("model.layers.7.self_attn.q_proj.weight", "language")]:
        assert tensor(kept, name).equal(tensor(tiny_llama[role], name))

    # The winner, as a recipe beside the original that validates and builds what was chosen.
    chosen = data["chosen"]
    written = load_recipe(sweep_recipe.with_name("recipe.sweep.toml"))
    swap = written.recipe.swap
    assert (swap.bottom, swap.top, swap.transition) == (chosen["bottom"], chosen["top"], chosen["transition"])
    assert "# replaced by the sweep's choice" in written.text

    svg = ET.parse(out / "sweep.svg").getroot()
    assert svg.tag.endswith("svg")

    # Without --keep the scratch models are removed; every generation comes from the cache, keyed by
    # the experts. content and the [swap].
    out2 = tmp_path / "again"
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(["sweep", str(sweep_recipe), "--bottom", "1", "--top", "1", "-o", str(out2),
                 "--recipe-out", str(tmp_path / "best.toml")]) == 0
    assert not (out2 / "scratch").exists()
    assert (tmp_path / "best.toml").is_file()
    assert "evaluating task: cached (sw from " in caplog.text
    assert "evaluating b1-u1-t0: cached (sw from " in caplog.text


def test_summary_says_how_the_choice_was_made():
    from hubswap.sweeps import SweepResult

    configs = [Config(1, 1, 0), Config(2, 1, 0)]
    verdicts = {"task": [True, False] * 5, "language": [False] * 10,
                "b1-u1-t0": [True] * 10, "b2-u1-t0": [False, True] * 5}
    select, heldout = split_halves(10, seed=0)
    rows, held = rank(verdicts, configs, select, heldout)
    text = SweepResult("x", "sw", 8, rows, held, 10, 5, True, 0).summary()
    assert "selected on a fixed half of the questions (5); scored on the other, held-out half (5" in text
    assert "chosen: bottom = 1, top = 1, transition = 0" in text
    # Accuracies in percent with one decimal and differences in points, as build and eval print
    # them; p-values with two significant digits (1.0, never 1).
    assert "  chosen    100.0% [" in text and "  language  0.0% [" in text
    assert "chosen - language: +100.0 [" in text
    table = text.splitlines()[2:4]
    assert table[0].split()[5] == "100.0" and table[1].split()[5] == "60.0", table
    assert "p=1" not in text.replace("p=1.0", ""), text

    rows, held = rank(verdicts, configs, list(range(10)), list(range(10)))
    text = SweepResult("x", "sw", 8, rows, held, 10, 10, False, 0).summary()
    assert "WARNING: selected and scored on the same 10 questions (--no-holdout)" in text


def test_sweep_of_hub_experts_downloads_each_file_once(hub, tiny_llama, mgsm_dir, tmp_path):
    """Experts on a real HTTP Hub: every weight file is fetched whole exactly once for the sweep."""
    import json
    import re
    from collections import Counter

    # A namespace of its own: blobs another test cached under the same repo id would hide requests.
    org = "sweep-once"
    text = (SWEEP_RECIPE.format(root="unused", mgsm=mgsm_dir)
            .replace('path = "unused/base"', f'repo = "{org}/base"')
            .replace('path = "unused/task"', f'repo = "{org}/task"')
            .replace('path = "unused/language"', f'repo = "{org}/language"')
            .replace("limit = 6", "limit = 2"))
    recipe = tmp_path / "hub.toml"
    recipe.write_text(text)
    for role, path in tiny_llama.items():
        hub.upload_folder(f"{org}/{role}", path, message=f"tiny {role}")
    run = run_hubswap("sweep", recipe, "--bottom", "1..2", "--top", "1", "-o", tmp_path / "out", hub=hub,
                      cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    whole = Counter(p for m, p, rng in hub.requests if m == "GET" and p.endswith(".safetensors") and rng is None)
    shards = {f"/{org}/{role}/resolve/{p.name}" for role in ("task", "language")
              for p in tiny_llama[role].glob("*.safetensors")}
    # /org/task/resolve/<commit>/model-...: the experts' shards once each, none of the base's.
    assert {re.sub(r"/resolve/[^/]+/", "/resolve/", p) for p in whole} == shards
    assert set(whole.values()) == {1}
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["questions"] == 2
