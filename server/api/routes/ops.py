"""Health, readiness and Prometheus metrics: no key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.deps import ServiceDep
from server.api.errors import error_response
from server.errors import NotReady

router = APIRouter()


@router.get("/health")
async def health(service: ServiceDep) -> JSONResponse:
    """The process can serve (the liveness probe): 503 once the engine has died, until the
    process exits for its supervisor to restart it."""
    if service.fatal is not None:
        return error_response(NotReady(f"not alive: {service.fatal}; the server is exiting to be restarted"))
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(service: ServiceDep) -> JSONResponse:
    reason = service.not_ready_reason()
    if reason is not None:
        return error_response(NotReady(f"not ready: {reason}"))
    registry = service.ready_state().registry
    return JSONResponse(
        {
            "status": "ready",
            "experts": [e.name for e in registry.all()],
            "not_loaded": registry.not_loaded,
        }
    )


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
