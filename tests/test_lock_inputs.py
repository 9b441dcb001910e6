"""A local expert edited after `hubswap lock` is refused by `hubswap build`, through the CLI, and the
hash cache that spares rehashing notices every kind of edit: one that keeps the size, and one that
also puts the old modification time back."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hubswap.hashing import file_sha256
from tests.support.cli import run_hubswap
from tests.support.recipes import write_recipe

OFFLINE = {"HF_HUB_OFFLINE": "1"}  # nothing here may ask a Hub


def _flip_last_byte(path: Path, *, keep_mtime: bool) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's data: same size, same header
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


@pytest.fixture
def locked(tmp_path, tiny_llama):
    family = {role: shutil.copytree(tiny_llama[role], tmp_path / role) for role in ("task", "language")}
    write_recipe(tmp_path / "merge.toml", family)
    r = run_hubswap("lock", "merge.toml", cwd=tmp_path, env=OFFLINE)
    assert r.returncode == 0, r.stderr
    return tmp_path, family


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "old-mtime-put-back"])
def test_a_local_expert_edited_after_lock_is_refused(locked, keep_mtime):
    work, family = locked
    shard = sorted(family["language"].glob("model-*.safetensors"))[-1]
    _flip_last_byte(shard, keep_mtime=keep_mtime)
    r = run_hubswap("build", "merge.toml", "--no-eval", "-o", "out", cwd=work, env=OFFLINE)
    assert r.returncode == 2, r.stderr
    assert "changed since it was locked" in r.stderr and shard.name in r.stderr
    assert not (work / "out" / "model").exists()


def test_the_unedited_lock_builds(locked):
    work, _ = locked
    r = run_hubswap("build", "merge.toml", "--no-eval", "-o", "out", cwd=work, env=OFFLINE)
    assert r.returncode == 0, r.stderr
    assert (work / "out" / "model" / "config.json").exists()


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "old-mtime-put-back"])
def test_hash_cache_rehashes_a_file_edited_in_place(tmp_path, monkeypatch, keep_mtime):
    monkeypatch.setenv("HUBSWAP_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "blob.bin"
    f.write_bytes(bytes(range(256)) * 64)
    before = file_sha256(f)
    assert file_sha256(f) == before  # from the cache
    _flip_last_byte(f, keep_mtime=keep_mtime)
    after = file_sha256(f)
    import hashlib

    assert after == hashlib.sha256(f.read_bytes()).hexdigest() != before
