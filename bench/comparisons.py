"""The gateway against vLLM's own OpenAI server, same engine args: windowed runs at several client
counts, a LoRA expert on both, and TTFT with single requests interleaved one by one."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import httpx

from . import experts as ex
from .load import RequestRecord, body_for, one_request, pct
from .measure import SERVERS, measure, ms, paired, ratio
from .plan import Plan
from .servers import BASE_ID, Server, snapshot

IDLE_SPIN_S = 1.3  # a vLLM worker spins on one core for ~1 s after its last step


def gateway_vs_vllm(plan: Plan, gw: Server, peer: Server) -> dict[str, Any]:
    out: dict[str, Any] = {"by_clients": {}}
    assert plan.reps is not None
    for c in plan.clients:
        out["by_clients"][str(c)] = paired(
            "gateway-vs-vllm",
            c,
            plan.reps[c],
            ("gateway", functools.partial(measure, gw, plan, c)),
            ("vllm", functools.partial(measure, peer, plan, c)),
        )
    print("    TTFT, one client, requests interleaved ...", flush=True)
    try:
        out["ttft_interleaved_1_client"] = ttft_interleaved(gw, peer, plan.interleaved)
    except Exception as exc:  # reported; the windowed results above stand
        out["ttft_interleaved_1_client"] = {"error": f"{type(exc).__name__}: {exc}"}
    at8 = out["by_clients"].get("8") or next(iter(out["by_clients"].values()))
    out["throughput_ratio"] = at8["throughput_ratio"]
    out["ttft_p50_ratio"] = at8["ttft_p50_ratio"]
    tr, fr = at8.get("throughput_ratio_range") or [0, 0], at8.get("ttft_p50_ratio_range") or [9, 9]
    out["goal"] = {
        "throughput_ratio_min": 1.0,
        "ttft_p50_ratio_max": 1.05,
        "met": bool(
            at8["throughput_ratio"]
            and at8["throughput_ratio"] >= 1.0
            and at8["ttft_p50_ratio"]
            and at8["ttft_p50_ratio"] <= 1.05
        ),
        "within_spread": bool(tr[1] >= 1.0 and fr[0] <= 1.05),
    }
    if plan.lora_peer:
        name = ex.LORA_EXPERTS[0]
        out["lora_expert_8_clients"] = paired(
            "lora-expert gateway-vs-vllm",
            8,
            3,
            ("gateway", lambda: measure(gw, plan, 8, model=name)),
            ("vllm", lambda: measure(peer, plan, 8, model=name)),
        )
        out["lora_expert_8_clients"]["model"] = name
    return out


# one side of an interleaved probe: (label, server, model, extra request fields, or a function of
# the request's index that gives them)
Extra = dict[str, Any] | Callable[[int], dict[str, Any]] | None
Side = tuple[str, Server, str, Extra]


def ttft_interleaved(gw: Server, peer: Server, n: int) -> dict[str, Any]:
    """The gateway and vLLM's server, base-model requests: see `ttft_interleaved_sides`."""
    return ttft_interleaved_sides(("gateway", gw, BASE_ID, None), ("vllm", peer, BASE_ID, None), n)


def ttft_interleaved_sides(a: Side, b: Side, n: int) -> dict[str, Any]:
    """One client, one request at a time, alternating sides request by request (A, B, B, A, ...):
    streaming, max_tokens 1, so TTFT = the serving path + one prefill on an idle engine. Neighbouring
    requests see the same machine load, so the paired differences isolate what each side adds.
    Each request waits `IDLE_SPIN_S` first: a vLLM worker keeps one core busy for about a second after
    its last step, which would slow the next request (every server is bound to the same cores)."""
    out: dict[str, list[float]] = {a[0]: [], b[0]: []}
    errors: list[str] = []

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            for i in range(n):
                for label, server, model, extra in (a, b) if i % 2 == 0 else (b, a):
                    await asyncio.sleep(IDLE_SPIN_S)
                    rec = RequestRecord(start=time.perf_counter(), client=0)
                    fields = extra(i) if callable(extra) else extra
                    await one_request(client, server.url, body_for(model, i, 1, fields), rec)
                    if rec.error or rec.first is None:
                        errors.append(f"{label}: {rec.error or 'no token'}")
                        out[label].append(float("nan"))
                    else:
                        out[label].append(rec.first - rec.start)

    s0 = snapshot(a[1], SERVERS or [a[1], b[1]])
    asyncio.run(go())
    s1 = snapshot(a[1], SERVERS or [a[1], b[1]])
    busy_other = max(0.0, ((s1["machine"] - s0["machine"]) - (s1["ours"] - s0["ours"])) / (s1["t"] - s0["t"]))
    pairs = [(x, y) for x, y in zip(out[a[0]], out[b[0]], strict=True) if x == x and y == y]  # not NaN
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    return {
        "requests_per_side": n,
        f"{a[0]}_ttft_p50_ms": ms(pct(xs, 50)),
        f"{b[0]}_ttft_p50_ms": ms(pct(ys, 50)),
        f"{a[0]}_ttft_p90_ms": ms(pct(xs, 90)),
        f"{b[0]}_ttft_p90_ms": ms(pct(ys, 90)),
        "ttft_p50_ratio": ratio(pct(xs, 50), pct(ys, 50)),
        "paired_difference_p50_ms": ms(pct([x - y for x, y in pairs], 50)),
        "other_jobs_cores": round(busy_other, 2),
        "failures": errors[:3],
    }
