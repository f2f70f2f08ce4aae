"""Text completions (`POST /v1/completions`): a prompt, as text or token ids, continued.

The same experts, sampling sources, soft prompts, constraints, headers, errors and metrics
as chat: `plan_completion` turns the prompt into token ids and hands them to the planning
chat uses (server.api.chat.plan_generation); `complete` and `stream` answer in OpenAI's
`text_completion` shape. One prompt per request (OpenAI's lists of several prompts are
refused), `echo` and `suffix` are not supported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from server.api.chat import Outcome, PlannedChat, collect, plan_generation, stream_choices, usage
from server.api.logprobs import completion_logprobs
from server.api.protocol import CompletionRequest
from server.engine.prompts import PromptBuilder
from server.engine.vllm_engine import Completion, Engine
from server.errors import InvalidRequest
from server.experts.registry import ExpertSnapshot


def prompt_token_ids(prompt: str | list[str] | list[int] | list[list[int]], prompts: PromptBuilder) -> list[int]:
    """The token ids of the request's one prompt (text is tokenised without special tokens)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise InvalidRequest("one prompt per request: a list of several prompts is not supported", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = list(prompts.tokenizer.encode(prompt, add_special_tokens=False))
    else:
        vocab = len(prompts.tokenizer)
        ids = list(prompt)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequest(f"prompt: token id {bad} is outside the vocabulary (0..{vocab - 1})", param="prompt")
    if not ids:
        raise InvalidRequest("the prompt is empty", param="prompt")
    return ids


def plan_completion(
    req: CompletionRequest,
    expert: ExpertSnapshot | None,
    prompts: PromptBuilder,
    *,
    engine_max_len: int,
    server_defaults: dict[str, Any],
    embeds_for_all: bool,
) -> PlannedChat:
    """Every check and decision before the engine; `expert` None means the base model."""
    token_ids = prompt_token_ids(req.prompt, prompts)
    return plan_generation(
        req,
        token_ids,
        expert,
        prompts,
        engine_max_len=engine_max_len,
        server_defaults=server_defaults,
        embeds_for_all=embeds_for_all,
        id_prefix="cmpl",
        param="prompt",
        source_text=lambda: str(prompts.tokenizer.decode(token_ids, skip_special_tokens=True)),
    )


async def complete(
    engine: Engine, plan: PlannedChat, is_disconnected: Callable[[], Any], outcome: Outcome
) -> dict[str, Any]:
    results = await collect(engine, plan, is_disconnected, outcome)
    choices = []
    for i, r in enumerate(results):
        choice: dict[str, Any] = {
            "index": i,
            "text": r.text,
            "logprobs": completion_logprobs(r.logprobs, plan.logprobs) if plan.logprobs is not None else None,
            "finish_reason": r.finish_reason,
        }
        if plan.return_token_ids:
            choice["token_ids"] = r.token_ids
        choices.append(choice)
    return {
        "id": plan.request_id,
        "object": "text_completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": usage(plan.prompt_tokens, outcome.completion_tokens),
    }


async def stream(engine: Engine, plan: PlannedChat, outcome: Outcome) -> AsyncIterator[bytes]:
    """`text_completion` chunks of text (see server.api.chat.stream_choices for the rest)."""
    base = {"id": plan.request_id, "object": "text_completion", "created": plan.created, "model": plan.model}

    def choices_of(c: Completion, offset: int) -> list[dict[str, Any]]:
        if not (c.text or c.finish_reason or c.token_ids):
            return []
        logprobs = completion_logprobs(c.logprobs or [], plan.logprobs, offset) if plan.logprobs is not None else None
        return [{"index": c.index, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish_reason}]

    async for chunk in stream_choices(engine, plan, outcome, base, choices_of):
        yield chunk
