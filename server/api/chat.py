"""Chat completions: from a validated request to the engine and back in OpenAI's shape.

`plan_chat` does every check before the engine is involved (model, messages, lengths,
sampling, soft prompt, constraint); `complete` and `stream` run a planned request.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from server.api.protocol import ChatCompletionRequest
from server.engine.prompts import PromptBuilder
from server.engine.vllm_engine import Engine, GenerationRequest
from server.errors import APIError, InvalidRequest
from server.experts.registry import ExpertSnapshot
from server.manifest.sampling import Resolved, header_value, resolve

SOFT_PROMPT_OFF = "none"


@dataclass
class PlannedChat:
    request_id: str
    model: str
    expert: ExpertSnapshot | None
    generation: GenerationRequest
    resolved: dict[str, Resolved]
    soft_prompt: str | None
    prompt_tokens: int
    include_usage: bool
    created: int
    return_token_ids: bool = False

    def headers(self) -> dict[str, str]:
        h = {
            "X-Request-Id": self.request_id,
            "X-Expert-Sampling": header_value(self.resolved),
            "X-Expert-Version": self.expert.version if self.expert else "base",
        }
        if self.expert is not None:
            h["X-Expert-Soft-Prompt"] = self.soft_prompt or SOFT_PROMPT_OFF
        return h


def plan_chat(
    req: ChatCompletionRequest,
    expert: ExpertSnapshot | None,
    prompts: PromptBuilder,
    *,
    engine_max_len: int,
    server_defaults: dict[str, Any],
    embeds_for_all: bool,
) -> PlannedChat:
    """Every check and decision before the engine; `expert` None means the base model."""
    try:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="messages") from None
    token_ids = prompts.render(messages)

    soft_name: str | None = None
    soft_tensor = None
    if req.soft_prompt is not None and expert is None:
        raise InvalidRequest("soft_prompt applies to experts, not to the base model", param="soft_prompt")
    if expert is not None:
        if req.soft_prompt is None:
            soft_name = expert.default_soft_prompt
        elif req.soft_prompt != SOFT_PROMPT_OFF:
            if req.soft_prompt not in expert.soft_prompts:
                known = ", ".join(expert.soft_prompts) or "none"
                raise InvalidRequest(
                    f"expert {expert.name!r} has no soft prompt {req.soft_prompt!r} (has: {known})", param="soft_prompt"
                )
            soft_name = req.soft_prompt
        if soft_name is not None:
            soft_tensor = expert.soft_prompts[soft_name]

    context = min(expert.max_model_len or engine_max_len, engine_max_len) if expert else engine_max_len
    prompt_len = len(token_ids) + (int(soft_tensor.shape[0]) if soft_tensor is not None else 0)
    if prompt_len >= context:
        raise InvalidRequest(
            f"the prompt is {prompt_len} tokens; the context of {req.model!r} is {context} tokens",
            param="messages",
            code="context_length_exceeded",
        )

    resolved = resolve(req.sampling_fields(), expert.defaults if expert else {}, server_defaults)
    room = context - prompt_len
    max_tokens = resolved["max_tokens"]
    if max_tokens.value > room:
        if max_tokens.source == "request":
            raise InvalidRequest(
                f"max_tokens {max_tokens.value} + prompt {prompt_len} tokens exceeds the context of {context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        resolved["max_tokens"] = Resolved(room, max_tokens.source)

    structured = expert.structured if expert else None
    if req.response_format is not None:
        rf = req.response_format
        if rf.type == "text":
            structured = None
        elif rf.type == "json_object":
            structured = ("json_object", True)
        else:
            if rf.json_schema is None or rf.json_schema.schema_ is None:
                raise InvalidRequest("response_format json_schema needs json_schema.schema", param="response_format")
            structured = ("json", rf.json_schema.schema_)

    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    generation = GenerationRequest(
        request_id=request_id,
        prompt_token_ids=token_ids,
        sampling={k: v.value for k, v in resolved.items()},
        prompt_embeds=prompts.embeds(soft_tensor, token_ids) if soft_tensor is not None or embeds_for_all else None,
        lora=expert.lora if expert else None,
        structured=structured,
    )
    return PlannedChat(
        request_id=request_id,
        model=req.model,
        expert=expert,
        generation=generation,
        resolved=resolved,
        soft_prompt=soft_name,
        prompt_tokens=prompt_len,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        created=int(time.time()),
        return_token_ids=bool(req.return_token_ids),
    )


@dataclass
class Outcome:
    """What a finished request produced (for metrics and access logs)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    texts: list[str] | None = None
    first_token_at: float | None = None


async def complete(
    engine: Engine, plan: PlannedChat, is_disconnected: Callable[[], Any], outcome: Outcome
) -> dict[str, Any]:
    """Run to the end; a client that goes away cancels the generation (the engine aborts it)."""

    n = plan.generation.sampling["n"]
    texts, finish = [""] * n, [None] * n
    token_ids: list[list[int]] = [[] for _ in range(n)]

    async def run() -> None:
        async for step in engine.generate(plan.generation):
            for c in step.completions:
                if c.token_ids and outcome.first_token_at is None:
                    outcome.first_token_at = time.perf_counter()
                texts[c.index] += c.text
                token_ids[c.index] += c.token_ids
                finish[c.index] = c.finish_reason or finish[c.index]

    task = asyncio.create_task(run())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                break
            if await is_disconnected():
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()  # closes the engine's generator: vLLM aborts the request
    task.result()
    completion_tokens = sum(len(t) for t in token_ids)
    outcome.prompt_tokens = plan.prompt_tokens
    outcome.completion_tokens = completion_tokens
    outcome.texts = texts
    choices = []
    for i in range(n):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": texts[i]},
            "finish_reason": finish[i],
            "logprobs": None,
        }
        if plan.return_token_ids:
            choice["token_ids"] = token_ids[i]
        choices.append(choice)
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": plan.prompt_tokens + completion_tokens,
        },
    }


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def stream(engine: Engine, plan: PlannedChat, outcome: Outcome) -> AsyncIterator[bytes]:
    """SSE chunks; an error after the first byte is sent as one error event, then the stream ends.

    When the client disconnects, the server stops iterating this generator; closing it
    closes the engine's generator, and vLLM aborts the request.
    """
    base = {"id": plan.request_id, "object": "chat.completion.chunk", "created": plan.created, "model": plan.model}
    n = plan.generation.sampling["n"]
    texts = [""] * n
    tokens = [0] * n
    yield _sse(
        {
            **base,
            "choices": [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
                for i in range(n)
            ],
        }
    )
    try:
        async for step in engine.generate(plan.generation):
            chunks = []
            for c in step.completions:
                if c.token_ids and outcome.first_token_at is None:
                    outcome.first_token_at = time.perf_counter()
                texts[c.index] += c.text
                tokens[c.index] += len(c.token_ids)
                if c.text or c.finish_reason:
                    delta = {"content": c.text} if c.text else {}
                    chunks.append(
                        {"index": c.index, "delta": delta, "finish_reason": c.finish_reason, "logprobs": None}
                    )
            if chunks:
                yield _sse({**base, "choices": chunks})
    except APIError as exc:
        yield _sse(exc.body())
        yield b"data: [DONE]\n\n"
        raise  # Observation.wrap_stream records the status and ends the stream
    outcome.prompt_tokens = plan.prompt_tokens
    outcome.completion_tokens = sum(tokens)
    outcome.texts = texts
    if plan.include_usage:
        yield _sse(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": plan.prompt_tokens,
                    "completion_tokens": sum(tokens),
                    "total_tokens": plan.prompt_tokens + sum(tokens),
                },
            }
        )
    yield b"data: [DONE]\n\n"
