"""`hubswap plan` and the demo recipe shipped in recipes/."""

from __future__ import annotations

from pathlib import Path

from hubswap.cli import main
from hubswap.demo import DEMO_RECIPE
from hubswap.layermap import LayerStack, layer_map
from hubswap.recipe import Swap

REPO = Path(__file__).resolve().parent.parent


def test_layer_map_matches_the_paper_setup():
    lmap = layer_map(Swap(bottom=5, top=2, transition=1), 32)
    assert lmap.picture() == "LLLLL~" + "T" * 23 + "~LL"
    assert [float(s.weight) for s in lmap.layers[4:7]] == [1.0, 0.5, 0.0]
    lmap = layer_map(Swap(bottom=1, top=1, transition_bottom=3, transition_top=1), 10, LayerStack("model.layers", 10))
    assert [str(s.weight) for s in lmap.layers] == ["1", "3/4", "1/2", "1/4", "0", "0", "0", "0", "1/2", "1"]
    assert lmap.for_tensor("model.embed_tokens.weight").source == "language"
    assert lmap.for_tensor("model.layers.9.mlp.up_proj.weight").source == "language"


def test_plan_reads_layers_from_the_task_config(tiny_llama, tmp_path, capsys):
    """Only config.json is read (the folders hold nothing else), and it is the task expert's: here
    it says 12 layers and the language expert's says 8."""
    import json

    from tests.support.recipes import write_recipe

    family = {}
    for role, layers in (("task", 12), ("language", 8)):
        cfg = json.loads((tiny_llama[role] / "config.json").read_text())
        (tmp_path / role).mkdir()
        (tmp_path / role / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": layers}))
        family[role] = tmp_path / role
    recipe = write_recipe(tmp_path / "r.toml", family, bottom=2, top=1, transition=2)
    assert main(["plan", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "tiny-swap: 12 layers" in out
    assert "    2  transition-bottom  blend             2/3      1/3" in out
    assert out.rstrip().endswith("LL~~TTTTT~~L")


def test_shipped_demo_recipe_is_the_embedded_one():
    text = (REPO / "recipes" / "tiny-demo.toml").read_text()
    assert text == DEMO_RECIPE.format(experts="../demo/experts", dataset="../demo/mgsm")


def test_the_soup_map_blends_every_tensor_half_and_half():
    from fractions import Fraction

    from hubswap.layermap import uniform_map

    lmap = uniform_map(4, LayerStack("model.layers", 4))
    assert lmap.picture() == "~~~~"
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight", "model.norm.weight"):
        assert lmap.for_tensor(name).weight == Fraction(1, 2), name
