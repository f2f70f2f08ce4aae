"""The experts a server serves: listing, one expert's details, reload and unload (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from server.api.deps import AdminKey, ClientKey, Ready, ServiceDep, plain_expert_name
from server.errors import NotFound
from server.manifest.sampling import resolve

router = APIRouter()


@router.get("/experts", dependencies=[ClientKey])
async def experts(state: Ready) -> dict[str, Any]:
    registry = state.registry
    return {
        "experts": [{"name": e.name, "version": e.version, "status": "loaded"} for e in registry.all()],
        "not_loaded": [
            {"name": n, "status": "not_loaded", "reasons": r} for n, r in sorted(registry.not_loaded.items())
        ],
    }


@router.get("/experts/{name}", dependencies=[ClientKey])
async def expert(name: Annotated[str, Depends(plain_expert_name)], service: ServiceDep, state: Ready) -> dict[str, Any]:
    registry = state.registry
    e = registry.get(name)
    if e is None:
        if name in registry.not_loaded:
            return {"name": name, "status": "not_loaded", "reasons": registry.not_loaded[name]}
        raise NotFound(f"no expert {name!r}", param="name")
    resolved = {k: v.to_json() for k, v in resolve({}, e.defaults, service.server_defaults).items()}
    return {
        **e.summary(),
        "status": "loaded",
        "decoding": resolved,
        "hints": [h.to_json() for h in e.hints],
        "fields": [f.to_json() for f in e.fates],
    }


@router.post("/experts/{name}/reload", dependencies=[AdminKey])
async def reload_expert(name: str, state: Ready) -> dict[str, Any]:
    return await state.lifecycle.reload(name)


@router.delete("/experts/{name}", dependencies=[AdminKey])
async def unload_expert(name: str, state: Ready) -> dict[str, Any]:
    return await state.lifecycle.unload(name)
