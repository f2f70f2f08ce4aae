"""Statistics of `expert eval`: bootstrap intervals and the exact McNemar test, against
independent computations (a two-sided binomial test written from its definition, the normal
approximation of a proportion)."""

from __future__ import annotations

import math
import random

import pytest

from server.commands.eval_stats import mcnemar_exact, paired_difference, score_interval

pytestmark = pytest.mark.unit


def test_interval_of_a_constant_outcome_is_a_point():
    assert score_interval([True] * 30) == (1.0, 1.0)
    assert score_interval([False] * 30) == (0.0, 0.0)


def test_interval_agrees_with_the_normal_approximation():
    rng = random.Random(1)
    outcomes = [rng.random() < 0.7 for _ in range(400)]
    p = sum(outcomes) / len(outcomes)
    half = 1.96 * math.sqrt(p * (1 - p) / len(outcomes))
    lo, hi = score_interval(outcomes)
    assert lo < p < hi
    assert abs(lo - (p - half)) < 0.015 and abs(hi - (p + half)) < 0.015


def test_interval_is_seeded():
    outcomes = [i % 3 == 0 for i in range(50)]
    assert score_interval(outcomes) == score_interval(outcomes)
    assert score_interval(outcomes, seed=1) != score_interval(outcomes, seed=2)


def test_paired_difference_sees_the_pairing():
    # b is right exactly where a is, plus 10 more cases: the difference is 0.1 and, paired, never below 0
    a = [i < 50 for i in range(100)]
    b = [i < 60 for i in range(100)]
    diff, (lo, hi) = paired_difference(a, b)
    assert diff == pytest.approx(0.1)
    assert 0.0 < lo <= 0.1 <= hi
    assert paired_difference(b, a)[0] == pytest.approx(-0.1)
    with pytest.raises(ValueError):
        paired_difference(a, b[:-1])


@pytest.mark.parametrize(("only_a", "only_b", "both"), [(0, 10, 5), (3, 9, 40), (7, 7, 0), (1, 0, 3), (12, 30, 8)])
def test_mcnemar_equals_an_exact_binomial_test(only_a, only_b, both):
    def binomial_two_sided(k: int, n: int) -> float:
        # the probability, under Binomial(n, 1/2), of every outcome no likelier than k
        pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
        return min(1.0, sum(q for q in pmf if q <= pmf[k] * (1 + 1e-9)))

    a = [True] * only_a + [False] * only_b + [True] * both + [False] * 5
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * 5
    expected = binomial_two_sided(only_a, only_a + only_b)
    assert mcnemar_exact(a, b) == pytest.approx(expected)


def test_mcnemar_without_discordant_pairs_is_one():
    assert mcnemar_exact([True, False], [True, False]) == 1.0
