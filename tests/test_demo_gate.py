"""The gate, the statistics, the soup baseline and the card on real scores: builds of the demo world
(hubswap/demo_world.py), evaluated by the real pipeline (transformers backend, 20 Swahili
questions: the world's models are exact, so a small sample shows the difference). The swap that
analyze suggests passes `must_beat = ["task", "language", "soup"]`; a swap that takes one layer
too many from the language expert (layer 2, where the arithmetic starts) breaks the circuit and
fails it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hubswap.demo_world import ROLES, write_world
from hubswap.errors import GateFailedError
from hubswap.pipeline import BuildOptions, build
from tests.support.recipes import write_recipe

pytestmark = [pytest.mark.engine, pytest.mark.slow]  # evaluates with transformers
EVAL = {"languages": ["sw"], "prompt": "native-cot", "num_fewshot": 0, "max_new_tokens": 8,
        "compare": ["task", "language"], "baselines": ["soup"], "backend": "transformers", "limit": 20}
GATE = {"must_beat": ["task", "language", "soup"], "margin": 0.5}  # beat each by 50 points


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return write_world(tmp_path_factory.mktemp("world"))


def recipe(world, path: Path, bottom: int) -> Path:
    return write_recipe(path, {r: world[r] for r in ROLES}, bottom=bottom, top=2, transition=0,
                        dtype="bfloat16", eval={**EVAL, "dataset": str(world["mgsm"])}, gate=GATE)


def test_the_swap_beats_both_experts_and_the_soup(world, tmp_path):
    result = build(recipe(world, tmp_path / "r.toml", bottom=2), BuildOptions(output=tmp_path / "b", progress=False))
    ev = json.loads((result.model_dir / "hubswap" / "eval_results.json").read_text())
    acc = {m: ev["models"][m]["languages"]["sw"]["accuracy"] for m in ev["models"]}
    assert acc == {"merged": 1.0, "task": 0.0, "language": 0.0, "soup": 0.0}
    assert ev["gate"]["passed"]
    for other in ("task", "language", "soup"):
        paired = ev["comparisons"][other]["sw"]
        assert paired["merged_only"] == 20 and paired["ci95"][0] > 0.7 and paired["mcnemar_p"] < 1e-5, other
    assert ev["models"]["soup"]["source"].startswith("the uniform average of the task and language experts")

    # The soup is the same streaming merge with every tensor weighted 1/2 (here cast to bf16).
    import torch
    from safetensors.torch import load_file

    soup = {}
    for f in sorted((tmp_path / "b" / "baselines" / "soup").glob("*.safetensors")):
        soup.update(load_file(f))
    task, lang = (load_file(world[r] / "model.safetensors") for r in ("task", "language"))
    assert set(soup) == set(task)
    for name in ("model.layers.3.mlp.down_proj.weight", "model.embed_tokens.weight", "lm_head.weight"):
        mean = ((task[name] + lang[name]) / 2).numpy()
        assert soup[name].dtype == torch.bfloat16
        assert np.allclose(soup[name].float().numpy(), mean, rtol=1 / 128, atol=1e-6), name

    card = (result.model_dir / "README.md").read_text()
    assert "soup (experts averaged)" in card

    # A rebuild whose recipe no longer names the soup removes it: a baseline is as large as the model.
    plain = write_recipe(tmp_path / "plain.toml", {r: world[r] for r in ROLES}, bottom=2, top=2, transition=0,
                         dtype="bfloat16")
    build(plain, BuildOptions(output=tmp_path / "b", evaluate=False, progress=False))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".hubswap.lock", "model"]


def test_a_swap_that_breaks_the_circuit_fails_the_gate(world, tmp_path):
    with pytest.raises(GateFailedError) as e:
        build(recipe(world, tmp_path / "r.toml", bottom=3), BuildOptions(output=tmp_path / "b", progress=False))
    ev = json.loads((tmp_path / "b" / "model" / "hubswap" / "eval_results.json").read_text())
    assert not ev["gate"]["passed"]
    assert ev["models"]["merged"]["languages"]["sw"]["accuracy"] == 0.0
    assert ev["gate"]["reasons"] == [f"merged 0.0% < {m} 0.0% +50.0 points (n=20)" for m in ("task", "language", "soup")]
    assert "merged 0.0% < task 0.0% +50.0 points" in str(e.value)
