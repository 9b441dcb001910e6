"""A local expert edited after `hubswap lock` is refused by `hubswap build`, through the CLI, and the
hash cache that spares rehashing notices every kind of edit: one that keeps the size, and one that
also puts the old modification time back."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubswap.hashing import file_sha256
from tests.support.cli import hubswap_env, run_hubswap
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


# One `file_sha256` in a fresh process, as each hubswap command is: its digest, and how many times
# the file itself was opened (Python's audit events, which every open() raises: seen, not patched).
HASH_ONCE = """
import os, sys
path, opened = sys.argv[1], []
sys.addaudithook(lambda event, args: opened.append(1) if event == "open" and isinstance(args[0], (str, os.PathLike))
                 and os.fspath(args[0]) == path else None)
from hubswap.hashing import file_sha256
print(file_sha256(path), len(opened))
"""


def _hash_in_a_new_process(path: Path, cache: Path) -> tuple[str, int]:
    r = subprocess.run([sys.executable, "-c", HASH_ONCE, str(path)], env=hubswap_env({"HUBSWAP_CACHE": cache}),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    digest, opened = r.stdout.split()
    return digest, int(opened)


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "old-mtime-put-back"])
def test_hash_cache_answers_for_an_unchanged_file_and_rehashes_an_edited_one(tmp_path, keep_mtime):
    cache = tmp_path / "cache"
    f = tmp_path / "blob.bin"
    f.write_bytes(bytes(range(256)) * 64)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert _hash_in_a_new_process(f, cache) == (want, 1)  # read once
    assert _hash_in_a_new_process(f, cache) == (want, 0)  # from the cache: not even opened
    _flip_last_byte(f, keep_mtime=keep_mtime)
    edited = hashlib.sha256(f.read_bytes()).hexdigest()
    assert edited != want
    assert _hash_in_a_new_process(f, cache) == (edited, 1)  # the edit is seen, and read again
    assert _hash_in_a_new_process(f, cache) == (edited, 0)
    assert file_sha256(f, fresh=True) == edited
