"""bench/measure.py's `paired`: the order of the two sides, and ratios taken per pair."""

from __future__ import annotations

import pytest

from bench.load import LoadResult
from bench.measure import paired

pytestmark = pytest.mark.unit


def _result(tokens: float) -> LoadResult:
    return LoadResult(
        clients=8,
        window_s=10.0,
        tokens=tokens,
        requests_started=8,
        requests_finished=0,
        failures=[],
        ttft=[0.5],
        itl=[0.1],
        mean_completion_tokens=None,
        per_model={},
    )


def test_the_order_is_reversed_every_other_pair_and_ratios_pair_the_same_rep():
    calls: list[str] = []
    # the machine slows down run after run: a side that always ran first would look faster
    speed = iter([400.0, 380.0, 360.0, 340.0, 320.0, 300.0, 280.0, 260.0])

    def side(label: str):
        def run() -> LoadResult:
            calls.append(label)
            return _result(next(speed))

        return run

    out = paired("t", 8, 4, ("a", side("a")), ("b", side("b")))
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    # pairs: (400 / 380), (340 / 360), (320 / 300), (260 / 280)
    assert out["throughput_ratio_runs"] == [round(x, 3) for x in (400 / 380, 340 / 360, 320 / 300, 260 / 280)]
    # the drift cancels in the median of the pairs, where A-first-always would read about 1.06
    assert out["throughput_ratio"] == pytest.approx(1.0, abs=0.01)
    assert out["ratio_is"] == "a / b"
    # 4 pairs: the interval of their median is their whole range, which covers it with 87.5 %
    lo, hi = min(out["throughput_ratio_runs"]), max(out["throughput_ratio_runs"])
    assert out["throughput_ratio_median_ci"] == {"lo": lo, "hi": hi, "coverage": 0.875, "level": 0.95}


def test_wait_idle_polls_the_queue_gauges_until_both_are_empty(monkeypatch):
    from bench import measure

    replies = iter(
        [
            None,
            {"vllm:num_requests_running": 3.0, "vllm:num_requests_waiting": 1.0},
            {
                "vllm:num_requests_running": 0.0,
                "vllm:num_requests_waiting": 0.0,
            },
        ]
    )
    asked: list[tuple[str, ...]] = []

    def sums(server, names):
        asked.append(names)
        return next(replies)

    monkeypatch.setattr(measure, "metric_sums", sums)
    monkeypatch.setattr(measure.time, "sleep", lambda s: None)
    measure.wait_idle(object())  # type: ignore[arg-type]
    # no answer, then busy, then idle: three reads, and none after the idle one
    assert asked == [("vllm:num_requests_running", "vllm:num_requests_waiting")] * 3


def test_the_prefix_cache_share_leaves_out_a_window_whose_metrics_read_failed():
    from bench.measure import side_stats

    def window(edges: list[dict]) -> LoadResult:
        r = _result(100.0)
        r.probes = [
            {"api": 0.0, "engine": 0.0, "ours": 0.0, "machine": 0.0, "t": float(i), **e} for i, e in enumerate(edges)
        ]
        return r

    c = ("vllm:prompt_tokens_total", "vllm:prompt_tokens_cached_total")
    good = window([{c[0]: 1000.0, c[1]: 100.0}, {c[0]: 1400.0, c[1]: 300.0}])  # 400 positions, 200 cached
    failed = window([{}, {c[0]: 9000.0, c[1]: 0.0}])  # /metrics did not answer when the window opened
    assert side_stats([good, failed])["prompt_cached_share"] == 0.5
