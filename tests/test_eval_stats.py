"""Wilson interval, exact McNemar, Newcombe's paired interval: known values and coverage."""

from __future__ import annotations

import math
import random

import pytest

from hubswap.evaluate.stats import (
    mcnemar_exact,
    newcombe_paired_interval,
    paired_comparison,
    wilson_interval,
)


def test_wilson_known_values():
    # Wilson (1927) / Newcombe (1998a) table: 0/10 -> [0, 0.2775], 10/10 -> [0.7225, 1], 15/148 -> [0.0624, 0.1605]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_is_the_two_sided_binomial_test():
    def binom_two_sided(k, n):  # sum of the probabilities no larger than P(k), the textbook definition
        probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
        return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-12)))

    for b, c in [(10, 2), (3, 3), (0, 7), (20, 9), (1, 0)]:
        assert mcnemar_exact(b, c) == pytest.approx(binom_two_sided(min(b, c), b + c))
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857, abs=1e-5)


def test_newcombe_paired_uses_the_pairing():
    # Same marginal accuracies (0.50 vs 0.45), fewer discordant pairs: a narrower interval.
    concordant = newcombe_paired_interval(40, 10, 5, 45)
    discordant = newcombe_paired_interval(25, 25, 20, 30)
    assert concordant[1] - concordant[0] < discordant[1] - discordant[0]
    for lo, hi in (concordant, discordant):
        assert -1 <= lo < 0.05 < hi <= 1
    assert newcombe_paired_interval(50, 0, 0, 0) == pytest.approx((-0.0713, 0.0713), abs=1e-3)
    assert newcombe_paired_interval(0, 0, 0, 0) == (-1.0, 1.0)


def test_newcombe_paired_coverage():
    # Two correlated models of accuracy 0.55 and 0.45 on n = 80 questions, 1500 replications: the
    # interval should cover the true difference about 95% of the time.
    rng = random.Random(0)
    true_diff, covered, reps = 0.10, 0, 1500
    for _ in range(reps):
        a = b = c = d = 0
        for _ in range(80):
            u = rng.random()
            # P(both)=0.35, P(first only)=0.20, P(second only)=0.10, P(neither)=0.35
            if u < 0.35:
                a += 1
            elif u < 0.55:
                b += 1
            elif u < 0.65:
                c += 1
            else:
                d += 1
        lo, hi = newcombe_paired_interval(a, b, c, d)
        covered += lo <= true_diff <= hi
    assert 0.93 <= covered / reps <= 0.975


def test_paired_comparison_counts():
    merged = [True, True, False, False, True, False]
    other = [True, False, True, False, False, False]
    p = paired_comparison(merged, other)
    assert (p.both, p.merged_only, p.other_only, p.neither, p.n) == (1, 2, 1, 2, 6)
    assert p.diff == pytest.approx(1 / 6)
    assert p.ci95[0] < p.diff < p.ci95[1]
    assert p.to_json()["ci95"] == list(p.ci95)
    same = paired_comparison(merged, merged)
    assert same.diff == 0 and same.mcnemar_p == 1.0
    with pytest.raises(ValueError):
        paired_comparison([True], [True, False])
