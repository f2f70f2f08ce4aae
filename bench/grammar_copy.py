"""What a grammar that copies from the request (`input-span`, server/manifest/input_spans.py) costs
one request: the gateway defines the rule from each request's words, so the engine compiles a new
grammar per request, where a fixed grammar is compiled once and cached. Two experts on the base
model, the same JSON skeleton, the values either copied (`input-span`) or any string; one request
at a time, the two interleaved (bench/comparisons.py), streaming, max_tokens 1: the time to the
first token holds the wait for the grammar. Measured on the benchmark's prompts (about 20 words)
and on a text of 1,000 words (the definition is linear in the words)."""

from __future__ import annotations

from typing import Any

from . import experts as ex
from .comparisons import ttft_interleaved_sides
from .plan import Plan
from .servers import Server

LONG_WORDS = 1_000


def long_text(words: int) -> str:
    vocabulary = [
        "the",
        "keeper",
        "of",
        "the",
        "lighthouse",
        "on",
        "Much",
        "Kilbarrack",
        "wrote",
        "to",
        "an",
        "orchestral",
        "bell",
        "ringer",
    ]
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(words))


def grammar_copy(plan: Plan, gw: Server) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cases: list[tuple[str, dict[str, Any] | None]] = [
        ("bench_prompts", None),
        (f"text_{LONG_WORDS}_words", {"messages": [{"role": "user", "content": long_text(LONG_WORDS)}]}),
    ]
    for label, extra in cases:
        print(f"    TTFT, one client, copy vs fixed grammar interleaved ({label}) ...", flush=True)
        try:
            out[label] = ttft_interleaved_sides(
                ("copy", gw, ex.GRAMMAR_COPY_EXPERT, extra),
                ("fixed", gw, ex.GRAMMAR_FIXED_EXPERT, extra),
                plan.interleaved,
            )
        except Exception as exc:  # reported; the other case stands
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
    out["what"] = (
        f"experts {ex.GRAMMAR_COPY_EXPERT!r} (name, city and job copied from the request: input-span) vs "
        f"{ex.GRAMMAR_FIXED_EXPERT!r} (any string), the same JSON skeleton, no adapter"
    )
    return out
