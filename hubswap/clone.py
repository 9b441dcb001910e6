"""Zero-copy merges: whole tensors cloned between files that share blocks (XFS with reflink, btrfs).

Most of a layer-swapped model is tensors taken whole, byte for byte, from one expert. On a
filesystem that shares blocks between files, those bytes are cloned (``FICLONERANGE``, the ioctl
``cp --reflink`` uses) rather than read and written: the new file points at the expert's blocks,
and only what is computed (blends, dtype casts) takes new disk.

A clone moves whole filesystem blocks: the range must start at a multiple of the block size in
both files. safetensors data is contiguous after the header, so the alignment is arranged in the
layout (``hubswap.swap.for_cloning``): the tensors taken whole from one source file go into output shards
of their own, in that file's order (so their relative offsets are the source's), and each such
shard's header is padded with spaces (the format allows it) so that its data starts at the same
offset modulo the block size as its first tensor does in the source. The partial blocks at each
end of a run are copied; so is everything when the source's offsets are not 8-byte aligned (the
output keeps its data 8-byte aligned), or when the filesystem refuses a clone.

Whether cloning works is found out by trying (:func:`clone_block`, and every clone falls back to
a copy when refused), never assumed from the filesystem's name. Written by hand: Python has no
wrapper for ``FICLONERANGE`` (``os.copy_file_range`` may share blocks on some kernels, but says
nothing about it and needs no alignment, so the merge cannot count on it nor arrange for it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hubswap.files import DISK_FULL

# linux/fs.h: _IOW(0x94, 13, struct file_clone_range), whose fields are
# { __s64 src_fd; __u64 src_offset; __u64 src_length; __u64 dest_offset; }.
FICLONERANGE = 0x4020940D
# Failures that mean "not here" (another filesystem, no reflink, a misaligned range): copy instead.
# A full disk and an I/O error are real errors, raised as from a copy.
_REAL_ERRORS = (*DISK_FULL, errno.EIO)


def clone_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, count: int) -> None:
    """Make ``count`` bytes of ``dst_fd`` at ``dst_off`` share the blocks of ``src_fd`` at ``src_off``.
    Both offsets (and ``count``, unless the range ends at the source's end) are multiples of the
    filesystem's block size; ``count`` 0 means to the end of the source."""
    fcntl.ioctl(dst_fd, FICLONERANGE, struct.pack("=qQQQ", src_fd, src_off, count, dst_off))


def try_clone(src_fd: int, src_off: int, dst_fd: int, dst_off: int, count: int) -> bool:
    """:func:`clone_range`, or False when the filesystem refuses it (the caller copies instead)."""
    try:
        clone_range(src_fd, src_off, dst_fd, dst_off, count)
    except OSError as e:
        if e.errno in _REAL_ERRORS:
            raise
        return False
    return True


def clone_block(sources: Iterable[Path], folder: Path) -> int | None:
    """The block size to align clones to, when a block of each of ``sources`` (one file per
    filesystem is enough) can be cloned into a new file in ``folder``; None when any cannot."""
    try:
        block = os.statvfs(folder).f_bsize
        seen: set[int] = set()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".hubswap-clone-probe-")
    except OSError:
        return None
    try:
        os.unlink(tmp)
        for path in sources:
            src = os.open(path, os.O_RDONLY)
            try:
                st = os.fstat(src)
                if st.st_dev in seen or st.st_size == 0:
                    continue
                seen.add(st.st_dev)
                if not try_clone(src, 0, fd, 0, block if st.st_size >= block else 0):
                    return None
            finally:
                os.close(src)
    except OSError:  # a full disk or an unreadable source: the merge's copy meets it and says so
        return None
    finally:
        os.close(fd)
    return block if seen else None


def header_residue(begin: int, block: int) -> int | None:
    """Where an output shard's data must start, modulo ``block``, so that a tensor at byte
    ``begin`` of its source and at the start of that data share a block alignment; None when that
    would leave the data not 8-byte aligned (a source header whose length is not a multiple of 8)."""
    r = begin % block
    return r if r % 8 == 0 else None


def clone_pieces(src_off: int, dst_off: int, count: int, block: int) -> list[tuple[int, int, bool]]:
    """A run of ``count`` bytes from ``src_off`` to ``dst_off`` as ``(offset in the run, bytes,
    cloned)`` pieces: the whole blocks cloned, the partial block at each end copied, when both
    offsets are alike modulo ``block``; else one piece, copied."""
    head = -src_off % block
    whole = (count - head) // block * block if count > head else 0
    if (src_off - dst_off) % block or not whole:
        return [(0, count, False)]
    tail = count - head - whole
    return [p for p in ((0, head, False), (head, whole, True), (head + whole, tail, False)) if p[1]]


def clone_groups(tensors: Iterable) -> list[tuple[list, bool]]:
    """The merge's tensors regrouped for cloning, each group with whether to align it: the tensors
    taken whole (in their own dtype) from one source file together, in that file's order; then the
    computed ones (blends, casts), in the order given, not aligned. The caller cuts each group
    into shards (:func:`hubswap.swap.plan_merge`'s size limit) and pads each shard's header to
    :func:`header_residue` of its first tensor."""
    by_source: dict[Path, list] = {}
    computed = []
    for t in tensors:
        if t.raw_copy:
            by_source.setdefault(t.sources[0].path, []).append(t)
        else:
            computed.append(t)
    groups = [(sorted(ts, key=lambda t: t.sources[0].info.begin), True) for ts in by_source.values()]
    return [*groups, (computed, False)] if computed else groups
