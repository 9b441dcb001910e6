"""Small file helpers every stage uses: atomic writes, JSON documents, sizes for messages.

A reader (another process, a crashed build run again) never sees half a file: each write goes to
a hidden temporary sibling that is renamed over the destination once complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8 with ``\\n`` line ends, or bytes) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
