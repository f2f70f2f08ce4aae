"""bench/goals.py and the interval of a median (bench/measure.py): what a run's goals table says."""

from __future__ import annotations

import math

import pytest

from bench import goals
from bench.measure import median_interval

pytestmark = pytest.mark.unit


def _binomial_coverage(n: int, k: int) -> float:
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


@pytest.mark.parametrize(("n", "k"), [(4, 1), (6, 1), (8, 1), (12, 3), (16, 4), (30, 10)])
def test_the_interval_is_the_widest_order_statistics_that_reach_95_percent(n, k):
    xs = [float(i) for i in range(n, 0, -1)]  # unsorted on purpose
    ci = median_interval(xs)
    assert (ci["lo"], ci["hi"]) == (k, n - k + 1)
    assert ci["coverage"] == round(_binomial_coverage(n, k), 3)
    if n >= 6:
        assert _binomial_coverage(n, k) >= 0.95 > _binomial_coverage(n, k + 1)


def test_no_values_no_interval():
    assert median_interval([]) is None


def _res(soft: list[float], gateway: list[float], p99: float) -> dict:
    def paired(runs: list[float]) -> dict:
        return {
            "throughput_ratio": sorted(runs)[len(runs) // 2],
            "throughput_ratio_runs": runs,
            "pairs_matched": len(runs),
            "throughput_ratio_median_ci": median_interval(runs),
        }

    return {
        "soft_prompt_path": {"soft_prompt_on_vs_none": paired(soft)},
        "gateway_vs_vllm": {"by_clients": {"8": paired(gateway)}},
        "experts_mixed": {"by_lora_ops": {"project": {**paired([0.9] * 6), "ttft_p99_ratio": p99}}},
    }


def test_each_goal_is_judged_at_its_point_and_by_where_its_interval_lies():
    rows = {
        g["goal"]: g
        for g in goals.judge(
            _res(
                soft=[0.80, 0.85, 0.90, 0.93, 0.96, 1.05],  # median 0.93 (sorted[3]), interval 0.80-1.05
                gateway=[0.7, 0.8, 0.85, 0.9, 0.95, 0.97],  # every pair below 1
                p99=3.5,
            )
        )
    }
    assert set(rows) == {
        "soft prompt on vs `none`",
        "gateway vs vLLM's server, 8 clients",
        "5 mixed experts vs base, 8 clients",
        "5 mixed experts vs base: TTFT p99",
    }  # the LoRA section did not run: no row
    soft = rows["soft prompt on vs `none`"]
    assert (soft["met"], soft["interval"]) == (False, "undecided")
    assert (
        rows["gateway vs vLLM's server, 8 clients"]["met"],
        rows["gateway vs vLLM's server, 8 clients"]["interval"],
    ) == (
        False,
        "against",
    )
    mixed = rows["5 mixed experts vs base, 8 clients"]
    assert (mixed["met"], mixed["interval"]) == (True, "clear")
    p99 = rows["5 mixed experts vs base: TTFT p99"]  # an at-most goal, pooled: no interval
    assert (p99["met"], p99["interval"], p99["threshold"]) == (False, None, "≤ 3.0")


def test_the_table_renders_each_verdict():
    text = "\n".join(goals.markdown(_res(soft=[0.96] * 6, gateway=[1.2] * 8, p99=1.1)))
    assert "| soft prompt on vs `none` | ≥ 0.95 | **0.96** | 0.96–0.96 (96.9%) | met | clear |" in text
    assert (
        "| 5 mixed experts vs base: TTFT p99 | ≤ 3.0 | **1.1** | — (a percentile of pooled samples) | met | — |" in text
    )
    assert goals.markdown({}) == []
