"""bfloat16 <-> float32: hubswap's numpy passes against ml_dtypes' casts, and what each costs to import.

    python bench/bf16.py [--python PY]

The merge converts 1 MiB slices (``hubswap.swap.SLICE_ELEMENTS`` values) on one core each; this
times the same on one core: values per second, best of 5 runs of 64 Mi values, plus each module's
import in a fresh interpreter (median of 5). ml_dtypes is not a dependency of hubswap: the
comparison needs it installed (``pip install ml_dtypes``), else its rows are left out. Prints a
Markdown table (docs/PERFORMANCE.md quotes it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np

from hubswap.safetensors_format import from_float32, to_float32
from hubswap.swap import SLICE_ELEMENTS

TOTAL = 64 << 20


def best(fn, runs: int = 5) -> float:
    """Values per second of ``fn`` over TOTAL values, best of ``runs``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(TOTAL // SLICE_ELEMENTS):
            fn()
        times.append(time.perf_counter() - start)
    return TOTAL / min(times)


def import_time(python: str, module: str) -> float:
    code = f"import time, numpy; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return statistics.median(float(subprocess.check_output([python, "-c", code], text=True)) for _ in range(5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="the interpreter whose import times are measured")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SLICE_ELEMENTS) * 3).astype(np.float32)
    raw = bytearray(SLICE_ELEMENTS * 2)
    bits, scratch, back = np.frombuffer(raw, np.uint16), np.empty(SLICE_ELEMENTS, np.uint32), np.empty_like(x)
    from_float32(x, "BF16", out=bits, scratch=scratch)
    rows = [("hubswap (numpy passes)", best(lambda: from_float32(x, "BF16", out=bits, scratch=scratch)),
             best(lambda: to_float32(raw, "BF16", out=back)), import_time(args.python, "hubswap.safetensors_format"))]
    try:
        import ml_dtypes
    except ImportError:
        print("ml_dtypes is not installed here: its rows are left out", file=sys.stderr)
    else:
        values = np.frombuffer(raw, ml_dtypes.bfloat16)
        with np.errstate(invalid="ignore"):
            rows.append((f"ml_dtypes {ml_dtypes.__version__}", best(lambda: np.copyto(values, x, casting="unsafe")),
                         best(lambda: np.copyto(back, values, casting="unsafe")), import_time(args.python, "ml_dtypes")))
    print(f"numpy {np.__version__}, one core, slices of {SLICE_ELEMENTS} values, best of 5 x {TOTAL >> 20} Mi values\n")
    print("| conversion | float32 -> bf16 (G values/s) | bf16 -> float32 (G values/s) | import (s) |")
    print("|---|---|---|---|")
    for name, enc, dec, imp in rows:
        print(f"| {name} | {enc / 1e9:.2f} | {dec / 1e9:.2f} | {imp:.3f} |")


if __name__ == "__main__":
    main()
