"""Real filesystems for tests of hostile folders: a read-only mount (a tmpfs remounted ``ro``).

Mounting needs root (CI runs as root; /work/shared/docs/ENVIRONMENT.md): elsewhere the test that
asks for one skips and says why. ``chmod`` cannot make a folder unwritable for root, a read-only
mount can.

    with read_only_mount(tmp_path / "ro", "1m", files={"r.toml": text}) as ro:
        run_hubswap("build", ro / "r.toml", "-o", ro / "b")
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only_mount(folder: Path, size: str = "16m", *, files: Mapping[str, str] | None = None,
                    trees: Mapping[str, Path] | None = None) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``folder`` holding ``files`` (name -> text) and copies of ``trees``
    (name -> folder), then remounted read-only; unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs ({r.stderr.strip() or r.returncode}): a read-only filesystem "
                    "needs root to mount (CI runs these tests as root)")
    try:
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        for name, tree in (trees or {}).items():
            shutil.copytree(tree, folder / name)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
