"""Statistics for `expert eval`: scores with 95% bootstrap intervals, and paired comparisons.

Every variant of an expert answers the same test cases, so two variants are compared case by
case (paired), not as two independent samples:

- `score_interval`: the share of correct cases with a percentile bootstrap interval (cases
  resampled with replacement);
- `paired_difference`: score(b) - score(a) with a paired bootstrap interval (the same resampled
  cases for both variants);
- `mcnemar_exact`: the exact two-sided McNemar p-value, from the cases where exactly one of the
  two variants is correct (a binomial test of the discordant pairs against 1/2).

Pure Python, seeded: the same outcomes give the same intervals.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from math import comb

RESAMPLES = 2000
SEED = 0


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, by linear interpolation."""
    if not sorted_values:
        raise ValueError("no values")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _indices(n: int, resamples: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(resamples)]


def score_interval(correct: Sequence[bool], *, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """95% percentile bootstrap interval of the share of correct cases."""
    n = len(correct)
    if n == 0:
        return (0.0, 0.0)
    stats = sorted(sum(correct[i] for i in idx) / n for idx in _indices(n, resamples, seed))
    return (_percentile(stats, 0.025), _percentile(stats, 0.975))


def paired_difference(
    a: Sequence[bool], b: Sequence[bool], *, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, tuple[float, float]]:
    """score(b) - score(a) over the same cases, with its 95% paired bootstrap interval."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must cover the same cases")
    n = len(a)
    if n == 0:
        return 0.0, (0.0, 0.0)
    diff = [int(y) - int(x) for x, y in zip(a, b, strict=True)]
    stats = sorted(sum(diff[i] for i in idx) / n for idx in _indices(n, resamples, seed))
    return sum(diff) / n, (_percentile(stats, 0.025), _percentile(stats, 0.975))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value: are the cases only `a` gets right as many as those only `b` does?"""
    if len(a) != len(b):
        raise ValueError("paired outcomes must cover the same cases")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
