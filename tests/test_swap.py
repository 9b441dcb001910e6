"""The streaming merge on two real tiny architectures, checked tensor by tensor and end to end."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from safetensors import safe_open

from hubswap.layermap import layer_map
from hubswap.pipeline import BuildOptions, build
from hubswap.recipe import Swap
from tests.support.filesystems import onto
from tests.support.recipes import write_recipe

pytestmark = pytest.mark.engine  # every test compares with torch's merge


@pytest.fixture(params=["here", pytest.param("xfs", marks=pytest.mark.mounts),
                        pytest.param("btrfs", marks=pytest.mark.mounts)])
def where(request, tmp_path) -> Path:
    """Where a test's experts and build live: its tmp_path, or a folder on a filesystem that
    clones (XFS with reflink, btrfs), where tensors taken whole are cloned, not copied."""
    return tmp_path if request.param == "here" else request.getfixturevalue("filesystems")(request.param)


def check_bytes(result, where: Path, tmp_path: Path, *, raw: bool) -> None:
    """The build record says how the tensors' bytes were made, and they add up to the model; on
    a filesystem that clones, the tensors taken whole (``raw``: some are) were cloned."""
    made = result.merged
    lock = json.loads((result.model_dir / "hubswap" / "lock.json").read_text())
    assert lock["output"]["merge"] == {"cloned": made.cloned, "copied": made.copied, "blended": made.blended,
                                       "cast": made.cast}
    index = json.loads((result.model_dir / "model.safetensors.index.json").read_text())
    assert sum(lock["output"]["merge"].values()) == index["metadata"]["total_size"]
    if where != tmp_path and raw:
        assert made.cloned > 0.5 * (made.cloned + made.copied), made

if TYPE_CHECKING:
    import torch


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(folder / shard, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    assert set(out) == set(index["weight_map"])
    return out


def expected_tensor(name, lang, task, swap: Swap, num_layers: int, dtype: torch.dtype) -> torch.Tensor:
    """docs/DESIGN.md's "Layer map" table, written independently of hubswap.layermap."""
    b, u, tb, tu, n = swap.bottom, swap.top, swap.tb, swap.tu, num_layers
    m = re.match(r"model\.layers\.(\d+)\.", name)  # both tiny families keep their layers there
    i = int(m.group(1)) if m else None
    if i is None:
        w = 1.0 if swap.non_layer == "language" else 0.0
    elif i < b or i >= n - u:
        w = 1.0
    elif i < b + tb:
        w = 1 - (i - b + 1) / (tb + 1)
    elif i >= n - u - tu:
        w = (i - (n - u - tu) + 1) / (tu + 1)
    else:
        w = 0.0
    if w == 1.0:
        return lang[name].to(dtype)
    if w == 0.0:
        return task[name].to(dtype)
    return (w * lang[name].float() + (1 - w) * task[name].float()).to(dtype)


CASES = [
    # arch, bottom, top, transition(s), non_layer, dtype
    ("llama", dict(bottom=2, top=1, transition=1), "language", "float32"),
    ("llama", dict(bottom=1, top=2, transition=2), "task", "bfloat16"),
    ("qwen2", dict(bottom=2, top=1, transition=1), "language", "float32"),
    ("qwen2", dict(bottom=3, top=2, transition=0), "task", "float16"),
]

# The 8-layer map of each swap above and its rows in the card, written out by hand (docs/DESIGN.md's
# "Layer map"): region and language-expert weight of layers 0..7, bottom to top.
HAND_MAPS = {
    (2, 1, 1): ("bottom 1, bottom 1, transition-bottom 1/2, middle 0, middle 0, middle 0, transition-top 1/2, top 1", [
        "| 0–1 | bottom | language expert | 1 | 0 |", "| 2 | transition-bottom | blend | 0.5 | 0.5 |",
        "| 3–5 | middle | task expert | 0 | 1 |", "| 6 | transition-top | blend | 0.5 | 0.5 |",
        "| 7 | top | language expert | 1 | 0 |"]),
    (1, 2, 2): ("bottom 1, transition-bottom 2/3, transition-bottom 1/3, middle 0, transition-top 1/3, "
                "transition-top 2/3, top 1, top 1", [
        "| 0 | bottom | language expert | 1 | 0 |", "| 1 | transition-bottom | blend | 0.667 | 0.333 |",
        "| 2 | transition-bottom | blend | 0.333 | 0.667 |", "| 3 | middle | task expert | 0 | 1 |",
        "| 4 | transition-top | blend | 0.333 | 0.667 |", "| 5 | transition-top | blend | 0.667 | 0.333 |",
        "| 6–7 | top | language expert | 1 | 0 |"]),
    (3, 2, 0): ("bottom 1, bottom 1, bottom 1, middle 0, middle 0, middle 0, top 1, top 1", [
        "| 0–2 | bottom | language expert | 1 | 0 |", "| 3–5 | middle | task expert | 0 | 1 |",
        "| 6–7 | top | language expert | 1 | 0 |"]),
}


def hand_layers(spec: str) -> list[dict]:
    out = []
    for i, item in enumerate(spec.split(", ")):
        region, w = item.split()
        w = Fraction(w)
        out.append({"index": i, "region": region, "source": {1: "language", 0: "task"}.get(w, "blend"),
                    "language_weight": round(float(w), 6), "task_weight": round(float(1 - w), 6)})
    return out


@pytest.mark.parametrize("arch,swap,non_layer,dtype", CASES)
def test_every_tensor_follows_the_layer_map(request, tmp_path, where, arch, swap, non_layer, dtype):
    import torch
    fam = request.getfixturevalue(f"tiny_{arch}")
    fam, tmp_path, here = (fam, tmp_path, tmp_path) if where == tmp_path else (onto(where, fam), where, tmp_path)
    recipe = write_recipe(tmp_path / "r.toml", fam, non_layer=non_layer, dtype=dtype, **swap)
    result = build(recipe, BuildOptions(output=tmp_path / "b", evaluate=False, max_shard_size="300KB", progress=False))
    out_dir = result.model_dir
    assert len(list(out_dir.glob("model-*.safetensors"))) > 1  # sharded output
    merged, lang, task = load_all(out_dir), load_all(fam["language"]), load_all(fam["task"])
    assert set(merged) == set(task)
    rswap = Swap(non_layer=non_layer, dtype=dtype, **swap)
    tdtype = getattr(torch, dtype)
    for name, t in merged.items():
        want = expected_tensor(name, lang, task, rswap, 8, tdtype)
        assert t.dtype == tdtype and t.shape == want.shape, name
        assert torch.equal(t.view(torch.uint8), want.contiguous().view(torch.uint8)), name  # bit for bit
    check_bytes(result, where, here, raw=dtype == "float32")

    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["dtype"] == dtype
    lock = json.loads((out_dir / "hubswap" / "lock.json").read_text())
    layers, card_rows = HAND_MAPS[(swap["bottom"], swap["top"], swap["transition"])]
    assert lock["layer_map"] == {
        "num_layers": 8, "non_layer": non_layer, "layers": hand_layers(layers),
        "stack": "model.layers",
        "modules": {"non_layer": (["lm_head"] if arch == "llama" else []) + ["model.embed_tokens", "model.norm"],
                    "vision": []},
    }
    for role in ("base", "task", "language"):
        assert "config.json" in lock["models"][role]["files"]
    assert any(f.endswith(".safetensors") for f in lock["models"]["language"]["files"])
    outputs = lock["output"]["files"]
    assert set(outputs) == {p.name for p in out_dir.iterdir() if p.is_file() and p.name != "README.md"}
    assert all(entry["size"] == (out_dir / name).stat().st_size for name, entry in outputs.items())
    # The recipe as published: the same recipe, the experts' absolute folders shortened to their names.
    import tomllib

    published, original = (out_dir / "hubswap" / "recipe.toml").read_text(), recipe.read_text()
    assert {k: v for k, v in tomllib.loads(published).items() if k != "models"} == \
        {k: v for k, v in tomllib.loads(original).items() if k != "models"}
    assert {role: m["path"] for role, m in tomllib.loads(published)["models"].items()} == \
        {role: Path(m["path"]).name for role, m in tomllib.loads(original)["models"].items()}
    card = (out_dir / "README.md").read_text().splitlines()
    regions = ("bottom", "transition-bottom", "middle", "transition-top", "top")
    assert [line for line in card if line.startswith("| ") and line.split(" | ")[1] in regions] == card_rows


def test_tensors_computed_in_several_slices_are_bit_exact(tiny_llama, tmp_path, monkeypatch):
    """Blends and casts of tensors longer than a slice (the last one partial) equal the whole-tensor math."""
    import torch

    import hubswap.swap

    monkeypatch.setattr(hubswap.swap, "SLICE_ELEMENTS", 1000)
    swap = dict(bottom=1, top=2, transition=2)  # language weights 2/3 and 1/3: inexact in float32
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama, non_layer="language", dtype="bfloat16", **swap)
    out_dir = build(recipe, BuildOptions(output=tmp_path / "b", evaluate=False, progress=False)).model_dir
    merged, lang, task = load_all(out_dir), load_all(tiny_llama["language"]), load_all(tiny_llama["task"])
    assert max(t.numel() for t in merged.values()) > 10 * 1000
    rswap = Swap(non_layer="language", dtype="bfloat16", **swap)
    for name, t in merged.items():
        want = expected_tensor(name, lang, task, rswap, 8, torch.bfloat16)
        assert torch.equal(t.view(torch.uint8), want.contiguous().view(torch.uint8)), name


def _in_dtype(src: Path, dest: Path, dtype: torch.dtype) -> Path:
    """A copy of an expert folder with every float tensor stored in ``dtype`` (same shard layout)."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dest)
    for shard in dest.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            tensors = {k: f.get_tensor(k).to(dtype) for k in f.keys()}
        save_file(tensors, shard, metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_worker_pool_is_bit_exact_with_mixed_expert_dtypes(tiny_llama, tmp_path, where, monkeypatch, dtype):
    """The flagship case: a float32 language expert, a bfloat16 task expert. Four threads share
    chunks of each tensor (several chunks per tensor, several slices per chunk, the last ones
    partial) and copy raw ranges into several shards at once; the result equals torch's, bit for bit."""
    import torch

    import hubswap.swap

    monkeypatch.setattr(hubswap.swap, "WORKERS", 4)
    monkeypatch.setattr(hubswap.swap, "SLICE_ELEMENTS", 1000)
    monkeypatch.setattr(hubswap.swap, "TASK_ELEMENTS", 2500)
    fam = {**tiny_llama, "task": _in_dtype(tiny_llama["task"], tmp_path / "task-bf16", torch.bfloat16)}
    if where != tmp_path:
        fam = onto(where, fam)
    swap = dict(bottom=1, top=2, transition=2)
    recipe = write_recipe(where / "r.toml", fam, non_layer="language", dtype=dtype, **swap)
    result = build(recipe, BuildOptions(output=where / "b", evaluate=False, max_shard_size="300KB", progress=False))
    out_dir = result.model_dir
    assert len(list(out_dir.glob("model-*.safetensors"))) > 2
    merged, lang, task = load_all(out_dir), load_all(fam["language"]), load_all(fam["task"])
    assert {t.dtype for t in lang.values()} == {torch.float32} and {t.dtype for t in task.values()} == {torch.bfloat16}
    rswap = Swap(non_layer="language", dtype=dtype, **swap)
    for name, t in merged.items():
        want = expected_tensor(name, lang, task, rswap, 8, getattr(torch, dtype))
        assert torch.equal(t.view(torch.uint8), want.contiguous().view(torch.uint8)), name
    check_bytes(result, where, tmp_path, raw=True)  # the bf16 task expert's middle, the fp32 one's bottom, top


def test_a_truncated_input_fails_the_pool_cleanly(tiny_llama, tmp_path, monkeypatch):
    """A worker's error reaches the caller; nothing is left half-written."""
    import shutil

    import hubswap.pipeline
    import hubswap.swap

    monkeypatch.setattr(hubswap.swap, "WORKERS", 3)
    monkeypatch.setattr(hubswap.swap, "SLICE_ELEMENTS", 1000)
    monkeypatch.setattr(hubswap.swap, "TASK_ELEMENTS", 2000)
    lang = tmp_path / "language"
    shutil.copytree(tiny_llama["language"], lang)
    last = sorted(lang.glob("*.safetensors"))[-1]
    real_plan = hubswap.pipeline.plan_merge

    def truncate_after_preflight(*args, **kwargs):
        # Preflight refuses a truncated file (tests/test_corrupt_inputs.py); one cut after it passed
        # (a disk error, a file changed meanwhile) reaches the workers.
        with open(last, "r+b") as f:  # the header still promises the bytes cut off here
            f.truncate(last.stat().st_size - 5000)
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(hubswap.pipeline, "plan_merge", truncate_after_preflight)
    recipe = write_recipe(tmp_path / "r.toml", {**tiny_llama, "language": lang}, dtype="bfloat16")
    with pytest.raises(OSError, match="truncated|short copy"):
        build(recipe, BuildOptions(output=tmp_path / "b", evaluate=False, progress=False))
    assert not (tmp_path / "b" / "model").exists()
    assert not list((tmp_path / "b").glob(".model.partial-*"))


def test_first_build_hashes_local_inputs_once_and_says_so(tiny_llama, tmp_path, monkeypatch, caplog):
    """A first build names the files it hashes and records their true sha256; a rebuild reads the
    hash cache and hashes nothing."""
    import hashlib
    import logging
    import re

    monkeypatch.setenv("HUBSWAP_CACHE", str(tmp_path / "cache"))
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama)
    opts = BuildOptions(output=tmp_path / "b", evaluate=False, progress=False)
    with caplog.at_level(logging.INFO, logger="hubswap.inputs"):
        lock_path = build(recipe, opts).model_dir / "hubswap" / "lock.json"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hashing ")]
    assert len(said) == 1, said
    for role in ("task", "language"):
        assert re.search(rf"{role} \d+\.\d MB in \d+ file\(s\) of {re.escape(str(tiny_llama[role]))}(;|$)", said[0]), said
    files = json.loads(lock_path.read_text())["models"]["language"]["files"]
    assert len(files) > 2
    for name, entry in files.items():
        data = (tiny_llama["language"] / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}, name

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hubswap.inputs"):
        again = json.loads(build(recipe, opts).model_dir.joinpath("hubswap", "lock.json").read_text())
    assert not [r for r in caplog.records if r.getMessage().startswith("hashing ")]
    assert again["models"]["language"]["files"] == files


def reference_model(fam: dict[str, Path], swap: Swap, num_layers: int):
    """The merge done the slow, obvious way: load both experts in transformers, assign layers."""
    import torch
    from transformers import AutoModelForCausalLM
    task = AutoModelForCausalLM.from_pretrained(fam["task"], dtype=torch.float32)
    lang = AutoModelForCausalLM.from_pretrained(fam["language"], dtype=torch.float32)
    lmap = layer_map(swap, num_layers)
    with torch.no_grad():
        for i, src in enumerate(lmap.layers):
            t_layer, l_layer = task.model.layers[i], lang.model.layers[i]
            for p, q in zip(t_layer.parameters(), l_layer.parameters(), strict=True):
                w = src.language_weight
                p.copy_(q if w == 1 else p if w == 0 else w * q + (1 - w) * p)
        if swap.non_layer == "language":
            task.model.embed_tokens.weight.copy_(lang.model.embed_tokens.weight)
            task.model.norm.weight.copy_(lang.model.norm.weight)
            if not task.config.tie_word_embeddings:
                task.lm_head.weight.copy_(lang.lm_head.weight)
    return task.eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_merged_folder_loads_and_matches_reference_logits(request, tmp_path, where, arch):
    import torch
    from transformers import AutoModelForCausalLM
    fam = request.getfixturevalue(f"tiny_{arch}")
    if where != tmp_path:
        fam = onto(where, fam)
    recipe = write_recipe(where / "r.toml", fam, bottom=2, top=1, transition=2)
    result = build(recipe, BuildOptions(output=where / "b", evaluate=False, progress=False))
    check_bytes(result, where, tmp_path, raw=True)
    merged = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    ref = reference_model(fam, Swap(bottom=2, top=1, transition=2, dtype="float32"), 8)
    ids = torch.randint(3, 500, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = merged(ids).logits, ref(ids).logits
    assert torch.equal(a, b)
    # and not trivially: the merge differs from each expert
    task = AutoModelForCausalLM.from_pretrained(fam["task"]).eval()
    with torch.no_grad():
        assert not torch.allclose(a, task(ids).logits)


def test_rebuild_replaces_the_model_folder(tiny_llama, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama)
    opts = BuildOptions(output=tmp_path / "b", evaluate=False, progress=False)
    first = build(recipe, opts).model_dir
    (first / "stray.txt").write_text("left from an older build")
    second = build(recipe, opts).model_dir
    assert second == first and not (second / "stray.txt").exists()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".hubswap.lock", "model"]  # the lock file stays (durable.build_lock)


def test_bfloat16_conversion_matches_torch_bit_for_bit():
    import numpy as np
    import torch

    from hubswap.safetensors_format import from_float32, to_float32

    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-45, 3.4e38, 1.0 + 2**-8, 1.0 + 3 * 2**-8,
                        65504.0, 1e-8], dtype=np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([special, rng.standard_normal(100_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 100_000)])
    # NaNs whose payload rounding would carry into inf or into the sign bit (-0.0)
    nans = np.array([0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FFF8000], dtype=np.uint32).view(np.float32)
    x = np.concatenate([x.astype(np.float32), nans])
    for dtype, torch_dtype in (("BF16", torch.bfloat16), ("F16", torch.float16)):
        ours = from_float32(x, dtype)
        theirs = torch.from_numpy(x).to(torch_dtype).view(torch.int16).numpy().view(ours.dtype)
        nan = np.isnan(x)  # torch's own NaN payload depends on its code path; NaN must stay NaN
        assert np.array_equal(ours.view(np.uint16)[~nan], theirs.view(np.uint16)[~nan]), dtype
        assert np.isnan(to_float32(ours.tobytes(), dtype)[nan]).all()
        back = to_float32(ours.tobytes(), dtype)
        assert np.array_equal(back, torch.from_numpy(theirs.view(np.int16)).view(torch_dtype).float().numpy(), equal_nan=True)


def _with_buffers(src: Path, dest: Path, seed: int) -> Path:
    """A copy of an expert with integer and bool buffers in layers 0, 2, 3, 4 and 6, listed in the
    index like any weight: values of its own, so the merged one tells which side it came from."""
    import shutil

    import torch
    from safetensors.torch import save_file

    shutil.copytree(src, dest)
    g = torch.Generator().manual_seed(seed)
    extra = {f"model.layers.{i}.self_attn.position_index": torch.randint(0, 2**40, (7,), generator=g)
             for i in (0, 2, 3, 4, 6)}
    extra["model.layers.2.self_attn.causal_mask"] = torch.rand(4, 4, generator=g) > 0.5
    extra["model.layers.6.mlp.bucket"] = torch.randint(-100, 100, (3, 5), generator=g, dtype=torch.int32)
    save_file(extra, dest / "model-buffers.safetensors", metadata={"format": "pt"})
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    index["weight_map"].update({k: "model-buffers.safetensors" for k in extra})
    (dest / "model.safetensors.index.json").write_text(json.dumps(index))
    return dest


def test_integer_and_bool_tensors_are_taken_whole_never_blended(tiny_llama, tmp_path):
    """In transition layers (here layer 2: language weight 2/3, layer 3: 1/3, layer 6: 1/2) an
    integer or bool tensor comes whole from the side with the larger weight, from the task expert
    on a tie, in its own dtype, bit for bit; float tensors are blended and cast as the recipe says."""
    import torch
    fam = {**tiny_llama,
           "task": _with_buffers(tiny_llama["task"], tmp_path / "task", seed=1),
           "language": _with_buffers(tiny_llama["language"], tmp_path / "language", seed=2)}
    swap = dict(bottom=2, top=1, transition_bottom=2, transition_top=1)
    recipe = write_recipe(tmp_path / "r.toml", fam, dtype="bfloat16", bottom=2, top=1, transition=0,
                          swap={"transition_bottom": 2, "transition_top": 1})
    out_dir = build(recipe, BuildOptions(output=tmp_path / "b", evaluate=False, progress=False)).model_dir
    merged, lang, task = load_all(out_dir), load_all(fam["language"]), load_all(fam["task"])
    side = {0: lang, 2: lang, 3: task, 4: task, 6: task}
    for i, want in side.items():
        name = f"model.layers.{i}.self_attn.position_index"
        assert merged[name].dtype == torch.int64 and torch.equal(merged[name], want[name]), name
        assert not torch.equal(lang[name], task[name])
    assert merged["model.layers.2.self_attn.causal_mask"].dtype == torch.bool
    assert torch.equal(merged["model.layers.2.self_attn.causal_mask"], lang["model.layers.2.self_attn.causal_mask"])
    assert merged["model.layers.6.mlp.bucket"].dtype == torch.int32
    assert torch.equal(merged["model.layers.6.mlp.bucket"], task["model.layers.6.mlp.bucket"])
    rswap = Swap(dtype="bfloat16", **swap)
    for name, t in merged.items():
        if t.is_floating_point():
            want = expected_tensor(name, lang, task, rswap, 8, torch.bfloat16)
            assert torch.equal(t.view(torch.uint8), want.contiguous().view(torch.uint8)), name
