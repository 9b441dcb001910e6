"""sha256 of files, with a cache keyed by (device, inode, size, mtime, ctime) like git's index.

Hashing multi-GB inputs costs seconds per build; a file that has not changed since it was last
hashed is not read again. The digest itself comes from huggingface_hub's ``sha_fileobj``, the
same function its uploads use.
"""

from __future__ import annotations

import hashlib
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


def file_sha256(path: str | Path, *, fresh: bool = False) -> str:
    """sha256 (hex) of a file, from the cache when its (device, inode, size, mtime, ctime) are known.

    ``fresh`` reads the bytes whatever the cache says: a file just rewritten in place may reuse
    its inode within the mtime's resolution (a corrupt download fetched again, say).
    """
    from huggingface_hub.utils.sha import sha_fileobj

    path = Path(path)
    if fresh:
        with open(path, "rb") as f:
            return sha_fileobj(f).hex()
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
    from hubswap.files import write_json

    try:
        write_json(_cache_file(), cache, indent=None)
    except OSError:  # a read-only cache only costs speed
        pass


def text_sha256(text: str) -> str:
    """sha256 (hex) of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_sha256(obj) -> str:
    """sha256 of a JSON value in a canonical form (sorted keys, no spaces): equal values, equal digests."""
    return text_sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")))


def git_blob_sha1(path: str | Path) -> str:
    """The git object id of a file (what the Hub reports for files not stored in LFS)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
