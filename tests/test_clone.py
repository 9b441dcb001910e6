"""Zero-copy merges (hubswap/clone.py) on real filesystems: XFS with reflink and btrfs images
loop-mounted, ext4 and tmpfs where cloning is refused. The kernel decides; nothing is patched.
The tensors' exactness on those filesystems is tests/test_swap.py's (its ``where`` fixture)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from hubswap.clone import clone_block
from hubswap.pipeline import BuildOptions, build
from hubswap.safetensors_format import encode_header, read_header_file
from hubswap.swap import _clone_pieces, _Copy
from tests.support.cli import run_hubswap
from tests.support.filesystems import mounted, onto, settled_used_bytes, used_bytes
from tests.support.recipes import write_recipe

# Module fixtures that make models with torch: their users are `engine` (tests/conftest.py).
ENGINE_FIXTURES = {"medium"}


def tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder, through the safetensors library (as raw bytes: bf16 too)."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out |= {k: v.view(np.uint8) for k, v in load_file(folder / shard).items()}
    assert set(out) == set(index["weight_map"])
    return out


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        assert ta[name].tobytes() == tb[name].tobytes(), name


def merge_bytes(model: Path) -> dict:
    return json.loads((model / "hubswap" / "lock.json").read_text())["output"]["merge"]


# -- the layout, without a filesystem ----------------------------------------------------------


@pytest.mark.parametrize("residue", [0, 8, 400, 4088])
def test_a_header_padded_to_a_residue_is_a_valid_safetensors_header(tmp_path, residue):
    header = encode_header([("a", "F32", (3,), 12), ("b", "I16", (5,), 10)], align=(residue, 4096))
    assert len(header) % 4096 == residue
    path = tmp_path / "x.safetensors"
    path.write_bytes(header + bytes(22))
    assert read_header_file(path)["b"]["data_offsets"] == [12, 22]
    assert load_file(path)["a"].tolist() == [0.0, 0.0, 0.0]  # the library reads it as well
    with pytest.raises(ValueError, match="8-byte aligned"):
        encode_header([("a", "F32", (3,), 12)], align=(4, 4096))


@pytest.mark.parametrize("src_off,dst_off,count", [(4096, 8192, 3 * 4096), (100, 4196, 10000), (5000, 9096, 3000),
                                                   (8, 8, 4088), (4000, 8096, 200), (1, 2, 9000)])
def test_a_run_is_cloned_in_whole_blocks_and_copied_at_its_ends(src_off, dst_off, count):
    pieces = _clone_pieces(_Copy(Path("s"), src_off, 0, dst_off, count), 4096)
    assert sum(p.count for p in pieces) == count
    assert [p.src_off - src_off for p in pieces] == [p.dst_off - dst_off for p in pieces]
    pos = src_off
    for p in pieces:
        assert p.src_off == pos
        pos += p.count
        if p.clone:
            assert p.src_off % 4096 == p.dst_off % 4096 == 0 and p.count % 4096 == 0
    whole = (src_off + count) // 4096 + (-src_off) // 4096  # blocks wholly inside the run (floor - ceil)
    if (src_off - dst_off) % 4096 == 0:
        assert sum(p.count for p in pieces if p.clone) == max(whole, 0) * 4096
    else:
        assert not any(p.clone for p in pieces)


# -- on real filesystems -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> dict[str, Path]:
    """An 8-layer Llama of hidden size 512 (~30M parameters, 117 MB per fp32 expert)."""
    from hubswap.demo import make_family

    return make_family(tmp_path_factory.mktemp("medium"), num_layers=8, hidden=512, vocab_size=4096,
                       max_shard_size="20MB", with_base=False)


def _build(fam: dict[str, Path], where: Path, name: str, *, clone: bool = True, **swap) -> Path:
    recipe = write_recipe(where / f"{name}.toml", fam, **({"dtype": "auto", "bottom": 2, "top": 1, "transition": 1}
                                                          | swap))
    return build(recipe, BuildOptions(output=where / name, evaluate=False, progress=False, clone=clone)).model_dir


@pytest.mark.parametrize("kind", ["xfs", "btrfs"])
def test_a_cloned_merge_takes_disk_only_for_what_it_computes(medium, filesystems, tmp_path, kind):
    where = filesystems(kind)
    fam = onto(where, medium)
    before = settled_used_bytes(where)
    model = _build(fam, where, "cloned")
    new = settled_used_bytes(where) - before
    made = merge_bytes(model)
    size = sum(made.values())
    assert made["cloned"] > 0.7 * size and made["cast"] == 0, made
    assert made["copied"] < 64 * 4096 * len(list(model.glob("model-*.safetensors"))), made
    # new blocks: the blended layers, the copied ends of runs, the side files and card, metadata
    assert new < made["blended"] + made["copied"] + (4 << 20), (new, made)

    before = settled_used_bytes(where)
    copied = _build(fam, where, "copied", clone=False)
    assert settled_used_bytes(where) - before > size  # the copying merge writes the whole model
    assert merge_bytes(copied)["cloned"] == 0
    assert_same_tensors(model, copied)
    # with the same tensor bytes, a cloned merge's shards follow its sources' shards
    assert len(list(model.glob("model-*.safetensors"))) > len(list(copied.glob("model-*.safetensors")))
    here = _build(medium, tmp_path, "here")
    assert_same_tensors(model, here)
    assert sorted(os.listdir(copied)) == sorted(os.listdir(here))  # --no-clone: today's layout


@pytest.mark.parametrize("kind", ["ext4", "tmpfs"])
def test_where_the_filesystem_cannot_clone_the_merge_copies_as_before(tiny_llama, filesystems, tmp_path, kind):
    with mounted("tmpfs", tmp_path, 256 << 20) if kind == "tmpfs" else contextlib.nullcontext(filesystems("ext4")) as where:
        fam = onto(where, tiny_llama)
        assert clone_block([next(fam["task"].glob("*.safetensors"))], where) is None
        model = _build(fam, where, "b")
        made = merge_bytes(model)
        assert made["cloned"] == 0 and made["copied"] > 0, made
        here = _build(tiny_llama, tmp_path, "here", clone=False)
        assert sorted(os.listdir(model)) == sorted(os.listdir(here))
        assert_same_tensors(model, here)


def test_experts_on_another_filesystem_are_copied(tiny_llama, filesystems):
    where = filesystems("xfs")  # the experts stay on the test's own disk (ext4 here: no clone across)
    model = _build(tiny_llama, where, "b")
    assert merge_bytes(model)["cloned"] == 0
    assert_same_tensors(model, _build(onto(filesystems("xfs"), tiny_llama), where, "cloned"))


def _with_header_length(src: Path, extra: int) -> None:
    """Rewrite each shard of ``src`` with its JSON header ``extra`` spaces longer (a header length
    that is not a multiple of 8: the tensors' offsets then are not either)."""
    for shard in src.glob("*.safetensors"):
        data = shard.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        shard.write_bytes(struct.pack("<Q", n + extra) + data[8:8 + n] + b" " * extra + data[8 + n:])


def test_a_source_whose_offsets_cannot_be_aligned_is_copied_and_still_exact(tiny_llama, filesystems):
    where = filesystems("xfs")
    fam = onto(where, tiny_llama)
    _with_header_length(fam["language"], 4)
    assert read_header_file(next(fam["language"].glob("*.safetensors")))["__data_start__"] % 8 == 4
    model = _build(fam, where, "b", dtype="float32", bottom=2, top=2, transition=0, non_layer="language")
    made = merge_bytes(model)
    lang_bytes = sum(p.stat().st_size for p in fam["language"].glob("*.safetensors"))
    assert made["copied"] > 0.3 * lang_bytes and made["cloned"] > 0, made  # the task expert's middle is cloned
    assert_same_tensors(model, _build(tiny_llama, where, "reference", dtype="float32", bottom=2, top=2,
                                      transition=0, non_layer="language", clone=False))


def test_clone_false_and_no_clone_copy_everything(tiny_llama, filesystems):
    where = filesystems("btrfs")
    fam = onto(where, tiny_llama)
    recipe = write_recipe(where / "r.toml", fam, dtype="float32", swap={"clone": False})
    assert merge_bytes(build(recipe, BuildOptions(output=where / "a", evaluate=False, progress=False)).model_dir) \
        == merge_bytes(_build(fam, where, "b", dtype="float32", clone=False))
    cloned = write_recipe(where / "c.toml", fam, dtype="float32")
    r = run_hubswap("build", str(cloned), "--no-eval", "--no-clone", "-o", str(where / "c"))
    assert r.returncode == 0, r.stderr
    assert merge_bytes(where / "c" / "model")["cloned"] == 0
    r = run_hubswap("build", str(cloned), "--no-eval", "-o", str(where / "d"))
    assert r.returncode == 0, r.stderr
    made = merge_bytes(where / "d" / "model")
    assert made["cloned"] > 0
    assert f"tensors: {_human(made['cloned'])} cloned, " in r.stdout, r.stdout


def _human(n: int) -> str:
    from hubswap.files import human_size

    return human_size(n)


def _leave_free(filler: Path, room: int) -> None:
    """Take the free space of ``filler``'s filesystem but about ``room`` bytes (within 64 MiB)."""
    margin = room
    while True:
        try:
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, max(shutil.disk_usage(filler.parent).free - margin, 1))
            return
        except OSError as e:  # the filesystem keeps some for its metadata: ask for a little less
            assert e.errno == 28 and margin < room + (64 << 20), e
            filler.unlink()
            margin += 1 << 20


@pytest.mark.mounts
def test_a_disk_with_room_for_the_computed_part_only_takes_a_cloned_build(medium, tmp_path):
    """On a full disk, a cloned build needs room for what it computes and copies, not the model
    (on an XFS image of its own: it fills it up)."""
    with mounted("xfs", tmp_path, 1 << 30) as where:
        _nearly_full(medium, where)


def _nearly_full(medium: dict[str, Path], where: Path) -> None:
    fam = onto(where, medium)
    model_size = sum(p.stat().st_size for p in fam["task"].glob("*.safetensors"))
    _leave_free(where / "filler", model_size // 2)  # ~1.5x the blended layers, plus the side files
    assert shutil.disk_usage(where).free < model_size
    r = run_hubswap("build", str(write_recipe(where / "r.toml", fam, dtype="auto", bottom=2, top=1, transition=1)),
                    "--no-eval", "--no-clone", "-o", str(where / "copied"))
    assert r.returncode == 8 and "error: the merged model needs " in r.stderr, r.stderr
    assert not (where / "copied" / "model").exists()
    r = run_hubswap("build", str(where / "r.toml"), "--no-eval", "-o", str(where / "cloned"))
    assert r.returncode == 0, r.stderr
    assert merge_bytes(where / "cloned" / "model")["cloned"] > model_size // 2

    used = used_bytes(where)
    _leave_free(where / "filler-2", 4 << 20)  # now not even the blended layers fit: refused, nothing left
    assert used_bytes(where) > used
    r = run_hubswap("build", str(where / "r.toml"), "--no-eval", "-o", str(where / "full"))
    assert r.returncode == 8, r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")][0].startswith(
        "error: the merged model needs "), r.stderr
    assert not (where / "full").exists()  # refused before anything was written


def test_a_sweep_s_scratch_merges_clone(tiny_llama, mgsm_dir, filesystems, caplog):
    """A sweep on XFS: each configuration's scratch merge shares the experts' blocks, so the
    sweep's merges take disk for their blended layers only (kept here with --keep, to count them)."""
    import logging

    from hubswap.cli import main

    where = filesystems("xfs")
    fam = onto(where, tiny_llama)
    recipe = write_recipe(where / "r.toml", fam, dtype="float32", eval={
        "dataset": str(mgsm_dir), "languages": ["sw"], "num_fewshot": 0, "max_new_tokens": 2,
        "backend": "transformers", "limit": 2}, gate={"must_beat": []})
    before = settled_used_bytes(where)
    caplog.set_level(logging.INFO, logger="hubswap.sweep_eval")
    assert main(["sweep", str(recipe), "--bottom", "1..2", "--top", "1", "--transition", "0..1", "--keep",
                 "-o", str(where / "sweep"), "--max-shard-size", "100KB"]) == 0
    new = settled_used_bytes(where) - before
    scratch = [m for m in (where / "sweep" / "scratch").iterdir() if m.is_dir()]
    assert len(scratch) == 4
    written = sum(p.stat().st_size for m in scratch for p in m.glob("*.safetensors"))
    said = [r.getMessage() for r in caplog.records if " cloned, " in r.getMessage()]
    assert len(said) == 4, said
    print(f"sweep of 4 configurations on XFS: {written} B of scratch shards, {new} B of new blocks "
          f"({new / written:.0%}; the disk's use before and after, settled)")
    assert new < 0.5 * written, (new, written)  # blends, the partial blocks, eval records, metadata
    assert_same_tensors(scratch[0], _build(tiny_llama, where, "reference", clone=False,
                                           **_swap_of(scratch[0].name)))


def _swap_of(name: str) -> dict:
    """``b1-u1-t0`` -> the [swap] keys of that configuration."""
    b, u, t = (int(part[1:]) for part in name.split("-"))
    return {"bottom": b, "top": u, "transition": t, "dtype": "float32"}


def test_a_cloned_merge_loads_in_vllm_and_answers_as_the_copied_one(tiny_llama_vllm, mgsm_dir, filesystems, tmp_path):
    """The cloned output (headers padded, shards cut where the sources' are) through vLLM's own
    loader on the CPU: the same greedy answers, question by question, as today's copied merge."""
    where = filesystems("xfs")
    cloned = _build(onto(where, tiny_llama_vllm), where, "cloned")
    assert merge_bytes(cloned)["cloned"] > 0, merge_bytes(cloned)
    copied = _build(tiny_llama_vllm, tmp_path, "copied", clone=False)
    assert merge_bytes(copied)["cloned"] == 0
    r = run_hubswap("eval", cloned, "--name", "cloned", "--compare", f"copied={copied}", "--dataset", mgsm_dir,
                    "--languages", "sw", "--prompt", "direct", "--num-fewshot", "0", "--max-new-tokens", "8",
                    "--limit", "4", "--vllm", "max_model_len=512", "-o", tmp_path / "eval", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    answers = {name: [json.loads(line)["generation"] for line in (tmp_path / "eval" / f"{name}.sw.jsonl").open()]
               for name in ("cloned", "copied")}
    assert len(answers["cloned"]) == 4 and answers["cloned"] == answers["copied"], answers
