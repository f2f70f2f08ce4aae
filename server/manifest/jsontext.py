"""Bounded JSON decoding, for every JSON text the server reads that someone else wrote:
manifests, `adapter_config.json` and request bodies.

`loads_bounded` refuses, with a `JSONLimitError` (a `ValueError`), a text nested deeper than
`max_depth` arrays/objects, before the recursive decoder sees it: Python's `json` raises
`RecursionError` (not a `JSONDecodeError`) a little under 1,000 levels, and every later
recursive walk (pydantic, schema checks, vLLM's structured outputs) has limits of its own.
A lone UTF-16 surrogate (`"\\ud800"`) decodes to a `str` that cannot be encoded as UTF-8;
with `allow_surrogates=False` such a text is refused too.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Deeper than any real manifest, request or JSON schema; below vLLM's structured-output limit (64).
MAX_JSON_DEPTH = 48

_SURROGATE = re.compile(r"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class JSONLimitError(ValueError):
    """A JSON text over a limit (depth) or holding text that is not valid Unicode."""


def json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in `text` (strings skipped); iterative, any size."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif ch in "]}":
            depth -= 1
    return deepest


def _check_depth(text: str, max_depth: int) -> None:
    # cheap bound first: a text with few brackets cannot be deep
    if text.count("[") + text.count("{") <= max_depth:
        return
    if json_depth(text) > max_depth:
        raise JSONLimitError(f"JSON nested deeper than {max_depth} levels")


def has_lone_surrogate(value: Any) -> bool:
    """True when any string (key or value) in a decoded JSON value holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads_bounded(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, allow_surrogates: bool = False) -> Any:
    """`json.loads` with a depth bound (and, by default, no lone surrogates).

    Raises `json.JSONDecodeError` for text that is not JSON, `JSONLimitError` over a limit,
    `UnicodeDecodeError` for bytes that are not UTF-8.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    _check_depth(text, max_depth)
    try:
        value = json.loads(text)
    except RecursionError:  # unreachable after the depth check; kept as a last guard
        raise JSONLimitError(f"JSON nested deeper than {max_depth} levels") from None
    if not allow_surrogates and _SURROGATE.search(text) and has_lone_surrogate(value):
        raise JSONLimitError("JSON text holds a lone UTF-16 surrogate (not valid Unicode)")
    return value
