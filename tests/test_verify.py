"""`hubswap verify REPO[@REV]` and the card's pinned rebuild, against the test Hub: publish, move an
expert's main to new weights, and the published model still rebuilds bit for bit from the commits it
pinned; a tampered published file, a local-folder input and an unpinned publication are reported."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.support.cli import run_hubswap
from tests.support.hub_server import WRITE, seed
from tests.support.numpy_family import make_family
from tests.support.recipes import hub_models, write_recipe
from tests.support.standins import CARDS
from tests.support.standins import write_card as write_parent_card

REPO = "org/Llama-tiny-verified"


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    """A build of org/{base,task,language} (cards and licence files as the flagship's) pushed to
    REPO; then org/task's main moved to other weights. Returns (hub, work dir, the build's model folder,
    the published commit, the task's commit at build time)."""
    root = tmp_path_factory.mktemp("verify")
    (root / "tok").mkdir()
    family = make_family(root / "family", root / "tok")
    for role, folder in family.items():
        write_parent_card(folder, f"tiny {role}", **CARDS[role])
    seed(hub, family)
    work = root / "work"
    work.mkdir()
    write_recipe(work / "merge.toml", hub_models(), name="tiny-verified", publish={"repo": REPO})
    r = run_hubswap("build", "merge.toml", "--no-eval", "--push", "-o", "build", "--max-shard-size", "100KB",
                    cwd=work, hub=hub, env={"HF_TOKEN": WRITE})
    assert r.returncode == 0, r.stderr
    pinned = hub.head("org/task").sha
    # the task expert's main moves on: every tensor of its first shard changed
    shard = family["task"] / "model-00001-of-00002.safetensors"
    moved = root / "moved.safetensors"
    save_file({k: (v + np.float32(0.5)).astype(np.float32) for k, v in load_file(shard).items()},
              str(moved), metadata={"format": "pt"})
    hub.commit_files("org/task", {shard.name: moved.read_bytes()}, message="v2: more training")
    assert hub.head("org/task").sha != pinned
    return hub, work, work / "build" / "model", hub.head(REPO).sha, pinned


def test_verify_rebuilds_the_pinned_weights_after_main_moved(published, tmp_path):
    hub, work, model, commit, pinned = published
    r = run_hubswap("verify", REPO, "-o", tmp_path / "rebuild", cwd=tmp_path, hub=hub, env={"HF_TOKEN": WRITE})
    assert r.returncode == 0, r.stderr
    print(r.stdout)  # the record of a verification: pytest -rP shows it
    lines = r.stdout.splitlines()
    assert lines[0] == (f"verify {REPO}@main (commit {commit[:12]}): rebuilt from hubswap/recipe.toml and "
                        "hubswap/recipe.lock.json")
    task_line = next(x for x in lines if x.strip().startswith("task"))
    assert f"pinned at {pinned[:12]}" in task_line and "moved since the build" in task_line
    record = json.loads((model / "hubswap" / "lock.json").read_text())
    outputs = sorted(record["output"]["files"])
    assert {"LICENSE", "NOTICE", "USE_POLICY.md", "config.json", "model.safetensors.index.json"} <= set(outputs)
    assert len(record["output"]["shards"]) > 1  # built with --max-shard-size: the rebuild shards alike
    file_lines = [x for x in lines if x.startswith("ok ")]
    assert [x.split()[1] for x in file_lines] == outputs  # one line per output file
    for x in file_lines:
        name, digest = x.split()[1], x.split()[-1]
        assert digest == sha256(model / name)  # the published bytes are the ones built
    assert lines[-1] == f"all {len(outputs)} files match the published ones"
    # the rebuild read the pinned commit, not the task's main of today
    rebuilt = json.loads((tmp_path / "rebuild" / "build" / "model" / "hubswap" / "lock.json").read_text())
    assert rebuilt["models"]["task"]["commit"] == pinned


def test_the_cards_build_command_is_pinned_too(published, tmp_path):
    """The card's `hubswap build hubswap/recipe.toml` in a download of the repo finds
    hubswap/recipe.lock.json beside the recipe: the same weights, whatever main says now."""
    from huggingface_hub import snapshot_download

    hub, _, model, commit, pinned = published
    snap = Path(snapshot_download(REPO, revision=commit, endpoint=hub.url, token=WRITE, cache_dir=tmp_path / "cache"))
    repo = tmp_path / "repo"
    shutil.copytree(snap, repo)
    card = (repo / "README.md").read_text()
    assert f"hubswap verify {REPO}" in card
    [command] = re.findall(r"`(hubswap build hubswap/recipe\.toml[^`]*)`", card)
    assert command == "hubswap build hubswap/recipe.toml --no-push --max-shard-size 100000"  # sharded alike
    r = run_hubswap(*shlex.split(command)[1:], "--no-eval", "-o", "rebuilt", cwd=repo, hub=hub,
                    env={"HF_TOKEN": WRITE})
    assert r.returncode == 0, r.stderr
    assert "using hubswap/recipe.lock.json" in r.stderr
    for shard in json.loads((model / "hubswap" / "lock.json").read_text())["output"]["shards"]:
        assert sha256(repo / "rebuilt" / "model" / shard) == sha256(model / shard)


def test_a_tampered_published_file_is_reported(published, tmp_path):
    hub, _, model, commit, _ = published
    index = json.loads((model / "model.safetensors.index.json").read_text())
    index["metadata"]["total_size"] += 1
    hub.commit_files(REPO, {"model.safetensors.index.json": json.dumps(index).encode()}, message="tamper")
    try:
        r = run_hubswap("verify", REPO, cwd=tmp_path, hub=hub, env={"HF_TOKEN": WRITE})
        assert r.returncode == 10, r.stderr
        [bad] = [x for x in r.stdout.splitlines() if not x.startswith(("ok ", "verify ", "  "))][:-1]
        assert bad.startswith("DIFFERS      model.safetensors.index.json  published ")
        assert r.stdout.splitlines()[-1].startswith("1 of ")
        assert "error: " in r.stderr and "model.safetensors.index.json" in r.stderr
        # the commit before the tampering still verifies
        again = run_hubswap("verify", f"{REPO}@{commit}", cwd=tmp_path, hub=hub, env={"HF_TOKEN": WRITE})
        assert again.returncode == 0, again.stderr
    finally:
        hub.commit_files(REPO, {"model.safetensors.index.json": (model / "model.safetensors.index.json").read_bytes()})


def test_local_folder_inputs_are_not_verifiable_from_the_hub(published, tmp_path):
    hub, work, _, _, _ = published
    folders = {role: tmp_path / role for role in ("base", "task", "language")}
    make_family(tmp_path / "local", _empty(tmp_path / "tok"))
    for role in folders:
        shutil.move(tmp_path / "local" / role, folders[role])
    write_recipe(tmp_path / "local.toml", folders, name="tiny-local", publish={"repo": "org/Llama-local"})
    r = run_hubswap("build", "local.toml", "--no-eval", "--push", "-o", "b", cwd=tmp_path, hub=hub,
                    env={"HF_TOKEN": WRITE})
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "b" / "model" / "hubswap" / "recipe.lock.json").exists()
    assert "which are not\nverifiable from the Hub" in (tmp_path / "b" / "model" / "README.md").read_text()
    r = run_hubswap("verify", "org/Llama-local", cwd=tmp_path, hub=hub, env={"HF_TOKEN": WRITE})
    assert r.returncode == 10
    assert f"built from local folders (base `{folders['base'].name}`, task `{folders['task'].name}`, " \
           f"language `{folders['language'].name}`): not verifiable from the Hub" in r.stderr


def test_verify_refuses_what_it_cannot_check(published, tmp_path):
    hub, *_ = published
    r = run_hubswap("verify", "org/task", cwd=tmp_path, hub=hub)  # a model, not a hubswap build
    assert r.returncode == 3 and "is not a hubswap build" in r.stderr
    r = run_hubswap("verify", "not a repo", cwd=tmp_path, hub=hub)
    assert r.returncode == 1 and "is not a Hub repo id" in r.stderr
    r = run_hubswap("verify", "org/nothing-here", cwd=tmp_path, hub=hub)
    assert r.returncode == 4


def _empty(p: Path) -> Path:
    p.mkdir()
    return p
