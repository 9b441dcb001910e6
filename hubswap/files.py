"""Small file helpers every stage uses: atomic and durable writes, JSON documents, sizes, cores.

A reader (another process, a crashed build run again) never sees half a file: each write goes to
a hidden temporary sibling that is renamed over the destination once complete. A rename is atomic
but not durable: after a power loss the new name can point at data that never reached the disk,
so the temporary file is fsynced before the rename and its folder after (:func:`fsync_path`).
A full disk, or a folder that cannot be written (a read-only filesystem, permissions), is one
line naming the folder, and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path
from typing import Any

from hubswap.errors import DiskSpaceError, NotWritableError

# "No space left on device", "disk quota exceeded", "file too large" (RLIMIT_FSIZE, FAT's 4 GB).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# "Read-only file system", "permission denied", "operation not permitted".
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def not_writable(e: OSError, folder: str | Path | None = None, *, hint: str | None = None) -> NotWritableError:
    """The one line for a write refused by the filesystem (read-only mount, permissions): it names
    the folder (``folder``, or the folder of the file that failed)."""
    where = folder if folder is not None else (os.path.dirname(os.path.abspath(e.filename)) if e.filename else "?")
    ro = e.errno == errno.EROFS
    return NotWritableError(
        f"cannot write to {where}: {'its filesystem is read-only' if ro else os.strerror(e.errno).lower()}",
        hint=hint or ("write elsewhere" if ro else "write elsewhere, or give this user write permission on that folder"))


def disk_full(code: int, folder: str | Path, what: str, *, file: str | Path) -> DiskSpaceError:
    """The one line for a disk (or quota) that filled up (``code``: one of :data:`DISK_FULL`) while
    writing ``file``, said as writing ``what`` into ``folder``."""
    return DiskSpaceError(f"{os.strerror(code).lower()} in {folder} while writing {what}",
                          hint="nothing was left half-written; free some space, or write elsewhere",
                          file=os.path.abspath(file), errno=code)


def check_writable(folder: str | Path, *, hint: str = "write elsewhere: pass --output DIR") -> None:
    """Refuse at once, naming it, a folder that cannot be written (or created): its filesystem is
    mounted read-only, or this user lacks permission. Nothing is created."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if os.statvfs(p).f_flag & os.ST_RDONLY:
        raise not_writable(OSError(errno.EROFS, os.strerror(errno.EROFS)), folder, hint=hint)
    if not os.access(p, os.W_OK | os.X_OK):
        raise not_writable(OSError(errno.EACCES, os.strerror(errno.EACCES)), folder, hint=hint)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8 with ``\\n`` line ends, or bytes) to ``path`` atomically and
    durably; a full disk raises ``DiskSpaceError`` naming the folder, leaving ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as e:
        if e.errno in NOT_WRITABLE:
            raise not_writable(e, path.parent) from None
        if e.errno not in DISK_FULL:
            raise
        raise disk_full(e.errno, path.parent, path.name, file=path) from None
    finally:
        with contextlib.suppress(OSError):  # absent, or on a read-only filesystem (already said)
            tmp.unlink()
    return path


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file under ``folder``, then every folder from the deepest up to ``folder``."""
    for dirpath, _dirs, files in os.walk(folder, topdown=False):
        for f in files:
            fsync_path(os.path.join(dirpath, f))
        fsync_path(dirpath)


def write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """``data`` as JSON (non-ASCII kept as is), written atomically; a newline ends pretty files."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    return atomic_write(path, text + "\n" if indent is not None else text)


def human_size(n: float) -> str:
    """A byte count for people, in decimal units: ``512 B``, ``1.5 MB``, ``16.1 GB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def parse_size(size: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units, like transformers' ``max_shard_size``)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {size!r} (e.g. 5GB, 500MB)")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * mult)


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
