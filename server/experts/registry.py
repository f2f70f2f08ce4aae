"""The live table of the experts a server serves: immutable snapshots, published with one
assignment, leased by requests, retired when replaced.

A snapshot holds everything a request needs from its expert (manifest, LoRA handle, soft
prompt tensors, resolved decoding defaults, grammar). A request leases the snapshot current
when it starts and keeps it to the end, whatever is published meanwhile; a replaced version
leaves the engine when its last lease ends. Snapshots are built by `server.experts.loader`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.engine.vllm_engine import Engine, LoRAHandle
from server.manifest.fates import FieldFate, about
from server.manifest.hints import HintOutcome
from server.manifest.sampling import StructuredOutput
from server.manifest.schema import Manifest

log = logging.getLogger("expert_gateway.registry")


@dataclass(frozen=True)
class ExpertSnapshot:
    name: str
    version: str
    manifest: Manifest
    root: Path
    lora: LoRAHandle | None
    soft_prompts: Mapping[str, Any]  # name -> tensor [tokens, hidden]; the first is the default
    defaults: Mapping[str, Any]  # sampling values the manifest sets
    structured: StructuredOutput | None  # the default constraint
    output_check: str | None  # "json" when the manifest asks for JSON validation
    max_model_len: int | None
    fates: tuple[FieldFate, ...]
    hints: tuple[HintOutcome, ...]
    loaded_at: float = field(default_factory=time.time)
    serial: int = 0  # unique per build: identifies this version for in-flight accounting

    @property
    def default_soft_prompt(self) -> str | None:
        return next(iter(self.soft_prompts), None)

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name,
            "version": self.version,
            "schema_version": m.schema_version,
            "description": m.description,
            "author": m.author,
            "license": m.license,
            "tags": m.tags,
            "capabilities": m.capabilities,
            "base_models": [b.name for b, _ in m.bases()],
            "adapter": self.lora.name if self.lora else None,
            "soft_prompts": {k: list(v.shape) for k, v in self.soft_prompts.items()},
            "default_soft_prompt": self.default_soft_prompt,
            "decoding_defaults": dict(self.defaults),
            "constraint": self.structured.kind if self.structured else None,
            # its grammar's rule input-span is defined per request from the request's words
            "constraint_copies_input": bool(getattr(self.structured, "copies_input", False)),
            "output_check": self.output_check,
            "max_model_len": self.max_model_len,
            "loaded_at": self.loaded_at,
            "about": about(m),
        }


class UnknownExpert(LookupError):
    """No expert of that name is loaded."""


class Registry:
    """The published snapshots by name, the requests running on each version, and the
    replaced versions waiting for their last request before leaving the engine."""

    def __init__(self, engine: Engine, staging_dir: Path):
        self.engine = engine
        self.staging_dir = staging_dir  # staged adapter copies under it are deleted with their version
        self._experts: dict[str, ExpertSnapshot] = {}
        self.not_loaded: dict[str, list[str]] = {}
        self._in_flight: dict[int, int] = {}  # serial -> requests running on that version
        self._retired: dict[int, ExpertSnapshot] = {}  # replaced versions still serving requests
        self._drained: dict[int, asyncio.Event] = {}
        self.on_change: list[Callable[[], None]] = []

    # -- reading

    def get(self, name: str) -> ExpertSnapshot | None:
        return self._experts.get(name)

    def all(self) -> list[ExpertSnapshot]:
        return sorted(self._experts.values(), key=lambda s: (s.manifest.load_order, s.name))

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[ExpertSnapshot]:
        """The current version of `name`, counted as in use until the block ends; a version
        replaced meanwhile leaves the engine when its last lease ends. UnknownExpert when
        `name` is not loaded."""
        snapshot = self._experts.get(name)
        if snapshot is None:
            raise UnknownExpert(name)
        self._in_flight[snapshot.serial] = self._in_flight.get(snapshot.serial, 0) + 1
        try:
            yield snapshot
        finally:
            await self._release(snapshot)

    async def _release(self, snapshot: ExpertSnapshot) -> None:
        left = self._in_flight.get(snapshot.serial, 1) - 1
        self._in_flight[snapshot.serial] = left
        if left <= 0:
            self._in_flight.pop(snapshot.serial, None)
            if snapshot.serial in self._retired:
                await self._drop(self._retired.pop(snapshot.serial))

    def in_flight(self, snapshot: ExpertSnapshot) -> int:
        return self._in_flight.get(snapshot.serial, 0)

    # -- changing

    def publish(self, snapshot: ExpertSnapshot) -> ExpertSnapshot | None:
        """Make `snapshot` current (one assignment); returns the one it replaces."""
        old = self._experts.get(snapshot.name)
        self._experts = {**self._experts, snapshot.name: snapshot}
        self.not_loaded.pop(snapshot.name, None)
        self._changed()
        return old

    def unpublish(self, name: str) -> ExpertSnapshot | None:
        old = self._experts.get(name)
        if old is not None:
            self._experts = {k: v for k, v in self._experts.items() if k != name}
            self._changed()
        return old

    def refuse(self, name: str, reasons: list[str]) -> None:
        """Record why the folder `name` is not served."""
        self.not_loaded[name] = reasons
        log.warning("expert %s not loaded: %s", name, "; ".join(reasons))

    async def retire(self, snapshot: ExpertSnapshot) -> asyncio.Event:
        """Remove a replaced version from the engine once its last request has ended."""
        event = self._drained.setdefault(snapshot.serial, asyncio.Event())
        if self._in_flight.get(snapshot.serial, 0) == 0:
            await self._drop(snapshot)
        else:
            self._retired[snapshot.serial] = snapshot
        return event

    async def _drop(self, snapshot: ExpertSnapshot) -> None:
        try:
            if snapshot.lora is not None:
                await self.engine.remove_lora(snapshot.lora)
                if Path(snapshot.lora.path).is_relative_to(self.staging_dir):
                    shutil.rmtree(snapshot.lora.path, ignore_errors=True)
                log.info(
                    "expert %s %s: adapter %s removed from the engine",
                    snapshot.name,
                    snapshot.version,
                    snapshot.lora.name,
                )
        finally:
            self._drained.pop(snapshot.serial, asyncio.Event()).set()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()
