"""The FastAPI app: `create_app(settings, engine_factory=None)` builds an app that owns one
`Service` (server/api/service.py), starts it in the lifespan, maps errors once
(server/api/errors.py) and includes the routers (server/api/routes/). Nothing lives in module
globals, so tests can build several apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from fastapi import FastAPI

from server.api.errors import install_error_handlers
from server.api.openapi import build_openapi
from server.api.routes import experts, openai, ops
from server.api.service import EngineFactory, Service
from server.settings import Settings


def create_app(settings: Settings, engine_factory: EngineFactory | None = None) -> FastAPI:
    service = Service(settings, engine_factory=engine_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(service.start())
        try:
            yield
        finally:
            starting.cancel()
            service.stop_watching()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            await asyncio.to_thread(service.shutdown)

    docs = settings.api_docs  # /openapi.json, /docs, /redoc (server/api/openapi.py)
    app = FastAPI(
        title="expert-gateway",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.openapi = functools.partial(build_openapi, app)  # type: ignore[method-assign]
    app.state.service = service  # the one object routes reach, through server/api/deps.py
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(openai.router)
    app.include_router(experts.router)
    return app
