"""Chat completions: from a validated request to the engine and back in OpenAI's shape.

`plan_chat` does every check before the engine is involved (model, messages, tools, lengths,
sampling, soft prompt, constraint, logit bias, logprobs); `complete` and `stream` run a
planned request. `plan_generation` and `collect` are shared with text completions
(server/api/completions.py). Tool calling is planned in server/api/tools.py: a named
function or "required" constrains the answer to the tool's JSON schema.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from server.api.logprobs import chat_logprobs
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.api.tools import (
    TemplateSupport,
    ToolPlan,
    message_with_calls,
    plan_tools,
    probe_template,
    template_messages,
    tool_call,
)
from server.engine.prompts import PromptBuilder
from server.engine.vllm_engine import Completion, Engine, GenerationRequest, ToolCallParser
from server.errors import APIError, InvalidRequest
from server.experts.registry import ExpertSnapshot
from server.manifest import prompt_formats
from server.manifest.grammar import json_schema_problem
from server.manifest.sampling import (
    Grammar,
    JsonObject,
    JsonSchema,
    ResolvedSampling,
    StructuredOutput,
    header_value,
    resolve,
)

SOFT_PROMPT_OFF = "none"
NO_TOOLS = ToolPlan("none")


@dataclass
class PlannedChat:
    request_id: str
    model: str
    expert: ExpertSnapshot | None
    generation: GenerationRequest
    resolved: ResolvedSampling
    soft_prompt: str | None
    prompt_tokens: int
    include_usage: bool
    created: int
    return_token_ids: bool = False
    tools: ToolPlan = NO_TOOLS
    logprobs: int | None = None  # alternatives per token; None: no log probabilities

    def headers(self) -> dict[str, str]:
        h = {
            "X-Request-Id": self.request_id,
            "X-Expert-Sampling": header_value(self.resolved),
            "X-Expert-Version": self.expert.version if self.expert else "base",
        }
        if self.expert is not None:
            h["X-Expert-Soft-Prompt"] = self.soft_prompt or SOFT_PROMPT_OFF
        return h


AUTO_REFUSED = (
    "tool_choice 'auto' (the default when tools are given) lets the model choose between text and tool calls; "
    "this server reads no tool calls out of free text (no tool parser is set: EXPERT_TOOL_PARSER): name a "
    "function in tool_choice, or use 'required' (or 'none')"
)


def _auto_tools(tools: ToolPlan, parser: ToolCallParser | None, prompts: PromptBuilder) -> ToolPlan:
    """tool_choice "auto": the model's own syntax for calls, read by the server's tool parser."""
    if parser is None:
        raise InvalidRequest(AUTO_REFUSED, param="tool_choice")
    if not _template_support(prompts).tools:
        raise InvalidRequest(
            "tool_choice 'auto' needs a chat template that shows the model its tools; this model's template "
            "renders no tools: name a function in tool_choice, or use 'required' (or 'none')",
            param="tool_choice",
        )
    offered = tools.template_tools() or []

    def read_calls(text: str) -> tuple[str | None, list[tuple[str, str]]]:
        answer = parser.parse(text, offered)
        return answer.content, answer.calls

    return replace(tools, parser=read_calls)


@functools.lru_cache(maxsize=4)
def _template_support(prompts: PromptBuilder) -> TemplateSupport:
    """What the base model's chat template does with tools: probed once per PromptBuilder
    (one per server), not per request."""
    tokenizer: Any = prompts.tokenizer

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return str(tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True))

    return probe_template(render)


def plan_chat(
    req: ChatCompletionRequest,
    expert: ExpertSnapshot | None,
    prompts: PromptBuilder,
    *,
    engine_max_len: int,
    server_defaults: dict[str, Any],
    embeds_for_all: bool,
    tool_parser: ToolCallParser | None = None,
) -> PlannedChat:
    """Every check and decision before the engine; `expert` None means the base model."""
    tools = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
    if tools.mode == "auto":
        tools = _auto_tools(tools, tool_parser, prompts)
    try:
        messages = [m.template_input() for m in req.messages]
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="messages") from None
    template_tools = tools.template_tools()
    support = None
    if template_tools is not None or any(m.get("tool_calls") for m in messages):
        support = _template_support(prompts)
    template, capabilities = prompt_format_of(expert)
    token_ids = prompts.render(
        template_messages(messages, support),
        template,
        capabilities,
        tools=template_tools if support is not None and support.tools else None,
    )
    return plan_generation(
        req,
        token_ids,
        expert,
        prompts,
        engine_max_len=engine_max_len,
        server_defaults=server_defaults,
        embeds_for_all=embeds_for_all,
        tools=tools,
        source_text=lambda: "\n".join(str(m["content"]) for m in messages if m["role"] == "user" and m.get("content")),
    )


def prompt_format_of(expert: ExpertSnapshot | None) -> tuple[str | None, list[str] | None]:
    """The expert's prompt format (`base_models[].prompt_template`, rendered by
    server.manifest.prompt_formats, as the trainer renders) and capabilities; None: the
    tokenizer's own chat template."""
    if expert is None:
        return None, None
    bases = expert.manifest.bases()
    return (bases[0][0].prompt_template if bases else None), expert.manifest.capabilities


def _logit_bias(bias: dict[str, float] | None, prompts: PromptBuilder) -> dict[int, float] | None:
    """`logit_bias` with token ids checked against the vocabulary."""
    if not bias:
        return None
    vocab = len(prompts.tokenizer)
    out: dict[int, float] = {}
    for key, value in bias.items():
        token = int(key) if key.isdigit() else -1
        if not 0 <= token < vocab:
            raise InvalidRequest(
                f"logit_bias: {key[:20]!r} is not a token id of this model (0..{vocab - 1})", param="logit_bias"
            )
        out[token] = float(value)
    return out


def plan_generation(
    req: ChatCompletionRequest | CompletionRequest,
    token_ids: list[int],
    expert: ExpertSnapshot | None,
    prompts: PromptBuilder,
    *,
    engine_max_len: int,
    server_defaults: dict[str, Any],
    embeds_for_all: bool,
    tools: ToolPlan = NO_TOOLS,
    id_prefix: str = "chatcmpl",
    param: str = "messages",
    source_text: Callable[[], str] = str,
) -> PlannedChat:
    """The checks and decisions chat and text completions share, from the prompt's token ids on:
    soft prompt, context, sampling, constraint, logit bias, logprobs. `source_text` gives the text
    an expert's grammar may copy from (its rule `input-span`): the user's messages, or the prompt;
    it is called only for such an expert."""
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
            param=param,
            code="context_length_exceeded",
        )

    resolved = resolve(req.sampling_fields(), expert.defaults if expert else {}, server_defaults)
    format_stops = prompt_formats.stop_strings(prompt_format_of(expert)[0])
    if format_stops:  # the format's end of answer (hivellm's legacy chatml: <|end|>) always ends it
        stops = list(resolved["stop"].value or [])
        resolved = resolved.with_value("stop", stops + [s for s in format_stops if s not in stops])
    room = context - prompt_len
    max_tokens = resolved["max_tokens"]
    if max_tokens.value > room:
        if max_tokens.source == "request":
            raise InvalidRequest(
                f"max_tokens {max_tokens.value} + prompt {prompt_len} tokens exceeds the context of {context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        resolved = resolved.with_value("max_tokens", room)

    structured: StructuredOutput | None = expert.structured if expert else None
    rf = getattr(req, "response_format", None)
    if rf is not None:
        if rf.type == "text":
            structured = None
        elif rf.type == "json_object":
            structured = JsonObject()
        else:
            if rf.json_schema is None or rf.json_schema.schema_ is None:
                raise InvalidRequest("response_format json_schema needs json_schema.schema", param="response_format")
            problem = json_schema_problem(rf.json_schema.schema_)
            if problem is not None:
                raise InvalidRequest(f"response_format.json_schema.schema: {problem}", param="response_format")
            structured = JsonSchema(rf.json_schema.schema_)
    if tools.constrained:
        if rf is not None and rf.type != "text":
            raise InvalidRequest(
                "response_format and tool_choice both constrain the answer; send one of them", param="response_format"
            )
        if structured is not None:
            raise InvalidRequest(
                f"expert {expert.name if expert else req.model!r} constrains its answers with a grammar of its own "
                f"({structured.kind}), so it cannot answer with tool calls",
                param="tools",
            )
        structured = JsonSchema(tools.schema or {})
    elif tools.answers_with_calls and structured is not None:
        source = "response_format" if rf is not None and rf.type != "text" else f"the grammar of expert {req.model!r}"
        raise InvalidRequest(
            f"{source} constrains the answer ({structured.kind}), so the model cannot write tool calls "
            "under tool_choice 'auto'",
            param="tool_choice",
        )

    if isinstance(structured, Grammar) and structured.copies_input:  # the expert's own grammar
        try:
            structured = structured.for_text(source_text())
        except ValueError as exc:
            raise InvalidRequest(
                f"expert {req.model!r} copies values of its answer from the text: {exc}", param=param
            ) from None

    request_id = f"{id_prefix}-{uuid.uuid4().hex}"
    generation = GenerationRequest(
        request_id=request_id,
        prompt_token_ids=token_ids,
        sampling=resolved.sampling,
        prompt_embeds=prompts.embeds(soft_tensor, token_ids) if soft_tensor is not None or embeds_for_all else None,
        lora=expert.lora if expert else None,
        structured=structured,
        logprobs=req.logprobs_count(),
        logit_bias=_logit_bias(req.logit_bias, prompts),
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
        tools=tools,
        logprobs=req.logprobs_count(),
    )


@dataclass
class Outcome:
    """What a finished request produced (for metrics and access logs)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    texts: list[str] | None = None
    first_token_at: float | None = None


@dataclass
class ChoiceResult:
    """One choice of a finished generation."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[Any] = field(default_factory=list)  # TokenLogprob per token, when asked for


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def collect(
    engine: Engine, plan: PlannedChat, is_disconnected: Callable[[], Any], outcome: Outcome
) -> list[ChoiceResult]:
    """Run to the end; a client that goes away cancels the generation (the engine aborts it)."""
    results = [ChoiceResult() for _ in range(plan.generation.sampling.n)]

    async def run() -> None:
        async for step in engine.generate(plan.generation):
            for c in step.completions:
                if c.token_ids and outcome.first_token_at is None:
                    outcome.first_token_at = time.perf_counter()
                r = results[c.index]
                r.text += c.text
                r.token_ids += c.token_ids
                r.finish_reason = c.finish_reason or r.finish_reason
                r.logprobs += c.logprobs or []

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
    outcome.prompt_tokens = plan.prompt_tokens
    outcome.completion_tokens = sum(len(r.token_ids) for r in results)
    outcome.texts = [r.text for r in results]
    return results


async def complete(
    engine: Engine, plan: PlannedChat, is_disconnected: Callable[[], Any], outcome: Outcome
) -> dict[str, Any]:
    results = await collect(engine, plan, is_disconnected, outcome)
    choices = []
    for i, r in enumerate(results):
        message: dict[str, Any] = {"role": "assistant", "content": r.text}
        finish = r.finish_reason
        if plan.tools.answers_with_calls:
            message, finish = message_with_calls(plan.tools, r.text, finish)
        choice: dict[str, Any] = {
            "index": i,
            "message": message,
            "finish_reason": finish,
            "logprobs": chat_logprobs(r.logprobs, plan.logprobs) if plan.logprobs is not None else None,
        }
        if plan.return_token_ids:
            choice["token_ids"] = r.token_ids
        choices.append(choice)
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": usage(plan.prompt_tokens, outcome.completion_tokens),
    }


def sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _ToolStream:
    """The `tool_calls` deltas of one streamed choice whose answer may be tool calls.

    A named function streams its arguments as they come (the first delta carries the call's
    id and name); "required" answers are an array of calls, sent whole when complete; "auto"
    answers are sent whole when complete, as the tool parser reads them (text or calls)."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.text = ""
        self.started = False

    def delta(self, text: str) -> dict[str, Any] | None:
        self.text += text
        if self.plan.mode != "named":
            return None
        if not self.started:
            self.started = True
            call = tool_call(self.plan.name or "", text, index=0)
            return {"tool_calls": [call]}
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]} if text else None

    def finish(self, finish_reason: str | None) -> tuple[dict[str, Any] | None, str | None]:
        if self.plan.mode == "named":
            return None, finish_reason
        message, finish = message_with_calls(self.plan, self.text, finish_reason)
        if message.get("tool_calls"):
            delta = {"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]}
            if message["content"]:
                delta = {"content": message["content"], **delta}
            return delta, finish
        return ({"content": message["content"]} if message["content"] else None), finish


async def stream_choices(
    engine: Engine,
    plan: PlannedChat,
    outcome: Outcome,
    base: dict[str, Any],
    choices_of: Callable[[Completion, int], list[dict[str, Any]]],
) -> AsyncIterator[bytes]:
    """The part of a stream that chat and text completions share.

    Runs the generation and sends one chunk per engine step with the choices that
    `choices_of(completion, offset)` makes of it (`offset`: the length of the choice's text
    before this step); records the first token's time and the token counts in `outcome`;
    ends with the usage chunk when asked, then `[DONE]`. An error after the first byte is
    sent as one error event, then `[DONE]`. When the client disconnects, the server stops
    iterating this generator; closing it closes the engine's generator, and vLLM aborts
    the request.
    """
    n = plan.generation.sampling.n
    texts = [""] * n
    tokens = [0] * n
    try:
        async for step in engine.generate(plan.generation):
            chunks = []
            for c in step.completions:
                if c.token_ids and outcome.first_token_at is None:
                    outcome.first_token_at = time.perf_counter()
                offset = len(texts[c.index])
                texts[c.index] += c.text
                tokens[c.index] += len(c.token_ids)
                chunks += choices_of(c, offset)
            if chunks:
                yield sse({**base, "choices": chunks})
    except APIError as exc:
        yield sse(exc.body())
        yield b"data: [DONE]\n\n"
        raise  # Observation.wrap_stream records the status and ends the stream
    outcome.prompt_tokens = plan.prompt_tokens
    outcome.completion_tokens = sum(tokens)
    outcome.texts = texts
    if plan.include_usage:
        yield sse({**base, "choices": [], "usage": usage(plan.prompt_tokens, sum(tokens))})
    yield b"data: [DONE]\n\n"


async def stream(engine: Engine, plan: PlannedChat, outcome: Outcome) -> AsyncIterator[bytes]:
    """Chat completion chunks: the assistant role first, then content or tool-call deltas."""
    base = {"id": plan.request_id, "object": "chat.completion.chunk", "created": plan.created, "model": plan.model}
    n = plan.generation.sampling.n
    calls = [_ToolStream(plan.tools) for _ in range(n)] if plan.tools.answers_with_calls else None

    def choices_of(c: Completion, offset: int) -> list[dict[str, Any]]:
        chunks = []
        finish = c.finish_reason
        logprobs = chat_logprobs(c.logprobs or [], plan.logprobs) if plan.logprobs is not None else None
        if calls is not None:
            delta = calls[c.index].delta(c.text) or {}
            if finish is not None:
                last, finish = calls[c.index].finish(finish)
                if last is not None:
                    if delta:
                        chunks.append({"index": c.index, "delta": delta, "finish_reason": None, "logprobs": None})
                    delta = last
        else:
            delta = {"content": c.text} if c.text else {}
        if delta or finish or (logprobs is not None and c.token_ids):
            chunks.append({"index": c.index, "delta": delta, "finish_reason": finish, "logprobs": logprobs})
        return chunks

    yield sse(
        {
            **base,
            "choices": [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
                for i in range(n)
            ],
        }
    )
    async for chunk in stream_choices(engine, plan, outcome, base, choices_of):
        yield chunk
