"""hubswap sweep: the grid, the paired statistics, the held-out split, the winning recipe."""

from __future__ import annotations

import random
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hubswap.errors import HubswapError
from hubswap.recipe import load_recipe
from hubswap.sweep import (
    Config,
    grid,
    paired,
    parse_range,
    rank,
    render_svg,
    split_halves,
    wilson,
    write_recipe,
)

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


def test_paired_exact_mcnemar():
    # 8 questions only `a` got right, 2 only `b`: two-sided binomial p = 2 * P(X <= 2 | 10, 1/2).
    a = [True] * 8 + [False] * 2 + [True] * 5 + [False] * 5
    b = [False] * 8 + [True] * 2 + [True] * 5 + [False] * 5
    p = paired(a, b)
    assert (p.wins, p.losses, p.n) == (8, 2, 20)
    assert p.p == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert p.diff == pytest.approx(0.3)
    assert paired(a, a).p == 1.0


def test_wilson_interval():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.35
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


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
    assert held.vs_task.losses == sum(verdicts["task"][i] for i in heldout)
    assert held.vs_task.wins == 0 and held.vs_task.p < 0.05
    assert rows[1].vs_best.losses > 0 and rows[0].vs_best.p == 1.0


def test_rank_ties_go_to_the_smaller_swap():
    configs = [Config(3, 2, 1), Config(2, 1, 0), Config(2, 2, 0)]
    verdicts = {c.name: [False] * 10 for c in configs} | {"task": [False] * 10, "language": [False] * 10}
    rows, _ = rank(verdicts, configs, list(range(5)), list(range(5, 10)))
    assert rows[0].config == Config(2, 1, 0)


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
    from hubswap.sweep import Paired, Ranked

    p = Paired(0, 0, 10, 1.0)
    rows = [Ranked(Config(b, u, t), (b + u + t) / 10, p, p, p)
            for b in (1, 2) for u in (1, 2) for t in (0, 1)]
    rows.sort(key=lambda r: -r.accuracy)
    svg = ET.fromstring(render_svg("t", rows, {"task": 0.1, "language": 0.2}))
    rects = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.get("stroke-width") == "3"]
    assert len(rects) == 1 and rects[0].find("{http://www.w3.org/2000/svg}title").text.startswith("b2-u2-t1")
