"""FastAPI dependencies: the app's service, API keys per role, and the ready state."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from server.api.auth import Role
from server.api.service import ReadyState, Service
from server.errors import InvalidRequest
from server.manifest.schema import is_plain_name


def service_of(request: Request) -> Service:
    return cast(Service, request.app.state.service)


async def get_service(request: Request) -> Service:
    return service_of(request)


def authorize(request: Request, role: Role) -> None:
    """Unauthorized / Forbidden unless the request's key has `role` (everyone, with no keys set)."""
    service_of(request).keys.require(request.headers.get("authorization"), role)


async def client_key(request: Request) -> None:
    authorize(request, Role.CLIENT)


async def admin_key(request: Request) -> None:
    authorize(request, Role.ADMIN)


async def plain_expert_name(name: str) -> str:
    """The `{name}` path parameter, refused when it is not a plain name."""
    if not is_plain_name(name):
        raise InvalidRequest("an expert name is a plain name, not a path", param="name")
    return name


async def ready_state(request: Request) -> ReadyState:
    """The ready state, or NotReady (503) while starting, after a failed start or a dead engine."""
    return service_of(request).ready_state()


ServiceDep = Annotated[Service, Depends(get_service)]
Ready = Annotated[ReadyState, Depends(ready_state)]
ClientKey = Depends(client_key)
AdminKey = Depends(admin_key)
