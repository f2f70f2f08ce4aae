"""What a grammar that copies from the request (`input-span`, server/manifest/input_spans.py) costs
one request: the gateway defines the rule from each request's words, so the engine compiles a new
grammar for every new text, where a fixed grammar is compiled once and cached. Two experts on the
base model, the same JSON skeleton, the values either copied (`input-span`) or any string; one
request at a time, the two interleaved (bench/comparisons.py), streaming, max_tokens 1: the time
to the first token holds the wait for the grammar. Every request's text is new — it opens with
the request's number and side — so that neither the engine's grammar cache nor its prefix cache
serves it; both sides pay the same prefill. Measured on the benchmark's prompts (about 20 words)
and on a text of 1,000 words (the rule's definition is linear in the words)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import experts as ex
from .comparisons import ttft_interleaved_sides
from .load import PROMPTS
from .plan import Plan
from .servers import Server

LONG_WORDS = 1_000
_VOCABULARY = [
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
]


def long_text(words: int) -> str:
    return " ".join(_VOCABULARY[i % len(_VOCABULARY)] for i in range(words))


def fresh(side: str, text: Callable[[int], str]) -> Callable[[int], dict[str, Any]]:
    """Request fields whose text no earlier request had: `Request <i><side>:` before `text(i)`."""
    return lambda i: {"messages": [{"role": "user", "content": f"Request {i}{side}: {text(i)}"}]}


def grammar_copy(plan: Plan, gw: Server) -> dict[str, Any]:
    out: dict[str, Any] = {}
    long = long_text(LONG_WORDS)
    texts: list[tuple[str, Callable[[int], str]]] = [
        ("bench_prompts", lambda i: PROMPTS[i % len(PROMPTS)]),
        (f"text_{LONG_WORDS}_words", lambda i: long),
    ]
    for label, text in texts:
        print(f"    TTFT, one client, copy vs fixed grammar interleaved ({label}) ...", flush=True)
        try:
            out[label] = ttft_interleaved_sides(
                ("copy", gw, ex.GRAMMAR_COPY_EXPERT, fresh("a", text)),
                ("fixed", gw, ex.GRAMMAR_FIXED_EXPERT, fresh("b", text)),
                plan.interleaved,
            )
        except Exception as exc:  # reported; the other case stands
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
    out["what"] = (
        f"experts {ex.GRAMMAR_COPY_EXPERT!r} (name, city and job copied from the request: input-span) vs "
        f"{ex.GRAMMAR_FIXED_EXPERT!r} (any string), the same JSON skeleton, no adapter; every request's text new"
    )
    return out
