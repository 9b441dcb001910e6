"""Small helpers shared by tests: model folders reduced to their headers."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path


def headers_only(src: Path, dst: Path) -> Path:
    """A copy of a model folder whose safetensors files keep their header and size, but whose
    weights are a hole of zeros (sparse: nothing of them is on disk).

    The files are well formed (preflight refuses a truncated one), and a check that read a weight
    would see only zeros, so one that passes or fails on them as on the real model read none.
    """
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        size = f.stat().st_size
        with open(f, "r+b") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            fh.truncate(8 + n)
            fh.truncate(size)
    return dst
