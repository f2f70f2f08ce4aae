"""Log probabilities in OpenAI's shapes, from what the engine reports per generated token.

The engine reports, for each generated token, its id, text, log probability and the most
likely tokens at that position in rank order (server.engine.vllm_engine.TokenLogprob).
vLLM's log probabilities are those of the model's output distribution before any sampling
setting (temperature, penalties, bias, constraints) is applied.

- chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": null}`;
- completions: `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`.

`-inf` (a token the model rules out) is reported as -9999.0, as JSON has no infinity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

FLOOR = -9999.0
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; completions allow 5


class TopToken(Protocol):
    @property
    def token(self) -> str: ...
    @property
    def logprob(self) -> float: ...


class TokenLogprobLike(TopToken, Protocol):
    @property
    def top(self) -> Sequence[TopToken]: ...


def _lp(value: float) -> float:
    return max(float(value), FLOOR)


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_content(tokens: Sequence[TokenLogprobLike], top: int) -> list[dict[str, Any]]:
    """The `content` entries of chat logprobs for these tokens, `top` alternatives each."""
    return [
        {
            "token": t.token,
            "logprob": _lp(t.logprob),
            "bytes": _bytes(t.token),
            "top_logprobs": [
                {"token": alt.token, "logprob": _lp(alt.logprob), "bytes": _bytes(alt.token)} for alt in t.top[:top]
            ],
        }
        for t in tokens
    ]


def chat_logprobs(tokens: Sequence[TokenLogprobLike], top: int) -> dict[str, Any]:
    return {"content": chat_content(tokens, top), "refusal": None}


def completion_logprobs(tokens: Sequence[TokenLogprobLike], top: int, text_offset: int = 0) -> dict[str, Any]:
    """Completions' logprobs; `text_offset` is where the first token starts in the choice's text."""
    offsets = []
    at = text_offset
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [_lp(t.logprob) for t in tokens],
        "top_logprobs": [{alt.token: _lp(alt.logprob) for alt in t.top[:top]} for t in tokens] if top else None,
        "text_offset": offsets,
    }
