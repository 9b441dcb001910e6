"""sha256 of files, with a cache keyed by (device, inode, size, mtime, ctime) like git's index.

Hashing multi-GB inputs costs seconds per build; a file that has not changed since it was last
hashed is not read again. The digest itself comes from huggingface_hub's ``sha_fileobj``, the
same function its uploads use.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

_lock = threading.Lock()


def cache_root() -> Path:
    """hubswap's cache folder: $HUBSWAP_CACHE, else $HF_HOME/hubswap."""
    env = os.environ.get("HUBSWAP_CACHE")
    if env:
        return Path(env)
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hubswap"


def _cache_file() -> Path:
    return cache_root() / "sha256-cache.json"


def _key(path: Path) -> str:
    st = path.stat()
    # No path in the key: a build's files keep their hashes when its staging folder is renamed.
    # ctime too: an edit that puts the old mtime back (os.utime, `touch -d`, rsync -t) still moves
    # ctime, which no user call can set.
    return f"{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def cached_sha256(path: str | Path) -> str | None:
    """The remembered sha256 of ``path`` if it has not changed since it was hashed, else None."""
    key = _key(Path(path))
    with _lock:
        return _load().get(key)


def file_sha256(path: str | Path) -> str:
    from huggingface_hub.utils.sha import sha_fileobj

    path = Path(path)
    key = _key(path)
    with _lock:
        cache = _load()
        if key in cache:
            return cache[key]
    with open(path, "rb") as f:
        digest = sha_fileobj(f).hex()
    with _lock:
        cache = _load()
        cache[key] = digest
        _save(cache)
    return digest


def _load() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _save(cache: dict[str, str]) -> None:
    f = _cache_file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, f)
    except OSError:  # a read-only cache only costs speed
        pass
