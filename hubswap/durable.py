"""Writing that survives a power loss, a full disk and a second build into the same folder.

- **Durable**: a rename is atomic but not durable. After a power loss, a name renamed into place
  can point at a file whose data never reached the disk. So everything a build publishes is
  fsynced, files and folders, before the rename that publishes it, and the folder holding the
  new name after it (``files.fsync_tree`` and ``files.fsync_path``; ``files.atomic_write`` does
  the same for single files). The merge's shards are sent to the disk while they are written
  (:class:`WriteBack`), so that fsync finds them clean.
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
import threading
from collections.abc import Iterator
from pathlib import Path

from hubswap.errors import BuildBusyError, DiskSpaceError
from hubswap.files import DISK_FULL, NOT_WRITABLE, check_writable, disk_full, human_size, not_writable

LOCK_FILE = ".hubswap.lock"


def nearest_folder(folder: str | Path) -> Path:
    """``folder``, or the nearest of its parents that exists: on the filesystem that will hold it."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_space(folder: str | Path) -> int:
    """Free bytes (for an unprivileged user) on the filesystem that holds, or will hold, ``folder``."""
    return shutil.disk_usage(nearest_folder(folder)).free


def check_free_space(folder: str | Path, need: int, what: str) -> None:
    """Refuse to write ``what`` (``need`` bytes) into ``folder`` when it cannot be written at all
    (a read-only filesystem is not a full one: ``files.check_writable``) or its filesystem has
    less free."""
    check_writable(folder, hint="write elsewhere (build: --output; Hub downloads: HF_HUB_CACHE)")
    free = free_space(folder)
    if need > free:
        raise DiskSpaceError(
            f"{what} needs {human_size(need)} in {folder}, but its filesystem has {human_size(free)} free",
            hint="free some space, or write elsewhere (build: --output; Hub downloads: HF_HUB_CACHE)")


@contextlib.contextmanager
def disk_full_is_an_error(folder: str | Path, what: str) -> Iterator[None]:
    """Turn a full disk (or quota, or file-size limit), or a write the filesystem refuses (read-only,
    permissions), while writing ``what`` into ``folder`` into one line naming the folder. Cleanup
    inside the block (staging folders, temporary files) has run by the time the error leaves it."""
    where = Path(os.path.abspath(folder))
    try:
        yield
    except DiskSpaceError as e:  # a file helper's own line (files.atomic_write): said of the folder
        if e.file is None or e.errno is None or where not in Path(e.file).parents:
            raise
        raise disk_full(e.errno, folder, what, file=e.file) from None
    except OSError as e:
        if e.errno in NOT_WRITABLE:
            raise not_writable(e, folder if not e.filename else None) from None
        if e.errno not in DISK_FULL:
            raise
        file = Path(os.path.abspath(e.filename)) if e.filename else where
        inside = file == where or where in file.parents  # else a cache or temporary folder elsewhere
        raise disk_full(e.errno, folder if inside else file.parent, what, file=file) from None


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


# Bytes a file may hold in the page cache, written but not yet on the disk, before the write-back
# thread sends them (the merge also makes its raw copies this size, so it reports that often).
SYNC_BYTES = 64 << 20


class WriteBack:
    """Files sent to the disk while they are written: a thread of its own fdatasyncs a file (an
    fd of ``fds``, by index) every ``SYNC_BYTES`` reported written into it and once more when it
    is complete, so a build does not wait for the whole model's write-back after the merge (its
    fsync before the rename then finds the shards clean). The thread waits on the disk, not on a core. A failed
    sync (a full disk, EIO) is raised by ``join``.

    Written by hand: ``sync_file_range``, which starts write-back without waiting, is not in
    Python's ``os``; repeated ``fdatasync`` from a thread gives the same overlap portably."""

    def __init__(self, fds: list[int]):
        self._fds = fds
        self._cond = threading.Condition()
        self._pending: dict[int, int] = {}  # shard -> bytes written since its last sync
        self._finished = False
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="hubswap-fdatasync", daemon=True)
        self._thread.start()

    def written(self, k: int, nbytes: int, *, complete: bool = False) -> None:
        with self._cond:
            self._pending[k] = self._pending.get(k, 0) + nbytes
            if complete:
                self._pending[k] = max(self._pending[k], SYNC_BYTES)  # send its tail now
            if self._pending[k] >= SYNC_BYTES:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._finished or any(n >= SYNC_BYTES for n in self._pending.values()))
                due = [k for k, n in self._pending.items() if n >= SYNC_BYTES or (self._finished and n)]
                for k in due:
                    del self._pending[k]
                if not due and self._finished:
                    return
            for k in due:
                if self.error is None:
                    try:
                        os.fdatasync(self._fds[k])
                    except OSError as e:
                        self.error = e

    def join(self) -> None:
        """Sync what is left, wait for the thread; raise the first failure."""
        with self._cond:
            self._finished = True
            self._cond.notify()
        self._thread.join()
        if self.error is not None:
            raise self.error
