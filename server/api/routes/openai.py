"""The OpenAI-compatible routes: `/v1/models`, `/v1/models/{id}`, `/v1/chat/completions` and
`/v1/completions`.

Chat and text completions share one path (`_generate`): keys, body, the field policy
(server/api/fields.py: nulls, ignored fields named in `X-Expert-Ignored`, one 400 for every
unsupported or unknown field), the expert's lease, planning, observation. A request on an expert leases the expert's current version (`Registry.lease`) for its
whole life: to the last chunk of a stream, so a reload meanwhile removes the old adapter only
after the request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from server.api import chat, completions
from server.api.auth import Role
from server.api.chat import Outcome
from server.api.deps import ClientKey, Ready, ServiceDep, authorize
from server.api.fields import Kind, invalid, request_error, screen
from server.api.observation import Observation
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.errors import APIError, InvalidRequest, NotFound, PayloadTooLarge, RequestTimeout
from server.experts.registry import ExpertSnapshot, UnknownExpert
from server.manifest.jsontext import JSONLimitError, loads_bounded

router = APIRouter()


@dataclass(frozen=True)
class _Endpoint:
    kind: Kind
    request: type[ChatCompletionRequest] | type[CompletionRequest]
    plan: Callable[..., Any]
    complete: Callable[..., Any]
    stream: Callable[..., Any]


CHAT = _Endpoint("chat", ChatCompletionRequest, chat.plan_chat, chat.complete, chat.stream)
COMPLETIONS = _Endpoint(
    "completions", CompletionRequest, completions.plan_completion, completions.complete, completions.stream
)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, at most `limit` bytes (413), complete within `timeout` seconds (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(f"request body over {limit} bytes")
    except TimeoutError:
        raise RequestTimeout(
            f"the request body was not complete within {timeout:g} s", headers={"Connection": "close"}
        ) from None
    return bytes(body)


def _base_card(base: str) -> dict[str, Any]:
    return {
        "id": base,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "expert-gateway",
        "root": base,
        "parent": None,
    }


def _expert_card(e: ExpertSnapshot, base: str) -> dict[str, Any]:
    return {
        "id": e.name,
        "object": "model",
        "created": int(e.loaded_at),
        "owned_by": "expert-gateway",
        "root": base,
        "parent": base,
        "version": e.version,
    }


@router.get("/v1/models", dependencies=[ClientKey])
async def models(service: ServiceDep, state: Ready) -> dict[str, Any]:
    base = service.settings.served_model_name
    data = [_base_card(base), *(_expert_card(e, base) for e in state.registry.all())]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}", dependencies=[ClientKey])
async def model(model_id: str, service: ServiceDep, state: Ready) -> dict[str, Any]:
    base = service.settings.served_model_name
    if model_id == base:
        return _base_card(base)
    found = state.registry.get(model_id)
    if found is None:
        raise NotFound(f"the model {model_id!r} does not exist", param="model", code="model_not_found")
    return _expert_card(found, base)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, service: ServiceDep) -> Response:
    return await _generate(request, service, CHAT)


@router.post("/v1/completions")
async def text_completions(request: Request, service: ServiceDep) -> Response:
    return await _generate(request, service, COMPLETIONS)


async def _generate(request: Request, service: ServiceDep, endpoint: _Endpoint) -> Response:
    # keys, body and readiness are checked here rather than as dependencies, so that every
    # refusal is observed (metrics and access log) like any other outcome
    settings = service.settings
    obs = Observation(service.metrics, settings.log_json, residency=service.residency)
    async with contextlib.AsyncExitStack() as held:  # the expert's lease, when there is one
        try:
            authorize(request, Role.CLIENT)
            body = await _read_body(request, settings.max_body_bytes, settings.read_timeout)
            try:
                payload = loads_bounded(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
            except JSONLimitError as exc:
                raise InvalidRequest(f"the body is refused: {exc}") from None
            if not isinstance(payload, dict):
                raise InvalidRequest("the body must be a JSON object")
            obs.attribute(payload.get("model"), service.registry_if_ready(), settings.served_model_name)
            screened = screen(payload, endpoint.kind)
            try:
                req = endpoint.request.model_validate(screened.body)
            except ValidationError as err:
                raise invalid(screened, err) from None
            refused = request_error(screened)
            if refused is not None:
                raise refused
            state = service.ready_state()
            expert: ExpertSnapshot | None = None
            if req.model != settings.served_model_name:
                try:
                    expert = await held.enter_async_context(state.registry.lease(req.model))
                except UnknownExpert:
                    raise NotFound(
                        f"the model {req.model!r} does not exist", param="model", code="model_not_found"
                    ) from None
                obs.expert, obs.version = expert.name, expert.version
            plan = endpoint.plan(
                req,
                expert,
                state.prompts,
                engine_max_len=state.engine_max_model_len,
                server_defaults=service.server_defaults,
                embeds_for_all=settings.embeds_for_all_prompts,
                **({"tool_parser": state.tool_parser} if endpoint is CHAT else {}),
            )
        except APIError as exc:
            obs.finish(exc.status)
            raise
        obs.bind(plan)
        outcome = Outcome()

        if req.stream:
            lease = held.pop_all()  # the stream holds the lease until its last chunk

            async def chunks() -> AsyncIterator[bytes]:
                async with lease:
                    async for chunk in obs.wrap_stream(endpoint.stream(state.engine, plan, outcome), outcome):
                        yield chunk

            return StreamingResponse(
                chunks(),
                media_type="text/event-stream",
                headers={**plan.headers(), **screened.header(), "Cache-Control": "no-cache"},
            )
        status = 500
        try:
            body_out = await endpoint.complete(state.engine, plan, request.is_disconnected, outcome)
            status = 200
        except APIError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            obs.finish(status, outcome if status == 200 else None)
    return JSONResponse(body_out, headers={**plan.headers(), **screened.header()})
