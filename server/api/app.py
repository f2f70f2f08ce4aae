"""The FastAPI app: thin routes over the gateway (gateway.py) and the chat service (chat.py).

`create_app(settings, engine_factory=None)` builds an app that owns its gateway; nothing
lives in module globals, so tests can build several apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api.auth import KeyRing, Role
from server.api.chat import Outcome, complete, plan_chat, stream
from server.api.observation import Observation
from server.api.protocol import ChatCompletionRequest
from server.api.service import EngineFactory, Gateway
from server.errors import APIError, InvalidRequest, MethodNotAllowed, NotFound, NotReady, PayloadTooLarge
from server.manifest.sampling import SERVER_DEFAULTS, resolve
from server.manifest.schema import is_plain_name
from server.settings import Settings

log = logging.getLogger("expert_gateway.http")


def _error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_error(err: ValidationError | RequestValidationError) -> InvalidRequest:
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    return InvalidRequest(f"{param}: {msg}" if param else msg, param=param)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
    return bytes(body)


def create_app(settings: Settings, engine_factory: EngineFactory | None = None) -> FastAPI:
    gw = Gateway(settings, engine_factory=engine_factory)
    keys = KeyRing.from_settings(settings.api_keys, settings.admin_keys, settings.keys_file)
    server_defaults = {**SERVER_DEFAULTS, "max_tokens": settings.default_max_tokens}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(gw.start())
        try:
            yield
        finally:
            starting.cancel()
            if gw.watcher is not None:
                gw.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            await asyncio.to_thread(gw.shutdown)

    app = FastAPI(title="expert-gateway", version="0.1.0", lifespan=lifespan)
    app.state.gateway = gw

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error_response(NotFound(f"no route {request.method} {request.url.path}"))
        if exc.status_code == 405:
            return _error_response(MethodNotAllowed(f"method {request.method} not allowed on {request.url.path}"))
        log.warning("HTTP %s on %s %s: %s", exc.status_code, request.method, request.url.path, exc.detail)
        return _error_response(InvalidRequest(str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(APIError("internal error"))

    # ------------------------------------------------------------------ health

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if gw.ready:
            assert gw.registry is not None
            return JSONResponse(
                {
                    "status": "ready",
                    "experts": [e.name for e in gw.registry.all()],
                    "not_loaded": gw.registry.not_loaded,
                }
            )
        reason = gw.startup_error or ("engine died" if gw.engine and gw.engine.dead else "starting")
        return _error_response(NotReady(f"not ready: {reason}"))

    # ------------------------------------------------------------------ models and experts

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        keys.require(request.headers.get("authorization"), Role.CLIENT)
        _, registry, _ = gw.require_ready()
        base = settings.served_model_name
        created = int(time.time())
        data = [
            {
                "id": base,
                "object": "model",
                "created": created,
                "owned_by": "expert-gateway",
                "root": base,
                "parent": None,
            }
        ]
        for e in registry.all():
            data.append(
                {
                    "id": e.name,
                    "object": "model",
                    "created": int(e.loaded_at),
                    "owned_by": "expert-gateway",
                    "root": base,
                    "parent": base,
                    "version": e.version,
                }
            )
        return {"object": "list", "data": data}

    @app.get("/experts")
    async def experts(request: Request) -> dict[str, Any]:
        keys.require(request.headers.get("authorization"), Role.CLIENT)
        _, registry, _ = gw.require_ready()
        return {
            "experts": [{"name": e.name, "version": e.version, "status": "loaded"} for e in registry.all()],
            "not_loaded": [
                {"name": n, "status": "not_loaded", "reasons": r} for n, r in sorted(registry.not_loaded.items())
            ],
        }

    @app.get("/experts/{name}")
    async def expert(name: str, request: Request) -> dict[str, Any]:
        keys.require(request.headers.get("authorization"), Role.CLIENT)
        if not is_plain_name(name):
            raise InvalidRequest("an expert name is a plain name, not a path", param="name")
        _, registry, _ = gw.require_ready()
        e = registry.get(name)
        if e is None:
            if name in registry.not_loaded:
                return {"name": name, "status": "not_loaded", "reasons": registry.not_loaded[name]}
            raise NotFound(f"no expert {name!r}", param="name")
        resolved = {k: v.to_json() for k, v in resolve({}, e.defaults, server_defaults).items()}
        return {
            **e.summary(),
            "status": "loaded",
            "decoding": resolved,
            "hints": [h.to_json() for h in e.hints],
            "fields": [f.to_json() for f in e.fates],
        }

    # ------------------------------------------------------------------ chat

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        obs = Observation(gw.metrics, settings.log_json)
        expert = None
        try:
            keys.require(request.headers.get("authorization"), Role.CLIENT)
            body = await _read_body(request, settings.max_body_bytes)
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
            if not isinstance(payload, dict):
                raise InvalidRequest("the body must be a JSON object")
            obs.attribute(payload.get("model"), gw.registry, settings.served_model_name)
            try:
                req = ChatCompletionRequest.model_validate(payload)
            except ValidationError as err:
                raise _validation_error(err) from None
            engine, registry, prompts = gw.require_ready()
            if req.model != settings.served_model_name:
                expert = registry.acquire(req.model)
                if expert is None:
                    raise NotFound(f"the model {req.model!r} does not exist", param="model", code="model_not_found")
                obs.expert, obs.version = expert.name, expert.version
            plan = plan_chat(
                req,
                expert,
                prompts,
                engine_max_len=gw.engine_max_model_len,
                server_defaults=server_defaults,
                embeds_for_all=settings.embeds_for_all_prompts,
            )
        except APIError as exc:
            if expert is not None:
                await gw.registry.release(expert)
            obs.finish(exc.status)
            raise
        obs.bind(plan)
        outcome = Outcome()

        async def released(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            try:
                async for chunk in obs.wrap_stream(chunks, outcome):
                    yield chunk
            finally:
                if expert is not None:
                    await registry.release(expert)

        if req.stream:
            return StreamingResponse(
                released(stream(engine, plan, outcome)),
                media_type="text/event-stream",
                headers={**plan.headers(), "Cache-Control": "no-cache"},
            )
        status = 500
        try:
            body_out = await complete(engine, plan, request.is_disconnected, outcome)
            status = 200
        except APIError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            obs.finish(status, outcome if status == 200 else None)
            if expert is not None:
                await registry.release(expert)
        return JSONResponse(body_out, headers=plan.headers())

    # ------------------------------------------------------------------ lifecycle

    @app.post("/experts/{name}/reload")
    async def reload_expert(name: str, request: Request) -> dict[str, Any]:
        keys.require(request.headers.get("authorization"), Role.ADMIN)
        gw.require_ready()
        assert gw.lifecycle is not None
        return await gw.lifecycle.reload(name)

    @app.delete("/experts/{name}")
    async def unload_expert(name: str, request: Request) -> dict[str, Any]:
        keys.require(request.headers.get("authorization"), Role.ADMIN)
        gw.require_ready()
        assert gw.lifecycle is not None
        return await gw.lifecycle.unload(name)

    # ------------------------------------------------------------------ metrics

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
