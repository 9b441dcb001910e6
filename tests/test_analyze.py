"""hubswap analyze: where each expert changed the base, and the swap that follows from it."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hubswap import analysis as analyze_mod
from hubswap.analysis import analyze, module_kind, suggest
from hubswap.cli import main
from hubswap.errors import HubswapError, IncompatibleModelsError
from tests.support.cli import run_hubswap
from tests.support.recipes import hub_models, write_recipe

# Module fixtures that make models with torch: their users are `engine` (tests/conftest.py).
ENGINE_FIXTURES = {"regional"}


def regions_recipe(path: Path, models) -> Path:
    return write_recipe(path, models, name="tiny-regions", bottom=1, top=1, transition=None, dtype=None)


def _recipe(root: Path, base: bool = True) -> Path:
    roles = ("base", "task", "language") if base else ("task", "language")
    return regions_recipe(root / "recipe.toml", {role: Path(role) for role in roles})


@pytest.fixture(scope="module")
def regional(tmp_path_factory) -> Path:
    """10 layers: the task expert changed layers 3-6, the language expert layers 0-1 and 8-9.

    Both change everything else a little (a tenth as much), like real fine-tunes do.
    """
    from hubswap.demo import make_family, region

    root = tmp_path_factory.mktemp("regional")
    make_family(
        root, num_layers=10, seed=3,
        task_change=region(range(3, 7), 0.02, 0.002),
        language_change=lambda i: 0.02 if i in (0, 1, 8, 9) else 0.002,
    )
    _recipe(root)
    return root


def test_analyze_finds_each_experts_region(regional, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", str(regional / "recipe.toml"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out

    data = json.loads((out / "changes.json").read_text())
    task, lang = data["per_layer"]["task"], data["per_layer"]["language"]
    assert len(task) == len(lang) == 10
    # Each expert's largest changes are exactly its region.
    assert set(sorted(range(10), key=lambda i: -task[i])[:4]) == {3, 4, 5, 6}
    assert set(sorted(range(10), key=lambda i: -lang[i])[:4]) == {0, 1, 8, 9}
    assert min(task[3:7]) > 5 * max(task[:3] + task[7:])

    s = data["suggestion"]
    # Layer 2 and 7 belong to neither expert's region: they stay with the task expert, unblended.
    assert (s["bottom"], s["top"]) == (2, 2)
    assert s["layer_map"].startswith("LL") and s["layer_map"].endswith("LL")
    assert "suggested swap: bottom = 2, top = 2" in printed
    for line in s["reasons"]:
        assert line in printed
    assert [r.split(":")[0].split(" =")[0] for r in s["reasons"]] == ["bottom", "top", "transition"]

    rows = list(csv.DictReader((out / "changes.csv").open()))
    kinds = {r["kind"] for r in rows if r["layer"] == "4"}
    assert kinds == {"all", "attention", "mlp", "norm"}
    non_layer = {r["kind"] for r in rows if r["layer"] == "non-layer"}
    assert non_layer == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    # Attention and MLP of a task layer both moved; the language expert barely touched them.
    att = next(r for r in rows if r["layer"] == "4" and r["kind"] == "attention")
    assert float(att["task"]) > 5 * float(att["language"])

    svg = ET.parse(out / "changes.svg").getroot()
    assert svg.tag.endswith("svg")
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert len(titles) == 20 and "layer 9 language" in titles[-1]


def test_chunked_reading_gives_the_same_numbers(regional, tmp_path, monkeypatch):
    whole = analyze(regional / "recipe.toml", tmp_path / "whole")
    # Force every matrix to be read in slices of a few rows (what a 128k-token embedding gets).
    monkeypatch.setattr(analyze_mod, "CHUNK_ELEMENTS", 200)
    sliced = analyze(regional / "recipe.toml", tmp_path / "sliced")
    for a, b in zip(whole.rows, sliced.rows, strict=True):
        assert (a.layer, a.kind, a.params) == (b.layer, b.kind, b.params)
        assert a.task == pytest.approx(b.task, rel=1e-9)
        assert a.language == pytest.approx(b.language, rel=1e-9)


def test_suggest_blends_a_boundary_both_experts_changed():
    # Layer 2 moved as much for both experts: cut after layer 1 and blend layer 2.
    task = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    lang = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    s = suggest(task, lang)
    assert (s.bottom, s.top, s.transition_bottom, s.transition_top) == (2, 1, 1, 0)
    assert s.reasons[2].startswith("transition_bottom = 1, transition_top = 0: both experts")
    assert s.toml() == "bottom = 2, top = 1, transition_bottom = 1, transition_top = 0"


def test_suggest_says_when_a_layer_both_changed_comes_whole():
    # Layer 2 moved as much for both experts, but sits inside the swapped top (layers 1-4), where
    # no transition can blend it: the reason says it comes whole, and names each layer once.
    s = suggest([3.0, 1.0, 1.0, 1.0, 3.0], [1.0, 3.0, 1.0, 3.0, 1.0])
    assert (s.bottom, s.top, s.transition_bottom, s.transition_top) == (0, 4, 0, 0)
    assert s.reasons[2] == (
        "transition = 0: no layer at a boundary of the swap was changed substantially and comparably by both "
        "experts (layer 0: task 33%, language 11%); layer 2: task 11%, language 11%: changed comparably by "
        "both experts too, but inside the swapped layers, so taken whole from the language expert")


def test_the_figure_legend_tells_blended_layers_from_swapped_ones():
    import xml.etree.ElementTree as ET

    from hubswap.analysis import change_bars

    task = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    lang = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    svg = ET.fromstring(change_bars("t", task, lang, suggest(task, lang)))
    texts = [e.text for e in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "layers from the language expert" in texts
    assert "blended layers (shade: the language expert's weight)" in texts
    assert not any("swapped in" in (t or "") for t in texts)


def test_suggest_compares_shares_not_sizes():
    # The language fine-tune moved every layer 10x more; its profile still decides only the ends.
    task = [0.1, 0.1, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1]
    lang = [10.0, 10.0, 1.0, 1.0, 1.0, 1.0, 10.0, 10.0]
    s = suggest(task, lang)
    assert (s.bottom, s.top) == (2, 2)


def test_suggest_keeps_a_middle_layer():
    s = suggest([0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0])
    assert s.bottom + s.top + s.transition_bottom + s.transition_top < 4


def test_module_kinds():
    assert module_kind("model.layers.0.self_attn.q_proj.weight") == "attention"
    assert module_kind("model.layers.0.mlp.down_proj.weight") == "mlp"
    assert module_kind("model.layers.0.input_layernorm.weight") == "norm"
    assert module_kind("model.layers.0.post_attention_layernorm.weight") == "norm"
    assert module_kind("transformer.h.0.ln_1.weight") == "norm"
    assert module_kind("transformer.h.0.attn.c_attn.weight") == "attention"


def test_analyze_needs_a_base(regional, tmp_path):
    recipe = regions_recipe(tmp_path / "recipe.toml", {"task": regional / "task", "language": regional / "language"})
    with pytest.raises(HubswapError, match=r"no \[models.base\]"):
        analyze(recipe, tmp_path / "out")


def test_analyze_reports_tensors_an_expert_lacks(regional, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    for role in ("base", "task", "language"):
        shutil.copytree(regional / role, tmp_path / role)
    gone = "model.layers.3.mlp.up_proj.weight"
    index = tmp_path / "language" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    shard = tmp_path / "language" / data["weight_map"].pop(gone)
    index.write_text(json.dumps(data))
    tensors = load_file(shard)
    del tensors[gone]
    save_file(tensors, shard, metadata={"format": "pt"})
    _recipe(tmp_path)
    with pytest.raises(IncompatibleModelsError, match=gone):
        analyze(tmp_path / "recipe.toml", tmp_path / "out")


def test_analyze_hub_repos_matches_local(hub, regional, tmp_path):
    """The same experts served by a real HTTP Hub: downloaded as the build does, same numbers."""


    local = analyze(regional / "recipe.toml", tmp_path / "local")
    recipe = regions_recipe(tmp_path / "hub.toml", hub_models())
    for role in ("base", "task", "language"):
        hub.upload_folder(f"org/{role}", regional / role, message=f"tiny {role}")
    run = run_hubswap("analyze", recipe, "-o", tmp_path / "hub", hub=hub, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    data = json.loads((tmp_path / "hub" / "changes.json").read_text())
    assert data["models"]["base"] == "org/base@main"
    assert data["per_layer"]["task"] == local.per_layer("task")
    assert data["per_layer"]["language"] == local.per_layer("language")
    assert "suggested swap: bottom = 2, top = 2" in run.stdout


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.engine  # torch writes the reference tensors
def test_decode_reads_every_float_dtype_exactly(tmp_path, dtype):
    import os

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from hubswap.analysis import _decode
    from hubswap.preflight import LocalModelFiles, tensor_table

    t = (torch.randn(7, 5, generator=torch.Generator().manual_seed(0)) * 3).to(getattr(torch, dtype))
    save_file({"w": t, "pad": torch.zeros(3)}, tmp_path / "model.safetensors")
    info = tensor_table(LocalModelFiles("base", tmp_path))["w"]
    fd = os.open(tmp_path / "model.safetensors", os.O_RDONLY)
    try:
        got = _decode(os.pread(fd, 12 * t.element_size(), info.begin + 10 * t.element_size()), info,
                      tmp_path, 12)
    finally:
        os.close(fd)
    assert np.array_equal(got, t.flatten()[10:22].double().numpy())


@pytest.mark.engine  # the model is made with torch
def test_peak_memory_is_bounded_by_the_slice_not_the_model(tmp_path):
    """Peak RSS of an analysis in a fresh process, against the same process analyzing nothing."""
    import subprocess
    import sys

    from hubswap.demo import make_family

    fam = make_family(tmp_path / "fam", num_layers=4, hidden=512, vocab_size=8192, max_shard_size="50MB")
    _recipe(tmp_path / "fam")
    inputs_mib = sum(f.stat().st_size for d in fam.values() for f in d.glob("*.safetensors")) / 2**20

    def peak_mib(code: str) -> float:
        wrapper = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]], "
                   "check=True, stdout=subprocess.DEVNULL); "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", wrapper, code], capture_output=True, text=True, check=True)
        return int(out.stdout) / 1024

    setup = "import numpy, tqdm, hubswap.analysis as a, hubswap.pipeline; a.CHUNK_ELEMENTS = 1 << 18"
    baseline = peak_mib(setup)
    run = peak_mib(f"{setup}; a.analyze({str(tmp_path / 'fam' / 'recipe.toml')!r}, {str(tmp_path / 'out')!r})")
    extra = run - baseline
    print(f"inputs {inputs_mib:.0f} MiB, baseline {baseline:.0f} MiB, analyze {run:.0f} MiB, extra {extra:.0f} MiB")
    assert (tmp_path / "out" / "changes.json").is_file()
    # A few slice-sized float64 buffers (2 MiB each) and the reads behind them, far below the inputs.
    assert extra < 40
    assert extra < inputs_mib / 4
