"""Sampling values: request over expert (manifest) over server defaults, each with its source.

One pure function, `resolve`, decides every value with `is None` tests (0.0 is a value,
not "unset") and returns a new object; nothing shared is mutated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.manifest.schema import Decoding

Source = Literal["request", "manifest", "server"]

# field -> server default. `stop` is the request's name for the manifest's `stop_sequences`.
SERVER_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "max_tokens": 512,
    "seed": None,
    "stop": [],
    "n": 1,
}
SAMPLING_FIELDS = tuple(SERVER_DEFAULTS)


@dataclass(frozen=True)
class Resolved:
    value: Any
    source: Source

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source}


def expert_defaults(decoding: Decoding) -> dict[str, Any]:
    """The sampling values a manifest sets (only those it sets)."""
    values = {
        "temperature": decoding.temperature,
        "top_p": decoding.top_p,
        "top_k": decoding.top_k,
        "min_p": decoding.min_p,
        "repetition_penalty": decoding.repetition_penalty,
        "presence_penalty": decoding.presence_penalty,
        "frequency_penalty": decoding.frequency_penalty,
        "max_tokens": decoding.max_tokens,
        "seed": decoding.seed,
        "stop": list(decoding.stop_sequences) if decoding.stop_sequences is not None else None,
    }
    return {k: v for k, v in values.items() if v is not None}


def resolve(
    request: Mapping[str, Any], expert: Mapping[str, Any], server: Mapping[str, Any] = SERVER_DEFAULTS
) -> dict[str, Resolved]:
    out: dict[str, Resolved] = {}
    for name in SAMPLING_FIELDS:
        if request.get(name) is not None:
            value, source = request[name], "request"
        elif expert.get(name) is not None:
            value, source = expert[name], "manifest"
        else:
            value, source = server.get(name, SERVER_DEFAULTS[name]), "server"
        out[name] = Resolved(list(value) if isinstance(value, list) else value, source)  # never share a list
    return out


def header_value(resolved: Mapping[str, Resolved]) -> str:
    """`X-Expert-Sampling`: compact ASCII JSON (headers cannot carry raw newlines)."""
    import json

    return json.dumps({k: v.to_json() for k, v in resolved.items()}, separators=(",", ":"), ensure_ascii=True)
