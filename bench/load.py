"""A small closed-loop load generator: N clients, each sending streaming chat requests back to
back, for a warm-up and then a measured window. Client i starts i x `stagger_s` after the
first, so that requests do not all start (and prefill) in lockstep; the warm-up covers the
ramp.

Measured from the client side, for any OpenAI-compatible server:
- output tokens/s: tokens received inside the window / window length. A content chunk
  counts as one token; a finished request's `usage.completion_tokens` (stream_options.
  include_usage) corrects its count, the difference credited to its last chunk. Requests
  still running when the window closes count the chunks they received in it;
- TTFT: request sent -> first non-empty content chunk, for first chunks that arrive after the
  last client has started and before the window closes (long requests leave few first chunks
  inside the window alone);
- inter-token latency: the gaps between consecutive content chunks of a request, inside
  the window (a chunk that carries k tokens counts as one gap);
- failures: HTTP status >= 400, an `error` event in the stream, or a transport error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

# Fixed prompts that make SmolLM2 write at length (max_tokens caps the answer).
PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step, for a curious student.",
    "Describe a busy city market in the morning, with as many details as you can.",
    "Write a long letter to a friend about your travels through the mountains.",
    "Explain the water cycle in detail, covering evaporation, condensation and precipitation.",
    "Tell a long fairy tale about a fox, a crow and a clever little girl.",
    "Describe, step by step and in detail, how to bake a loaf of bread at home.",
    "Write a detailed history of the bicycle, from its invention to today.",
]


@dataclass
class RequestRecord:
    start: float
    client: int
    first: float | None = None
    chunks: list[float] = field(default_factory=list)
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    end: float | None = None
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def token_times(self) -> list[tuple[float, int]]:
        """(time, tokens) per content chunk, the usage correction on the last one."""
        out = [(t, 1) for t in self.chunks]
        if out and self.usage_tokens is not None and self.usage_tokens != len(out):
            t, _ = out[-1]
            out[-1] = (t, 1 + self.usage_tokens - len(out))
        return out


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def body_for(model: str, i: int, max_tokens: int, extra: dict[str, Any] | None) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(extra or {})
    return body


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any], rec: RequestRecord) -> None:
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            rec.headers = {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("x-expert")}
            if r.status_code >= 400:
                text = (await r.aread()).decode(errors="replace")[:300]
                rec.error = f"HTTP {r.status_code}: {text}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                event = json.loads(data)
                if "error" in event:
                    rec.error = f"stream error: {json.dumps(event)[:300]}"
                    return
                for c in event.get("choices") or ():
                    if (c.get("delta") or {}).get("content"):
                        if rec.first is None:
                            rec.first = now
                        rec.chunks.append(now)
                usage = event.get("usage")
                if usage:
                    rec.usage_tokens = usage.get("completion_tokens")
                    rec.prompt_tokens = usage.get("prompt_tokens")
        rec.end = time.perf_counter()
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"


@dataclass
class LoadResult:
    clients: int
    window_s: float
    tokens: float
    requests_started: int
    requests_finished: int
    failures: list[str]
    ttft: list[float]
    itl: list[float]
    mean_completion_tokens: float | None
    per_model: dict[str, float]
    records: list[tuple[str, RequestRecord]] = field(default_factory=list, repr=False)
    probes: list[Any] = field(default_factory=list, repr=False)  # probe() at the window's start and end

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "window_s": round(self.window_s, 2),
            "output_tokens": round(self.tokens),
            "tokens_per_s": round(self.tokens / self.window_s, 2) if self.window_s else None,
            "ttft_p50_ms": _ms(pct(self.ttft, 50)),
            "ttft_p99_ms": _ms(pct(self.ttft, 99)),
            "ttft_samples": len(self.ttft),
            "itl_p50_ms": _ms(pct(self.itl, 50)),
            "itl_p99_ms": _ms(pct(self.itl, 99)),
            "requests_finished": self.requests_finished,
            "mean_completion_tokens": round(self.mean_completion_tokens, 1) if self.mean_completion_tokens else None,
            "failures": len(self.failures),
            "failure_examples": self.failures[:3],
            "tokens_per_s_by_model": {k: round(v / self.window_s, 2) for k, v in self.per_model.items()},
        }


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


async def run_load(
    url: str,
    *,
    clients: int,
    warmup_s: float,
    window_s: float,
    max_tokens: int = 64,
    pick: Callable[[int, int], tuple[str, dict[str, Any] | None]] | None = None,
    model: str = "",
    on_window: Callable[[], Any] | None = None,
    stagger_s: float = 0.0,
    records: list[tuple[str, RequestRecord]] | None = None,
    probe: Callable[[], Any] | None = None,
) -> LoadResult:
    """`pick(client, k)` -> (model, extra body fields) of a client's k-th request (default: `model`).
    `on_window`, if given, is awaited once the window opens (the load runs meanwhile); the window
    then lasts at least `window_s` and until it returns. `records`, if given, receives
    (model, RequestRecord) pairs as requests start (for callers that watch the run). `probe`, if
    given, is called when the window opens and when it closes (e.g. CPU-time snapshots)."""
    records = [] if records is None else records
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    timeout = httpx.Timeout(300.0, connect=10.0)
    t0 = time.perf_counter()
    w0 = t0 + warmup_s
    ramp_end = t0 + (clients - 1) * stagger_s
    stop = asyncio.Event()

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def worker(c: int) -> None:
            await asyncio.sleep(c * stagger_s)
            k = 0
            while not stop.is_set():
                name, extra = pick(c, k) if pick else (model, None)
                rec = RequestRecord(start=time.perf_counter(), client=c)
                records.append((name, rec))
                await one_request(client, url, body_for(name, c + k * clients, max_tokens, extra), rec)
                if rec.error and not stop.is_set():
                    await asyncio.sleep(0.05)  # do not spin on a refusing server
                k += 1

        tasks = [asyncio.create_task(worker(c)) for c in range(clients)]
        try:
            await asyncio.sleep(max(0.0, w0 - time.perf_counter()))
            probes = [probe() if probe else None]
            if on_window is not None:
                await on_window()
            w1 = max(time.perf_counter(), w0 + window_s)
            await asyncio.sleep(max(0.0, w1 - time.perf_counter()))
            w1 = time.perf_counter()
            probes.append(probe() if probe else None)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    tokens = 0.0
    per_model: dict[str, float] = {}
    ttft, itl, failures, finished_tokens = [], [], [], []
    started = finished = 0
    for name, rec in records:
        for t, n in rec.token_times():
            if w0 <= t <= w1:
                tokens += n
                per_model[name] = per_model.get(name, 0) + n
        if rec.error:  # anywhere in the run, warm-up included
            failures.append(rec.error)
            continue
        if rec.first is not None and ramp_end <= rec.first <= w1:
            ttft.append(rec.first - rec.start)
        if w0 <= rec.start <= w1:
            started += 1
        if rec.end is not None and w0 <= rec.end <= w1:
            finished += 1
            if rec.usage_tokens is not None:
                finished_tokens.append(rec.usage_tokens)
    for _, rec in records:
        ch = [t for t in rec.chunks if w0 <= t <= w1]
        itl += [b - a for a, b in itertools.pairwise(ch)]
    return LoadResult(
        clients,
        w1 - w0,
        tokens,
        started,
        finished,
        failures,
        ttft,
        itl,
        statistics.mean(finished_tokens) if finished_tokens else None,
        per_model,
        records,
        probes,
    )
