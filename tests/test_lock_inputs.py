"""A local expert edited after `hubswap lock` is refused by `hubswap build`, through the CLI, and the
hash cache that spares rehashing notices every kind of edit: one that keeps the size, and one that
also puts the old modification time back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubswap.hashing import file_sha256
from tests.support.recipes import write_recipe


def _hubswap(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubswap.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


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
    r = _hubswap("lock", "merge.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path, family


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "old-mtime-put-back"])
def test_a_local_expert_edited_after_lock_is_refused(locked, keep_mtime):
    work, family = locked
    shard = sorted(family["language"].glob("model-*.safetensors"))[-1]
    _flip_last_byte(shard, keep_mtime=keep_mtime)
    r = _hubswap("build", "merge.toml", "--no-eval", "-o", "out", cwd=work)
    assert r.returncode == 2, r.stderr
    assert "changed since it was locked" in r.stderr and shard.name in r.stderr
    assert not (work / "out" / "model").exists()


def test_the_unedited_lock_builds(locked):
    work, _ = locked
    r = _hubswap("build", "merge.toml", "--no-eval", "-o", "out", cwd=work)
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
