"""Reloading one expert again and again while clients stream from it: reload latency, failed
requests, and how soon each new version serves traffic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from trainer.synthetic import install_adapter

from . import experts as ex
from .load import RequestRecord, pct, run_load
from .measure import SERVERS, ms, wait_idle
from .plan import Plan
from .servers import Server, snapshot


def reload_under_load(plan: Plan, gw: Server, es: ex.ExpertSet) -> dict[str, Any]:
    """8 clients stream from one expert while it is reloaded `plan.reloads` times, alternating two
    adapters. After each reload, wait (bounded) until a request started after it has finished on the
    new version, so every version really serves traffic."""
    folder = es.root / ex.SWAP_EXPERT
    latencies: list[float] = []
    server_durations: list[float] = []
    errors: list[str] = []
    switch_s: list[float] = []
    records: list[tuple[str, RequestRecord]] = []
    max_tokens = 8

    async def reloads() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            for n in range(plan.reloads):
                source = es.swap_b if n % 2 == 0 else es.swap_a
                version = f"{n + 2}.0.0"
                await asyncio.to_thread(install_adapter, folder, source, version)
                t = time.perf_counter()
                try:
                    r = await client.post(f"{gw.url}/experts/{ex.SWAP_EXPERT}/reload")
                    done = time.perf_counter()
                    latencies.append(done - t)
                    if r.status_code != 200:
                        errors.append(f"reload {n}: HTTP {r.status_code} {r.text[:200]}")
                        continue
                    server_durations.append(r.json().get("duration_s", 0.0))
                except httpx.HTTPError as exc:
                    errors.append(f"reload {n}: {type(exc).__name__}: {exc}")
                    continue
                deadline = done + 30  # until a request is answered (headers) by the new version
                while time.perf_counter() < deadline:
                    if any(rec.headers.get("x-expert-version") == version for _, rec in records):
                        switch_s.append(time.perf_counter() - done)
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)

    if not gw.alive():
        raise RuntimeError(f"{gw.name} is not running")
    result = asyncio.run(
        run_load(
            gw.url,
            clients=8,
            warmup_s=4.0,
            window_s=1.0,
            max_tokens=max_tokens,
            model=ex.SWAP_EXPERT,
            stagger_s=0.3,
            on_window=reloads,
            records=records,
            probe=lambda: snapshot(gw, SERVERS or [gw]),
        )
    )
    wait_idle(gw)
    versions: dict[str, int] = {}  # completed answers per version
    routed: set[str] = set()
    for _, rec in result.records:
        v = rec.headers.get("x-expert-version")
        if v:
            routed.add(v)
        if v and rec.error is None and rec.end is not None:
            versions[v] = versions.get(v, 0) + 1
    return {
        "reloads": plan.reloads,
        "reloads_failed": len(errors),
        "reload_errors": errors[:3],
        "reload_latency_p50_ms": ms(pct(latencies, 50)),
        "reload_latency_p99_ms": ms(pct(latencies, 99)),
        "reload_latency_max_ms": ms(max(latencies) if latencies else None),
        "server_duration_p50_ms": ms(pct(server_durations, 50)),
        "new_version_first_request_p50_ms": ms(pct(switch_s, 50)),
        "versions_routed": len(routed),
        "versions_with_completed_answers": len(versions),
        "clients": 8,
        "max_tokens": max_tokens,
        "requests_finished": sum(versions.values()),
        "failed_requests": len(result.failures),
        "failure_examples": result.failures[:3],
        "versions_served": dict(sorted(versions.items(), key=lambda kv: int(kv[0].split(".")[0]))),
        "tokens_per_s_under_reloads": round(result.tokens / result.window_s, 2),
        "window_s": round(result.window_s, 1),
    }
