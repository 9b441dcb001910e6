"""Rewrite the golden files in tests/golden from the current code, after a deliberate change:

    python -m tests.support.update_goldens    # then review `git diff tests/golden`

The golden tests only compare (tests/test_card.py: test_card_matches_golden_file); this command
is the one place that writes the files, so no comparison can pass by rewriting what it compares.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from tests.support.fixed_build import GOLDEN, golden_files

    parser = argparse.ArgumentParser(prog="python -m tests.support.update_goldens", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=GOLDEN, help=f"where to write them (default {GOLDEN})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hubswap-goldens-") as tmp:
        files = golden_files(Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = args.out / name
        old = path.read_text() if path.exists() else None
        path.write_text(text)
        print(f"{'unchanged' if old == text else 'wrote'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
