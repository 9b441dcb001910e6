"""Hub stage against tests/support/hub_server.py: the real huggingface_hub client over real HTTP.

Resolving and locking, preflight by ranged reads, verified and resumable downloads, and every
failure a user can meet on the way in (gated, missing revision, dropped connections, 5xx, bytes that
do not match their sha256, offline mode).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.cli import run_hubswap
from tests.support.hub_server import WRITE, HubServer, seed
from tests.support.recipes import hub_models, recipe_toml


def recipe_text(task_rev: str = "main", *, publish: str = "org/merged", name: str = "tiny-hub-merge",
                bottom: int = 2, task_repo: str = "org/task", org: str = "org") -> str:
    return recipe_toml(hub_models(org, task=task_repo, revision=task_rev), name=name, bottom=bottom,
                       publish={"repo": publish, "private": True})


@pytest.fixture(scope="module")
def hub(hub, tiny_llama):
    """The test Hub of tests/conftest.py with the usual users and a tiny family."""
    return seed(hub, tiny_llama)


@pytest.fixture
def hub_env(hub, monkeypatch):
    """HF_ENDPOINT-free: everything in-process passes endpoint=hub.url; faults reset per test."""
    hub.clear_faults()
    hub.requests.clear()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub


def write_recipe(folder: Path, text: str, name: str = "merge.toml") -> Path:
    p = folder / name
    p.write_text(text)
    return p


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- resolve and lock ------------------------------------------------------------------------


def test_lock_pins_commits_and_every_file_hash_without_downloading_weights(hub_env, tmp_path):
    from hubswap.hub.lock import recipe_lock_path, write_recipe_lock

    recipe = write_recipe(tmp_path, recipe_text())
    out, typed = write_recipe_lock(recipe, endpoint=hub_env.url)
    lock = typed.to_json()

    assert out == recipe_lock_path(recipe) == tmp_path / "merge.lock.json"
    on_disk = json.loads(out.read_text())
    assert on_disk == lock and lock["lock_version"] == 1
    assert lock["recipe"]["sha256"] == sha256(recipe.read_bytes())
    for role in ("base", "task", "language"):
        entry = lock["models"][role]
        commit = hub_env.head(f"org/{role}")
        assert entry["repo"] == f"org/{role}" and entry["commit"] == commit.sha and entry["path"] is None
        assert "config.json" in entry["files"] and "model.safetensors.index.json" in entry["files"]
        assert any(n.endswith(".safetensors") for n in entry["files"])
        for name, rec in entry["files"].items():
            data = hub_env.read(f"org/{role}", name)
            assert rec == {"sha256": sha256(data), "size": len(data)}, name
    # weights' hashes came from the Hub's LFS metadata: not one shard was fetched, only their
    # headers were read (ranged reads) and checked against the LFS sizes
    shard_gets = [rng for m, p, rng in hub_env.requests if m == "GET" and p.endswith(".safetensors")]
    assert shard_gets and all(rng and rng.startswith("bytes=") for rng in shard_gets)


def test_build_uses_the_locked_commit_after_the_branch_moves(hub_env, tmp_path):
    from hubswap.hub.lock import write_recipe_lock
    from hubswap.inputs import resolve
    from hubswap.recipe import load_recipe

    recipe = write_recipe(tmp_path, recipe_text())
    _, lock = write_recipe_lock(recipe, endpoint=hub_env.url)
    locked = lock.models["task"].commit
    hub_env.commit_files("org/task", {"notes.txt": b"a later commit"}, message="move main")
    try:
        hub_env.requests.clear()
        models = resolve(load_recipe(recipe), endpoint=hub_env.url)
        assert models["task"].commit == locked != hub_env.head("org/task").sha
        assert hub_env.requests == []  # the lock answers without asking the Hub
    finally:
        hub_env.commit_files("org/task", {}, delete=("notes.txt",), message="undo")


def test_lock_that_no_longer_matches_the_recipe_is_refused(hub_env, tmp_path):
    from hubswap.errors import LockMismatchError
    from hubswap.hub.lock import read_recipe_lock, write_recipe_lock
    from hubswap.recipe import load_recipe

    recipe = write_recipe(tmp_path, recipe_text())
    write_recipe_lock(recipe, endpoint=hub_env.url)
    recipe.write_text(recipe_text(task_rev="v2"))
    with pytest.raises(LockMismatchError) as e:
        read_recipe_lock(load_recipe(recipe))
    assert "models.task is org/task@v2, the lock has org/task@main" in str(e.value)
    assert e.value.hint == f"refresh it with `hubswap lock {recipe}`"


def test_local_models_are_locked_by_path_and_hash(hub_env, tmp_path, tiny_llama):
    from hubswap.errors import LockMismatchError
    from hubswap.hub.lock import read_recipe_lock, write_recipe_lock
    from hubswap.recipe import load_recipe

    text = recipe_text().replace('repo = "org/language"', f'path = "{tiny_llama["language"]}"')
    recipe = write_recipe(tmp_path, text)
    _, typed = write_recipe_lock(recipe, endpoint=hub_env.url)
    lock = typed.to_json()
    entry = lock["models"]["language"]
    assert entry["repo"] is None and entry["commit"] is None and entry["path"] == str(tiny_llama["language"])
    cfg = (tiny_llama["language"] / "config.json").read_bytes()
    assert entry["files"]["config.json"] == {"sha256": sha256(cfg), "size": len(cfg)}
    assert read_recipe_lock(load_recipe(recipe)) == typed

    lock["models"]["language"]["files"]["config.json"]["sha256"] = "0" * 64  # as if the folder changed
    (tmp_path / "merge.lock.json").write_text(json.dumps(lock))
    with pytest.raises(LockMismatchError, match="changed since it was locked: config.json"):
        read_recipe_lock(load_recipe(recipe))


# -- preflight before weights ------------------------------------------------------------------


def test_preflight_reads_safetensors_headers_by_ranged_requests(hub_env, tmp_path, tiny_llama, monkeypatch):
    from hubswap.inputs import resolve
    from hubswap.preflight import check_compatible
    from hubswap.recipe import load_recipe

    monkeypatch.setenv("HUBSWAP_CACHE", str(tmp_path / "hubswap-cache"))  # no headers kept from before
    for role, path in tiny_llama.items():  # fresh commits: nothing of them is in the Hub cache
        hub_env.upload_folder(f"pre/{role}", path)
    text = recipe_text(org="pre", task_repo="pre/task")
    models = resolve(load_recipe(write_recipe(tmp_path, text)), endpoint=hub_env.url)
    pre = check_compatible(models)
    assert pre.num_layers == 8 and len(pre.tensors["task"]) > 0
    shard_gets = [(p, r) for m, p, r in hub_env.requests if m == "GET" and p.endswith(".safetensors")]
    assert shard_gets and all(r and r.startswith("bytes=") for _, r in shard_gets)
    assert {r for _, r in shard_gets} >= {"bytes=0-7"}
    shards = sum(1 for m in models.values() for f in m.files() if f.endswith(".safetensors"))
    assert len(shard_gets) == 2 * shards  # 8 bytes, then the header: nothing more of any weight file


# -- downloads ---------------------------------------------------------------------------------


def _big_repo(hub: HubServer, repo: str, mb: int = 24) -> dict[str, bytes]:
    """A model whose single shard is larger than huggingface_hub's 10 MB download chunk."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    weights = save({"w": rng.standard_normal(mb * (1 << 18), dtype=np.float32)})
    files = {"config.json": b'{"model_type": "llama", "num_hidden_layers": 1}', "model.safetensors": weights}
    hub.commit_files(repo, files, message="big")
    return files


def _resolve(hub: HubServer, repo: str):
    from hubswap.hub.resolve import resolve_model
    from hubswap.recipe import ModelSource

    return resolve_model("task", ModelSource(repo=repo), endpoint=hub.url)


def test_download_resumes_after_the_connection_drops_mid_file(hub_env):
    from hubswap.hub.download import download_model

    files = _big_repo(hub_env, "org/big")
    model = _resolve(hub_env, "org/big")
    hub_env.fault("GET", "/org/big/resolve/*/model.safetensors", "drop")
    folder = download_model(model)
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    ranges = [r for m, p, r in hub_env.requests if m == "GET" and p.endswith("model.safetensors")]
    assert ranges[0] is None and ranges[1] == "bytes=10485760-"  # resumed after the first 10 MB chunk


def test_http_500_then_success(hub_env, tmp_path, tiny_llama):
    from hubswap.hub.download import download_model
    from hubswap.hub.lock import write_recipe_lock

    hub_env.upload_folder("org/flaky", tiny_llama["task"])  # its own repo: no blob of it is cached yet
    hub_env.fault("GET", "/api/models/org/flaky/revision/main")
    hub_env.fault("GET", "/org/flaky/resolve/*/model-00001-of-*.safetensors")
    _, lock = write_recipe_lock(write_recipe(tmp_path, recipe_text(task_repo="org/flaky")), endpoint=hub_env.url)
    model = _resolve(hub_env, "org/flaky")
    folder = download_model(model)
    for name, rec in lock.models["task"].files.items():
        assert sha256((folder / name).read_bytes()) == rec.sha256
    assert hub_env.count("GET", "/api/models/org/flaky/revision/main") >= 2
    assert all(f.times == 0 for f in hub_env.faults)


def test_bytes_that_do_not_match_the_sha256_are_refused_and_evicted(hub_env):
    from huggingface_hub import try_to_load_from_cache

    from hubswap.errors import HubError
    from hubswap.hub.download import download_model

    _big_repo(hub_env, "org/bad", mb=1)
    model = _resolve(hub_env, "org/bad")
    hub_env.fault("GET", "/org/bad/resolve/*/model.safetensors", "corrupt", times=None)
    with pytest.raises(HubError) as e:
        download_model(model)
    msg = str(e.value)
    assert msg.startswith("task model org/bad@main") and "the downloaded model.safetensors has sha256" in msg
    assert "corrupt copy was removed" in e.value.hint
    assert not isinstance(try_to_load_from_cache("org/bad", "model.safetensors", revision=model.commit), str)
    assert hub_env.count("GET", "*/model.safetensors") == 2  # fetched again once before giving up

    hub_env.clear_faults()
    hub_env.fault("GET", "/org/bad/resolve/*/model.safetensors", "corrupt", times=1)
    folder = download_model(model)  # a one-off corruption heals on the second fetch
    assert sha256((folder / "model.safetensors").read_bytes()) == model.records["model.safetensors"].sha256


def test_pickled_only_weights_are_refused(hub_env):
    from hubswap.errors import UnsafeWeightsError

    hub_env.commit_files("org/pickled", {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04fake"})
    with pytest.raises(UnsafeWeightsError, match=r"has only pickled weights \(pytorch_model.bin\)"):
        _resolve(hub_env, "org/pickled")


# -- errors a user meets -----------------------------------------------------------------------


def test_gated_repo(hub_env, tmp_path, monkeypatch, tiny_llama):
    from hubswap.errors import HubError
    from hubswap.hub.lock import write_recipe_lock

    hub_env.upload_folder("gated/task", tiny_llama["task"], gated=True)
    recipe = write_recipe(tmp_path, recipe_text(task_repo="gated/task"))
    with pytest.raises(HubError) as e:
        write_recipe_lock(recipe, endpoint=hub_env.url)
    assert str(e.value) == "gated/task is a gated repo and no Hugging Face token is set"
    assert "accept its licence" in e.value.hint and "HF_TOKEN" in e.value.hint

    monkeypatch.setenv("HF_TOKEN", WRITE)
    with pytest.raises(HubError) as e:
        write_recipe_lock(recipe, endpoint=hub_env.url)
    assert str(e.value) == "gated/task is a gated repo and your token has not been granted access to it"
    assert WRITE not in str(e.value) + e.value.hint

    hub_env.repos["gated/task"].granted.add("alice")
    _, lock = write_recipe_lock(recipe, endpoint=hub_env.url)
    assert lock.models["task"].commit == hub_env.head("gated/task").sha


def test_missing_revision_and_missing_repo(hub_env, tmp_path):
    from hubswap.errors import HubError
    from hubswap.hub.lock import write_recipe_lock

    with pytest.raises(HubError) as e:
        write_recipe_lock(write_recipe(tmp_path, recipe_text(task_rev="no-such-branch")), endpoint=hub_env.url)
    assert str(e.value) == "revision 'no-such-branch' not found in org/task"
    with pytest.raises(HubError) as e:
        write_recipe_lock(write_recipe(tmp_path, recipe_text(task_repo="org/nope")), endpoint=hub_env.url)
    assert str(e.value).startswith("repo org/nope not found on ")


def test_a_refused_connection_fails_at_once_without_retries(tmp_path):
    import socket
    import time

    from hubswap.errors import HubError
    from hubswap.hub.lock import write_recipe_lock

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(HubError) as e:
        write_recipe_lock(write_recipe(tmp_path, recipe_text()), endpoint=f"http://127.0.0.1:{port}")
    assert str(e.value) == f"cannot reach http://127.0.0.1:{port}: connection refused (127.0.0.1 port {port})"
    assert time.monotonic() - start < 1


def test_cli_lock_and_offline_mode(hub_env, tmp_path):
    recipe = write_recipe(tmp_path, recipe_text())
    ok = run_hubswap("lock", recipe, hub=hub_env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "merge.lock.json" in ok.stdout and hub_env.head("org/task").sha[:12] in ok.stdout

    off = run_hubswap("lock", recipe, hub=hub_env, env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert off.returncode == 4
    assert off.stderr.splitlines()[0].startswith("error: offline mode is on (HF_HUB_OFFLINE=1)")
    assert off.stderr.splitlines()[1].startswith("hint: unset HF_HUB_OFFLINE")


def test_a_locked_commit_removed_by_a_force_push(hub_env, tmp_path, tiny_llama):
    from hubswap.errors import HubError
    from hubswap.hub.download import download_model
    from hubswap.hub.lock import write_recipe_lock
    from hubswap.inputs import resolve
    from hubswap.recipe import load_recipe

    hub_env.upload_folder("org/forced", tiny_llama["task"])
    recipe = write_recipe(tmp_path, recipe_text(task_repo="org/forced"))
    _, lock = write_recipe_lock(recipe, endpoint=hub_env.url)
    gone = lock.models["task"].commit
    repo = hub_env.repos["org/forced"]
    repo.refs["main"] = repo.commits[gone].parent  # history rewritten: the locked commit is gone
    del repo.commits[gone]
    model = resolve(load_recipe(recipe), endpoint=hub_env.url)["task"]
    with pytest.raises(HubError) as e:
        download_model(model)
    assert str(e.value) == f"commit {gone} no longer exists in org/forced"
    assert "`hubswap lock RECIPE`" in e.value.hint


def test_header_reads_survive_a_server_that_ignores_range(hub_env, tmp_path, monkeypatch):
    from hubswap.safetensors_format import parse_header

    monkeypatch.setenv("HUBSWAP_CACHE", str(tmp_path / "hubswap-cache"))
    files = _big_repo(hub_env, "org/norange", mb=12)
    model = _resolve(hub_env, "org/norange")
    hub_env.fault("GET", "/org/norange/resolve/*/model.safetensors", "norange", times=None)
    header = model.safetensors_header("model.safetensors")
    assert header == parse_header(files["model.safetensors"], where="local")
    assert hub_env.count("GET", "/org/norange/resolve/*/model.safetensors") == 2


def test_a_run_stopped_halfway_resumes_where_it_stopped(hub_env, tiny_llama):
    from hubswap.errors import HubError
    from hubswap.hub.download import download_model

    hub_env.upload_folder("org/resume", tiny_llama["task"])
    model = _resolve(hub_env, "org/resume")
    hub_env.fault("GET", "/org/resume/resolve/*/model-00005-of-00008.safetensors", status=403, times=None)
    with pytest.raises(HubError):
        download_model(model)
    hub_env.clear_faults()
    hub_env.requests.clear()
    folder = download_model(model)
    fetched = sorted(p.rsplit("/", 1)[1] for m, p, _ in hub_env.requests if m == "GET" and p.endswith(".safetensors"))
    assert fetched == [f"model-0000{i}-of-00008.safetensors" for i in range(5, 9)]
    assert all((folder / n).is_file() for n in model.files())


def test_cli_plan_reads_the_layer_count_of_a_hub_model(hub_env, tmp_path):
    recipe = write_recipe(tmp_path, recipe_text())
    r = run_hubswap("plan", recipe, hub=hub_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "tiny-hub-merge: 8 layers" in r.stdout and "LL~TTT~L" in r.stdout
    assert hub_env.count("GET", "*.safetensors") == 0


def test_a_shard_whose_header_differs_from_the_one_preflight_read_is_refused(hub_env, tmp_path, monkeypatch):
    from hubswap.errors import HubError
    from hubswap.hub.download import download_model

    monkeypatch.setenv("HUBSWAP_CACHE", str(tmp_path / "hubswap-cache"))
    _big_repo(hub_env, "org/twofaced", mb=1)
    model = _resolve(hub_env, "org/twofaced")
    header = model.safetensors_header("model.safetensors")
    header["w"] = {**header["w"], "data_offsets": [0, 4]}  # what a server answering ranges wrongly would give
    model.headers_seen["model.safetensors"] = header
    with pytest.raises(HubError, match="the header of model.safetensors read before the download differs"):
        download_model(model)
