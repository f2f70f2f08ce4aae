"""The goals a run is judged against (the many-experts speed goals), read from bench/results.json.

Each goal is a ratio from one run, compared with its threshold at the point estimate (the median of
the pairs' ratios, as stated), with the interval for that median beside it: when the interval lies
on both sides of the threshold, the run cannot tell whether the goal is met, whatever the point says.
"""

from __future__ import annotations

from typing import Any

from .measure import median_interval

# (name, where in results.json, the key of the ratio, at least (True) or at most (False), threshold)
GOALS: list[tuple[str, tuple[str, ...], str, bool, float]] = [
    ("LoRA expert vs base, 8 clients", ("lora_vs_base", "by_lora_ops", "project"), "throughput_ratio", True, 0.85),
    ("5 mixed experts vs base, 8 clients", ("experts_mixed", "by_lora_ops", "project"), "throughput_ratio", True, 0.8),
    ("5 mixed experts vs base: TTFT p99", ("experts_mixed", "by_lora_ops", "project"), "ttft_p99_ratio", False, 3.0),
    ("soft prompt on vs `none`", ("soft_prompt_path", "soft_prompt_on_vs_none"), "throughput_ratio", True, 0.95),
    ("gateway vs vLLM's server, 8 clients", ("gateway_vs_vllm", "by_clients", "8"), "throughput_ratio", True, 1.0),
]


def _dig(res: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = res
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def judge(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal the run measured: value, threshold, `met` (the point estimate), and where the
    interval of the median lies: `clear` (all of it on the goal's side), `against` (all of it on the
    other side) or `undecided` (across the threshold); None where the ratio has no interval (pooled)."""
    rows = []
    for name, path, key, at_least, threshold in GOALS:
        r = _dig(res, path)
        value = r.get(key) if r else None
        if r is None or value is None:
            continue
        ci = r.get(f"{key}_median_ci")
        runs = r.get(f"{key}_runs")
        if ci is None and runs and r.get("pairs_matched") in (None, len(runs)):
            ci = median_interval(runs)  # results written before the interval was, every pair used
        met = value >= threshold if at_least else value <= threshold
        interval = None
        if ci:
            lo, hi = ci["lo"], ci["hi"]
            good_lo, good_hi = (lo >= threshold, hi >= threshold) if at_least else (hi <= threshold, lo <= threshold)
            interval = "clear" if good_lo else ("undecided" if good_hi else "against")
        rows.append(
            {
                "goal": name,
                "threshold": f"{'≥' if at_least else '≤'} {threshold}",
                "value": value,
                "ci": ci,
                "met": met,
                "interval": interval,
            }
        )
    return rows


def markdown(res: dict[str, Any]) -> list[str]:
    rows = judge(res)
    if not rows:
        return []
    lines = [
        "### Goals",
        "",
        "| goal | threshold | this run (median of pairs) | interval of the median (coverage) | point | the interval |",
        "|---|---|---:|---:|---|---|",
    ]
    for g in rows:
        ci = g["ci"]
        span = f"{ci['lo']}–{ci['hi']} ({ci['coverage']:.1%})" if ci else "— (a percentile of pooled samples)"
        lines.append(
            f"| {g['goal']} | {g['threshold']} | **{g['value']}** | {span} | {'met' if g['met'] else '**missed**'} | "
            f"{g['interval'] or '—'} |"
        )
    lines += [
        "",
        "The interval of a median: the order statistics that cover the median of the pairs' distribution with "
        "at least 95 % (fewer than 6 pairs cannot: the whole range is given, with what it covers). `clear`: all "
        "of it on the goal's side; `against`: all on the other; `undecided`: it spans the threshold, so this "
        "run cannot tell.",
        "",
    ]
    return lines
