"""Expert lifecycle while serving: reload, unload, and watching the experts folder.

A reload builds the new version off to the side (validate, load the adapter under a new,
never-reused LoRA name and id, load tensors) and publishes it with one assignment;
requests in flight finish on the version they started with, and the old adapter leaves
the engine when its last request ends. Reloads of one expert are serialised; different
experts proceed in parallel. A folder that fails leaves the old version serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from server.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from server.experts.loader import ExpertLoadError, Loader, loaded_versions, manifest_issues, read_expert
from server.experts.registry import Registry
from server.manifest.hints import engine_wide_diff
from server.manifest.schema import MANIFEST_FILENAME, ManifestError, is_plain_name
from server.metrics import Metrics

log = logging.getLogger("expert_gateway.lifecycle")


class Lifecycle:
    def __init__(self, registry: Registry, loader: Loader, experts_dir: Path, metrics: Metrics):
        self.registry = registry
        self.loader = loader
        self.experts_dir = experts_dir
        self.metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}

    def _folder(self, name: str) -> Path:
        if not is_plain_name(name):
            raise InvalidRequest(
                "an expert name is a plain name (letters, digits, '.', '_', '-'), not a path",
                param="name",
                code="invalid_expert_name",
            )
        return self.experts_dir / name

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def reload(self, name: str) -> dict[str, Any]:
        folder = self._folder(name)
        async with self.lock(name):
            start = time.perf_counter()
            try:
                result = await self._reload(name, folder, start)
            except Exception as exc:
                outcomes: dict[type[Exception], str] = {
                    Conflict: "conflict",
                    Unprocessable: "invalid",
                    NotFound: "not_found",
                }
                outcome = outcomes.get(type(exc), "error")
                self.metrics.reloads.labels(name, outcome).inc()
                self.metrics.reload_duration.labels(name).observe(time.perf_counter() - start)
                raise
            self.metrics.reloads.labels(name, "ok").inc()
            self.metrics.reload_duration.labels(name).observe(result["duration_s"])
            return result

    async def _reload(self, name: str, folder: Path, start: float) -> dict[str, Any]:
        if not (folder / MANIFEST_FILENAME).is_file():
            raise NotFound(f"no expert folder {name!r} with a {MANIFEST_FILENAME}", param="name")
        old = self.registry.get(name)
        try:
            parsed = await asyncio.to_thread(read_expert, folder)  # off the event loop, like the file checks
        except ManifestError as exc:
            raise Unprocessable(
                f"expert {name!r} failed validation; the old version keeps serving",
                details=manifest_issues(exc),
            ) from None
        manifest = parsed.manifest
        if manifest.name != name:
            raise Unprocessable(
                f"manifest name {manifest.name!r} differs from the folder name {name!r}",
                details=[f"name: {manifest.name!r} != {name!r}"],
            )
        if old is not None:
            diff = engine_wide_diff(old.manifest.runtime, manifest.runtime)
            if diff:
                raise Conflict(
                    "engine-wide hints changed; they need an engine restart, which reload does not do",
                    details={arg: {"old": a, "new": b} for arg, (a, b) in diff.items()},
                )
        try:
            snapshot = await self.loader.build(parsed, loaded=loaded_versions(self.registry, name))
        except ExpertLoadError as exc:
            raise Unprocessable(
                f"expert {name!r} failed to load; the old version keeps serving", details=exc.reasons
            ) from None
        replaced = self.registry.publish(snapshot)
        if replaced is not None:
            await self.registry.retire(replaced)
        duration = time.perf_counter() - start
        log.info(
            "expert %s reloaded: %s -> %s in %.2fs",
            name,
            replaced.version if replaced else None,
            snapshot.version,
            duration,
        )
        return {
            "name": name,
            "old_version": replaced.version if replaced else None,
            "new_version": snapshot.version,
            "adapter": snapshot.lora.name if snapshot.lora else None,
            "old_adapter": replaced.lora.name if replaced and replaced.lora else None,
            "duration_s": round(duration, 4),
            "hints": [h.to_json() for h in snapshot.hints],
        }

    async def unload(self, name: str, drain_timeout: float = 120.0) -> dict[str, Any]:
        self._folder(name)
        async with self.lock(name):
            old = self.registry.unpublish(name)
            if old is None:
                raise NotFound(f"expert {name!r} is not loaded", param="name")
            start = time.perf_counter()
            drained = await self.registry.retire(old)
            try:
                await asyncio.wait_for(drained.wait(), drain_timeout)
            except TimeoutError:
                return {
                    "name": name,
                    "version": old.version,
                    "drained": False,
                    "in_flight": self.registry.in_flight(old),
                }
            return {
                "name": name,
                "version": old.version,
                "drained": True,
                "duration_s": round(time.perf_counter() - start, 4),
            }

    # -- watching

    async def watch(self, seen: dict[str, str], interval: float = 1.0, settle: float = 2.0) -> None:
        """Reload an expert whose folder changed since `seen` and then stayed unchanged for `settle` seconds."""
        seen = dict(seen)
        pending: dict[str, tuple[str, float]] = {}
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            current = await asyncio.to_thread(fingerprints, self.experts_dir)
            for name, fp in current.items():
                if seen.get(name) == fp:
                    pending.pop(name, None)
                    continue
                if name not in pending or pending[name][0] != fp:
                    pending[name] = (fp, now)  # changed: wait until it settles
                elif now - pending[name][1] >= settle:
                    pending.pop(name)
                    seen[name] = fp
                    try:
                        result = await self.reload(name)
                        log.info("watch: reloaded %s (%s -> %s)", name, result["old_version"], result["new_version"])
                    except Exception as exc:  # reported, and the old version keeps serving
                        details = getattr(exc, "details", None)
                        log.warning("watch: %s not reloaded: %s %s", name, exc, details or "")


def fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def fingerprints(experts_dir: Path) -> dict[str, str]:
    """The state of every expert folder now (taken before the experts are read at start-up)."""
    if not experts_dir.is_dir():
        return {}
    return {p.name: fingerprint(p) for p in experts_dir.iterdir() if p.is_dir() and is_plain_name(p.name)}
