"""analyze and sweep on the demo world (hubswap/demo_world.py), whose experts hold their skills in
known layers: analyze finds exactly those layers and suggests the swap that works; the sweep over a
small grid picks it on the selection half, and the held-out half confirms it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubswap.demo_world import ROLES, write_world
from tests.support.recipes import write_recipe


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return write_world(tmp_path_factory.mktemp("world"))


def recipe(world, path: Path, **eval_keys) -> Path:
    return write_recipe(path, {r: world[r] for r in ROLES}, bottom=1, top=1, transition=0, dtype="bfloat16",
                        eval={"dataset": str(world["mgsm"]), "languages": ["sw"], "num_fewshot": 0,
                              "max_new_tokens": 8, **eval_keys})


def test_analyze_finds_the_layers_each_expert_changed(world, tmp_path):
    from hubswap.analysis import analyze

    analyze(recipe(world, tmp_path / "r.toml"), tmp_path / "analysis", progress=False)
    data = json.loads((tmp_path / "analysis" / "changes.json").read_text())
    task, lang = data["per_layer"]["task"], data["per_layer"]["language"]
    assert [i for i, x in enumerate(task) if x > 0] == [2, 3]
    assert [i for i, x in enumerate(lang) if x > 0] == [0, 1, 6]
    s = data["suggestion"]
    assert (s["bottom"], s["top"], s["transition_bottom"], s["transition_top"]) == (2, 2, 0, 0)
    assert s["layer_map"] == "LLTTTTLL"


@pytest.mark.engine
@pytest.mark.slow
def test_the_sweep_picks_the_working_swap_and_the_held_out_half_confirms_it(world, tmp_path):
    from hubswap.sweeps import sweep

    path = recipe(world, tmp_path / "r.toml", backend="transformers", limit=40)
    result = sweep(path, bottoms=[1, 2, 3], tops=[1, 2], transitions=[0], output=tmp_path / "sweep", progress=False)
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    ranked = {c["name"]: c["selection_accuracy"] for c in data["configs"]}
    assert ranked == {"b2-u2-t0": 1.0, **{n: 0.0 for n in ("b1-u1-t0", "b1-u2-t0", "b2-u1-t0", "b3-u1-t0", "b3-u2-t0")}}
    assert data["configs"][0]["name"] == "b2-u2-t0"
    assert data["heldout"]["accuracy"]["chosen"] == 1.0 and data["heldout_questions"] == 20
    assert "bottom = 2" in Path(result.files["recipe"]).read_text()
