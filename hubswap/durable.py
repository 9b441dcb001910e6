"""Writing that survives a power loss, a full disk and a second build into the same folder.

- **Durable**: a rename is atomic but not durable. After a power loss, a name renamed into place
  can point at a file whose data never reached the disk. So everything a build publishes is
  fsynced, files and folders, before the rename that publishes it, and the folder holding the
  new name after it (``files.fsync_tree`` and ``files.fsync_path``; ``files.atomic_write`` does
  the same for single files).
- **Disk space**: what is about to be written is compared with the free space of the
  filesystem it goes to (:func:`check_free_space`) before anything is written; a disk that fills
  up anyway (another process, a quota) ends in one line naming the folder
  (:func:`disk_full_is_an_error`), after the caller's cleanup removed what it had begun.
- **One build per folder**: :func:`build_lock` holds ``<build>/.hubswap.lock`` with
  ``fcntl.flock`` for the whole build. The kernel releases it when the process ends however it
  ends, so a killed build never leaves a stale lock behind.

Written by hand: the standard library has the calls (os.fsync, shutil.disk_usage, fcntl.flock)
but no helper that uses them this way, and no well-kept library does it for folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hubswap.errors import BuildBusyError, DiskSpaceError
from hubswap.files import DISK_FULL, human_size

LOCK_FILE = ".hubswap.lock"


def free_space(folder: str | Path) -> int:
    """Free bytes (for an unprivileged user) on the filesystem that holds, or will hold, ``folder``."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(folder: str | Path, need: int, what: str) -> None:
    """Refuse to write ``what`` (``need`` bytes) into ``folder`` when its filesystem has less free."""
    free = free_space(folder)
    if need > free:
        raise DiskSpaceError(
            f"{what} needs {human_size(need)} in {folder}, but its filesystem has {human_size(free)} free",
            hint="free some space, or write elsewhere (build: --output; Hub downloads: HF_HUB_CACHE)")


@contextlib.contextmanager
def disk_full_is_an_error(folder: str | Path, what: str) -> Iterator[None]:
    """Turn a full disk (or quota, or file-size limit) while writing ``what`` into ``folder`` into
    one line naming the folder. Cleanup inside the block (staging folders, temporary files) has
    run by the time the error leaves it."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        where = Path(folder)
        if e.filename and where not in Path(os.path.abspath(e.filename)).parents:
            where = Path(os.path.abspath(e.filename)).parent  # a cache or temporary folder elsewhere
        raise DiskSpaceError(f"{os.strerror(e.errno).lower()} in {where} while writing {what}",
                             hint="nothing was left half-written; free some space, or write elsewhere") from None


@contextlib.contextmanager
def build_lock(build_dir: Path) -> Iterator[None]:
    """Hold the build folder for this process, or refuse at once if another build holds it."""
    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BuildBusyError(
                f"another hubswap build (pid {holder}) is writing {build_dir}",
                hint="wait for it to finish, or build into another folder with --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a new holder)
