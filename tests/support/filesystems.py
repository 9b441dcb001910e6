"""Real filesystems for tests: XFS (reflink on), btrfs and ext4 images loop-mounted, tmpfs.

Mounting needs root and a loop device (CI runs as root, .ci/run installs xfsprogs and
btrfs-progs). Where either is missing the test skips and says why, unless
``HUBSWAP_REQUIRE_MOUNTS=1`` (set by .ci/run where it can mount): then it fails, so a CI that
should have run these tests cannot pass with them skipped. Every mount is undone on the way out,
failures included.

A read-only filesystem (``read_only_mount``) is a tmpfs remounted ``ro``: ``chmod`` cannot make a
folder unwritable for root, a read-only mount can.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

REQUIRE = "HUBSWAP_REQUIRE_MOUNTS"
MKFS = {"xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"], "btrfs": ["mkfs.btrfs", "-q"], "ext4": ["mkfs.ext4", "-q", "-F"]}
# What each image needs at least (mkfs.xfs refuses below 300 MB; btrfs below ~110 MB).
MIN_SIZE = {"xfs": 300 << 20, "btrfs": 128 << 20, "ext4": 16 << 20}


def cannot_mount(reason: str) -> None:
    """Skip (or, where CI requires mounts, fail) a test that needs a mount it cannot have."""
    message = f"{reason}: this test mounts real filesystems (root, a loop device; apt-get install xfsprogs btrfs-progs)"
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{message}; {REQUIRE}=1 requires it")
    pytest.skip(message)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@contextlib.contextmanager
def mounted(kind: str, where: Path, size: int = 0) -> Iterator[Path]:
    """A fresh ``kind`` filesystem ("xfs", "btrfs", "ext4": a ``truncate``d image, loop-mounted;
    "tmpfs") of ``size`` bytes mounted at ``where/kind``; unmounted and removed afterwards."""
    if os.geteuid() != 0:
        cannot_mount("not root")
    mnt = where / kind
    mnt.mkdir(parents=True, exist_ok=True)
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size or 64 << 20}", "tmpfs", str(mnt)]
        image = None
    else:
        if shutil.which(MKFS[kind][0]) is None:
            cannot_mount(f"{MKFS[kind][0]} is not installed")
        image = where / f"{kind}.img"
        with open(image, "wb") as f:
            f.truncate(max(size, MIN_SIZE[kind]))
        r = _run([*MKFS[kind], str(image)])
        if r.returncode:
            cannot_mount(f"{MKFS[kind][0]} failed ({r.stderr.strip()[:200]})")
        cmd = ["mount", "-o", "loop", str(image), str(mnt)]
    r = _run(cmd)
    if r.returncode:
        if image is not None:
            image.unlink()
        cannot_mount(f"cannot mount {kind} ({r.stderr.strip()[:200] or r.returncode})")
    try:
        yield mnt
    finally:
        _run(["umount", str(mnt)]).returncode and _run(["umount", "-l", str(mnt)])
        if image is not None:
            image.unlink(missing_ok=True)


def used_bytes(folder: Path) -> int:
    """Bytes in use on the filesystem holding ``folder`` (``df``'s Used, from statvfs)."""
    st = os.statvfs(folder)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def settled_used_bytes(folder: Path) -> int:
    """:func:`used_bytes` once the filesystems have written out what they hold (delayed allocation
    counts blocks only then)."""
    os.sync()
    return used_bytes(folder)


def onto(folder: Path, family: dict[str, Path]) -> dict[str, Path]:
    """A copy of each model folder of ``family`` in ``folder`` (a test's experts on a mount)."""
    return {role: Path(shutil.copytree(path, folder / role)) for role, path in family.items()}


@contextlib.contextmanager
def read_only_mount(folder: Path, size: str = "16m", *, files: Mapping[str, str] | None = None,
                    trees: Mapping[str, Path] | None = None) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``folder`` holding ``files`` (name -> text) and copies of ``trees``
    (name -> folder), then remounted read-only; unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode:
        cannot_mount(f"cannot mount a tmpfs ({r.stderr.strip() or r.returncode})")
    try:
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        for name, tree in (trees or {}).items():
            shutil.copytree(tree, folder / name)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
