"""Measuring one server under load, and comparing two sides run in alternation.

`measure` drives one server with the closed-loop load generator (bench/load.py) and waits until
its engine is idle again; `paired` runs two such measurements A and B in alternation and reports
per-side statistics and the ratios A / B, preferring pairs that saw the same load from other jobs.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from .load import LoadResult, pct, run_load
from .plan import Plan
from .servers import BASE_ID, ENGINE_COUNTERS, Server, metric_sums, snapshot

SERVERS: list[Server] = []  # every server started, for the CPU snapshots (filled by bench.run)
MATCH_CORES = 0.25  # two runs are "matched" when other jobs took within this many cores of each other


def ms(x: float | None) -> float | None:
    """Seconds to milliseconds, rounded to 0.1 ms."""
    return None if x is None else round(x * 1000, 1)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def median_interval(xs: list[float], level: float = 0.95) -> dict[str, Any] | None:
    """A distribution-free confidence interval for the median of `xs`: the order statistics
    x(k) and x(n-k+1) (sorted, 1-based) with the largest k whose coverage,
    1 - 2 P(Binomial(n, 1/2) < k), is at least `level`. It assumes only that the values are
    independent draws of one distribution. With few values no k reaches `level`: the interval is
    then the whole range, and `coverage` says what it does cover (87.5 % with 4 values)."""
    if not xs:
        return None
    v = sorted(xs)
    n = len(v)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return {"lo": round(v[k - 1], 3), "hi": round(v[n - k], 3), "coverage": round(coverage(k), 3), "level": level}


def wait_idle(server: Server, timeout: float = 15.0) -> None:
    """Until the engine has no running or waiting request (the previous run's cancelled ones)."""
    deadline = time.perf_counter() + timeout
    time.sleep(0.3)
    while time.perf_counter() < deadline:
        queues = metric_sums(server, ("vllm:num_requests_running", "vllm:num_requests_waiting"))
        if queues is not None:
            if queues and sum(queues.values()) == 0:
                break
            if not queues:  # a server without these gauges: wait a little, then go on
                time.sleep(1.0)
                break
        time.sleep(0.3)
    time.sleep(0.5)


def measure(
    server: Server,
    plan: Plan,
    clients: int,
    *,
    model: str = BASE_ID,
    pick: Callable[[int, int], tuple[str, dict[str, Any] | None]] | None = None,
    window_s: float | None = None,
    max_tokens: int | None = None,
) -> LoadResult:
    if not server.alive():
        raise RuntimeError(f"{server.name} is not running; last log lines:\n{server.tail()}")
    stagger = plan.stagger_s if clients <= 8 else plan.stagger_s * 0.625
    window = window_s or (plan.window_s if clients <= 8 else plan.window_s_32)
    result = asyncio.run(
        run_load(
            server.url,
            clients=clients,
            warmup_s=plan.warmup_s + (clients - 1) * stagger,
            window_s=window,
            max_tokens=max_tokens or plan.max_tokens,
            pick=pick,
            model=model,
            stagger_s=stagger,
            probe=lambda: snapshot(server, SERVERS or [server]),
        )
    )
    wait_idle(server)
    return result


def other_cores(r: LoadResult) -> float | None:
    """Cores that other jobs on the machine took, on average, during a run's window."""
    if len(r.probes) != 2 or not r.probes[0] or not r.probes[1]:
        return None
    a, b = r.probes
    return max(0.0, ((b["machine"] - a["machine"]) - (b["ours"] - a["ours"])) / (b["t"] - a["t"]))


def side_stats(results: list[LoadResult]) -> dict[str, Any]:
    """Medians of per-run throughput; latency percentiles over the pooled samples of all runs."""
    ttft = [x for r in results for x in r.ttft]
    itl = [x for r in results for x in r.itl]
    tps = [r.tokens / r.window_s for r in results]
    mct = [r.mean_completion_tokens for r in results if r.mean_completion_tokens]
    tokens = sum(r.tokens for r in results)
    cpu = {
        k: sum(r.probes[1][k] - r.probes[0][k] for r in results if len(r.probes) == 2 and r.probes[0])
        for k in ("api", "engine")
    }
    # windows whose /metrics answered at both edges (a failed read would count the counter from zero)
    counted = [
        r for r in results if len(r.probes) == 2 and all(p and all(k in p for k in ENGINE_COUNTERS) for p in r.probes)
    ]
    work = {k: sum(r.probes[1][k] - r.probes[0][k] for r in counted) for k in ENGINE_COUNTERS}
    prompt, cached = (work[k] for k in ENGINE_COUNTERS)
    prompts = [rec.prompt_tokens for r in results for _, rec in r.records if rec.prompt_tokens]
    return {
        "tokens_per_s": round(statistics.median(tps), 2),
        "tokens_per_s_runs": [round(x, 2) for x in tps],
        "ttft_p50_ms": ms(pct(ttft, 50)),
        "ttft_p99_ms": ms(pct(ttft, 99)),
        "ttft_samples": len(ttft),
        "itl_p50_ms": ms(pct(itl, 50)),
        "itl_p99_ms": ms(pct(itl, 99)),
        # the median (statistics.median) is pct(·, 50) of a non-empty list
        "decode_tokens_per_s_from_itl": round(1 / statistics.median(itl), 2) if itl else None,
        "decode_tokens_per_s_best_run": round(max(1 / statistics.median(r.itl) for r in results if r.itl), 2)
        if itl
        else None,
        "mean_completion_tokens": round(statistics.mean(mct), 1) if mct else None,
        "api_cpu_ms_per_token": round(cpu["api"] * 1000 / tokens, 2) if tokens else None,
        "engine_cpu_ms_per_token": round(cpu["engine"] * 1000 / tokens, 2) if tokens else None,
        # the engine's work, counted, not timed: a request's prompt positions (its usage; soft-prompt
        # vectors included) and the share vLLM served from the prefix cache in the windows
        "mean_prompt_tokens": round(statistics.mean(prompts), 1) if prompts else None,
        "prompt_cached_share": round(cached / prompt, 3) if prompt else None,
        "requests_finished": sum(r.requests_finished for r in results),
        "failures": sum(len(r.failures) for r in results),
        "failure_examples": [f for r in results for f in r.failures][:3],
        "other_jobs_cores_runs": [None if (c := other_cores(r)) is None else round(c, 2) for r in results],
    }


def paired(
    name: str, clients: int, reps: int, a: tuple[str, Callable[[], LoadResult]], b: tuple[str, Callable[[], LoadResult]]
) -> dict[str, Any]:
    """Run A and B `reps` times each, alternating, the order reversed every other pair (A B, B A, A B,
    ...) so that a drift of the machine or a first-run effect does not favour one side; ratios are
    A / B, per pair (A_i, B_i).

    The machine may be shared: each run records how many cores other jobs took during its window. A
    pair is *matched* when its two runs saw other jobs within MATCH_CORES cores of each other; the
    headline ratios use the matched pairs when at least half the pairs (and 2) are matched, else all."""
    runs: dict[str, list[LoadResult]] = {a[0]: [], b[0]: []}
    for rep in range(reps):
        for label, fn in (a, b) if rep % 2 == 0 else (b, a):
            r = fn()
            runs[label].append(r)
            oc = other_cores(r)
            print(
                f"    {name} clients={clients} rep {rep + 1}/{reps} {label}: {r.tokens / r.window_s:.1f} tok/s, "
                f"TTFT p50 {_fmt_ms(pct(r.ttft, 50))}, ITL p50 {_fmt_ms(pct(r.itl, 50))}, "
                f"failures {len(r.failures)}, other jobs {'-' if oc is None else f'{oc:.2f}'} cores",
                flush=True,
            )
    sa, sb = side_stats(runs[a[0]]), side_stats(runs[b[0]])
    pairs = list(zip(runs[a[0]], runs[b[0]], strict=True))

    def matched(x: LoadResult, y: LoadResult) -> bool:
        ox, oy = other_cores(x), other_cores(y)
        return ox is not None and oy is not None and abs(ox - oy) <= MATCH_CORES

    good = [p for p in pairs if matched(*p)]
    use = good if len(good) >= max(2, (len(pairs) + 1) // 2) else pairs

    def tput(ps: list[tuple[LoadResult, LoadResult]]) -> list[float]:
        return [x.tokens / y.tokens * (y.window_s / x.window_s) for x, y in ps if y.tokens]

    def ttft(ps: list[tuple[LoadResult, LoadResult]]) -> list[float]:
        return [statistics.median(x.ttft) / statistics.median(y.ttft) for x, y in ps if x.ttft and y.ttft]

    def med(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 3) if xs else None

    return {
        "clients": clients,
        "repetitions": reps,
        a[0]: sa,
        b[0]: sb,
        "pairs_matched": len(good),
        "ratios_from": "matched pairs" if use is good else "all pairs",
        "throughput_ratio": med(tput(use)),
        "throughput_ratio_range": [round(min(tput(use)), 3), round(max(tput(use)), 3)] if tput(use) else None,
        "throughput_ratio_median_ci": median_interval(tput(use)),
        "throughput_ratio_all_pairs": med(tput(pairs)),
        "throughput_ratio_runs": [round(x, 3) for x in tput(pairs)],
        "ttft_p50_ratio": med(ttft(use)),
        "ttft_p50_ratio_range": [round(min(ttft(use)), 3), round(max(ttft(use)), 3)] if ttft(use) else None,
        "ttft_p50_ratio_all_pairs": med(ttft(pairs)),
        "ttft_p50_ratio_runs": [round(x, 3) for x in ttft(pairs)],
        "ttft_p50_ratio_pooled": ratio(sa["ttft_p50_ms"], sb["ttft_p50_ms"]),
        "ttft_p99_ratio_pooled": ratio(sa["ttft_p99_ms"], sb["ttft_p99_ms"]),
        "itl_p50_ratio": ratio(sa["itl_p50_ms"], sb["itl_p50_ms"]),
        "api_cpu_per_token_ratio": ratio(sa["api_cpu_ms_per_token"], sb["api_cpu_ms_per_token"]),
        "engine_cpu_per_token_ratio": ratio(sa["engine_cpu_ms_per_token"], sb["engine_cpu_ms_per_token"]),
        "mean_prompt_tokens_ratio": ratio(sa["mean_prompt_tokens"], sb["mean_prompt_tokens"]),
        "ratio_is": f"{a[0]} / {b[0]}",
    }


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f} ms"
