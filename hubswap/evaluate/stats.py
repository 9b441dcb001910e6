"""Intervals and tests for accuracies, and for two models paired on the same questions.

* accuracy: Wilson score interval (good coverage at small n and near 0 or 1, unlike the normal
  approximation);
* paired difference merged-minus-other: Newcombe's hybrid score interval for paired proportions
  (Newcombe 1998, "Improved confidence intervals for the difference between binomial proportions
  based on paired data", method 10), which uses the discordant counts and the correlation of the
  two models' verdicts, is deterministic and stays inside [-1, 1];
* McNemar's exact test: two-sided binomial test of the discordant pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def newcombe_paired_interval(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of p1 - p2 for paired verdicts.

    ``a`` both right, ``b`` only the first right, ``c`` only the second right, ``d`` both wrong.
    """
    n = a + b + c + d
    if n == 0:
        return (-1.0, 1.0)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denom) if denom > 0 else 0.0
    diff = p1 - p2
    lower = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (max(-1.0, lower), min(1.0, upper))


@dataclass(frozen=True)
class Paired:
    n: int
    diff: float
    ci95: tuple[float, float]
    mcnemar_p: float
    both: int
    merged_only: int
    other_only: int
    neither: int

    def to_json(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        return out


def paired_comparison(first: Sequence[bool], second: Sequence[bool]) -> Paired:
    """Compare two models' verdicts on the same questions, in the same order."""
    if len(first) != len(second):
        raise ValueError(f"paired verdicts differ in length: {len(first)} != {len(second)}")
    a = sum(1 for x, y in zip(first, second, strict=True) if x and y)
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    d = len(first) - a - b - c
    n = len(first)
    return Paired(
        n=n, diff=(b - c) / n if n else 0.0, ci95=newcombe_paired_interval(a, b, c, d),
        mcnemar_p=mcnemar_exact(b, c), both=a, merged_only=b, other_only=c, neither=d,
    )


# --- how the console, the card and the sweep print them -------------------------------------------


def pct(x: float) -> str:
    """An accuracy (a fraction) as percent with one decimal: ``0.125`` -> ``12.5``."""
    return f"{100 * x:.1f}"


def points(x: float) -> str:
    """A difference of accuracies in percentage points, signed: ``0.04`` -> ``+4.0``."""
    return f"{100 * x:+.1f}"


def p_value(p: float) -> str:
    """A p-value with two significant digits: ``1.0``, ``0.50``, ``0.031``, ``0.0012``."""
    return f"{p:#.2g}" if p >= 1e-4 else f"{p:.1e}"
