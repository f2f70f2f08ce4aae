"""The experts a server has loaded: immutable snapshots, published with one assignment.

A snapshot holds everything a request needs from its expert (manifest, LoRA handle, soft
prompt tensors, resolved decoding defaults, grammar). A request takes the snapshot current
when it starts and keeps it to the end, whatever is published meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.engine.vllm_engine import Engine, LoRAHandle
from server.manifest.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BaseInfo,
    check_artifacts,
    grammar_location,
    inside,
    sha256_file,
)
from server.manifest.fates import FieldFate, field_fates
from server.manifest.hints import EnginePlan, HintOutcome, engine_wide_diff, hints_against_engine
from server.manifest.sampling import expert_defaults
from server.manifest.schema import (
    MANIFEST_FILENAME,
    Manifest,
    ManifestError,
    is_plain_name,
    parse_manifest,
    read_manifest_json,
)

log = logging.getLogger("expert_gateway.registry")


@dataclass(frozen=True)
class ExpertSnapshot:
    name: str
    version: str
    manifest: Manifest
    raw: dict[str, Any]
    root: Path
    lora: LoRAHandle | None
    soft_prompts: Mapping[str, Any]  # name -> tensor [tokens, hidden]; the first is the default
    defaults: Mapping[str, Any]  # sampling values the manifest sets
    structured: tuple[str, Any] | None  # default constraint: ("json_object", True) | ("grammar", text)
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
            "constraint": self.structured[0] if self.structured else None,
            "output_check": self.output_check,
            "max_model_len": self.max_model_len,
            "loaded_at": self.loaded_at,
        }


class ExpertLoadError(Exception):
    """An expert folder that cannot be loaded; `reasons` says why, field by field."""

    def __init__(self, name: str, reasons: list[str]):
        self.name = name
        self.reasons = reasons
        super().__init__(f"{name}: " + "; ".join(reasons))


def scan(experts_dir: Path) -> list[tuple[str, Path]]:
    """Expert folders (those holding a manifest.json) with a plain name."""
    if not experts_dir.is_dir():
        return []
    return sorted(
        (p.name, p)
        for p in experts_dir.iterdir()
        if p.is_dir() and is_plain_name(p.name) and (p / MANIFEST_FILENAME).is_file()
    )


def read_for_plan(experts_dir: Path) -> list[tuple[str, Manifest]]:
    """Manifests that parse, in load order: what the engine plan is made from."""
    found = []
    for _, folder in scan(experts_dir):
        try:
            m = parse_manifest(read_manifest_json(folder / MANIFEST_FILENAME))
        except ManifestError:
            continue
        found.append((m.name, m))
    found.sort(key=lambda x: (x[1].load_order, x[0]))
    return found


class Registry:
    def __init__(
        self,
        engine: Engine,
        base: BaseInfo,
        plan: EnginePlan,
        *,
        platform: str,
        max_lora_rank: int,
        engine_max_model_len: int,
        staging_dir: Path,
    ):
        self.engine = engine
        self.base = base
        self.plan = plan
        self.platform = platform
        self.max_lora_rank = max_lora_rank
        self.engine_max_model_len = engine_max_model_len
        self.staging_dir = staging_dir
        self._experts: dict[str, ExpertSnapshot] = {}
        self.not_loaded: dict[str, list[str]] = {}
        self._lora_ids = itertools.count(1)  # LoRA ids and names are never reused
        self._serials = itertools.count(1)
        self._in_flight: dict[int, int] = {}  # serial -> requests running on that version
        self._retired: dict[int, ExpertSnapshot] = {}  # replaced versions still serving requests
        self._drained: dict[int, asyncio.Event] = {}
        self.on_change: list[Callable[[], None]] = []

    # -- reading

    def get(self, name: str) -> ExpertSnapshot | None:
        return self._experts.get(name)

    def acquire(self, name: str) -> ExpertSnapshot | None:
        """The current version of `name`, counted as in use until `release`."""
        snapshot = self._experts.get(name)
        if snapshot is not None:
            self._in_flight[snapshot.serial] = self._in_flight.get(snapshot.serial, 0) + 1
        return snapshot

    async def release(self, snapshot: ExpertSnapshot) -> None:
        left = self._in_flight.get(snapshot.serial, 1) - 1
        self._in_flight[snapshot.serial] = left
        if left <= 0:
            self._in_flight.pop(snapshot.serial, None)
            if snapshot.serial in self._retired:
                await self._drop(self._retired.pop(snapshot.serial))

    def in_flight(self, snapshot: ExpertSnapshot) -> int:
        return self._in_flight.get(snapshot.serial, 0)

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

    def unpublish(self, name: str) -> ExpertSnapshot | None:
        old = self._experts.get(name)
        if old is not None:
            self._experts = {k: v for k, v in self._experts.items() if k != name}
            self._changed()
        return old

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def all(self) -> list[ExpertSnapshot]:
        return sorted(self._experts.values(), key=lambda s: (s.manifest.load_order, s.name))

    # -- loading

    async def load_all(self, experts_dir: Path) -> None:
        candidates = []
        for folder_name, folder in scan(experts_dir):
            try:
                raw = read_manifest_json(folder / MANIFEST_FILENAME)
                m = parse_manifest(raw)
            except ManifestError as exc:
                self._fail(folder_name, [f"{i.field or '<manifest>'}: {i.message}" for i in exc.issues])
                continue
            candidates.append((m, folder))
        candidates.sort(key=lambda c: (c[0].load_order, c[0].name))
        for m, folder in candidates:
            reasons = self._constraint_problems(m)
            if m.name != folder.name:
                reasons.append(f"manifest name {m.name!r} differs from its folder name {folder.name!r}")
            if reasons:
                self._fail(m.name, reasons)
                continue
            try:
                snapshot = await self.build(folder, startup=True)
            except ExpertLoadError as exc:
                self._fail(m.name, exc.reasons)
                continue
            self.publish(snapshot)
            hints = (
                "; ".join(
                    f"{h.field} {'honoured' if h.honoured else 'NOT honoured'} ({h.reason})" for h in snapshot.hints
                )
                or "no runtime hints"
            )
            log.info(
                "expert %s %s loaded (lora=%s, soft prompts=%s); %s",
                m.name,
                m.version,
                snapshot.lora.name if snapshot.lora else None,
                list(snapshot.soft_prompts) or None,
                hints,
            )

    def _fail(self, name: str, reasons: list[str]) -> None:
        self.not_loaded[name] = reasons
        log.warning("expert %s not loaded: %s", name, "; ".join(reasons))

    def _constraint_problems(self, m: Manifest) -> list[str]:
        problems = []
        c = m.constraints
        if c is None:
            return problems
        for req in c.requires or []:
            if req not in self._experts:
                problems.append(f"constraints.requires: {req!r} is not loaded (it must load first)")
        for other in c.incompatible_with or []:
            if other in self._experts:
                problems.append(f"constraints.incompatible_with: {other!r} is loaded")
        return problems

    async def build(self, folder: Path, *, startup: bool = False) -> ExpertSnapshot:
        """Validate a folder and load its adapter and tensors, without publishing anything."""
        manifest_file = folder / MANIFEST_FILENAME
        try:
            raw = read_manifest_json(manifest_file)
            m = parse_manifest(raw)
        except ManifestError as exc:
            raise ExpertLoadError(
                folder.name, [f"{i.field or '<manifest>'}: {i.message}" for i in exc.issues]
            ) from None
        report = check_artifacts(folder, manifest_file, m, self.base, self.max_lora_rank)
        reasons = [f"{f}: {msg}" for f, msg in report.errors] + report.blockers
        if startup and m.name in self.plan.reports:
            hints = self.plan.reports[m.name]
        else:  # loaded later: the engine runs with the args it was started with
            hints = hints_against_engine(m.runtime, self.plan.engine_args, platform=self.platform)
        if reasons:
            raise ExpertLoadError(m.name, reasons)

        from server.manifest.soft_prompt import load_soft_prompt

        soft_prompts = {}
        for i, sp in enumerate(m.soft_prompts):
            path = inside(folder, sp.path)
            assert path is not None  # checked by check_artifacts
            try:
                soft_prompts[sp.name] = load_soft_prompt(path)
            except ValueError as exc:
                raise ExpertLoadError(m.name, [f"soft_prompts[{i}].path: {exc}"]) from None

        lora = None
        adapters = m.bases()[0][1]
        if adapters and report.adapter_dir is not None:
            lora_id = next(self._lora_ids)
            name = f"{m.name}@{m.version}#{lora_id}"
            staged = await asyncio.to_thread(self._stage_adapter, report.adapter_dir, name, adapters[0].sha256)
            lora = LoRAHandle(name, lora_id, str(staged))
            try:
                await self.engine.add_lora(lora)
            except Exception as exc:
                shutil.rmtree(staged, ignore_errors=True)
                raise ExpertLoadError(m.name, [f"the engine could not load the adapter: {exc}"]) from None

        structured = None
        kind, _ = grammar_location(folder, manifest_file, m)
        if kind == "json":
            structured = ("json_object", True)
        elif kind == "gbnf" and report.grammar_text is not None:
            structured = ("grammar", report.grammar_text)
        d = m.decoding
        check = None
        if d.validation and (
            d.validation.lower() in ("json", "json_syntax")
            or (d.validation.lower() in ("parser-strict", "strict") and (d.grammar_type or "").lower() == "json")
        ):
            check = "json"
        max_len = m.runtime.max_model_len if m.runtime and m.runtime.max_model_len else None
        return ExpertSnapshot(
            serial=next(self._serials),
            name=m.name,
            version=m.version,
            manifest=m,
            raw=raw,
            root=folder,
            lora=lora,
            soft_prompts=soft_prompts,
            defaults=expert_defaults(d),
            structured=structured,
            output_check=check,
            max_model_len=min(max_len, self.engine_max_model_len) if max_len else None,
            fates=tuple(field_fates(raw, m, report, hints)),
            hints=tuple(hints),
        )

    def _stage_adapter(self, source: Path, name: str, sha256: str | None) -> Path:
        """Copy the adapter files to a private folder the engine reads from: a version keeps
        its own files whatever happens to the expert folder later (the engine may reload an
        adapter from disk after evicting it from its cache)."""
        target = self.staging_dir / name.replace("@", "_").replace("#", "_")
        target.mkdir(parents=True, exist_ok=False)
        for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(source / file, target / file)
        if sha256 and sha256_file(target / ADAPTER_WEIGHTS) != sha256:
            shutil.rmtree(target, ignore_errors=True)
            raise ExpertLoadError(name, [f"{ADAPTER_WEIGHTS} changed while loading (sha256 mismatch)"])
        return target

    def publish(self, snapshot: ExpertSnapshot) -> ExpertSnapshot | None:
        """Make `snapshot` current (one assignment); returns the one it replaces."""
        old = self._experts.get(snapshot.name)
        self._experts = {**self._experts, snapshot.name: snapshot}
        self.not_loaded.pop(snapshot.name, None)
        self._changed()
        return old

    def engine_wide_changes(self, old: ExpertSnapshot, new_manifest: Manifest) -> dict[str, tuple[Any, Any]]:
        return engine_wide_diff(old.manifest.runtime, new_manifest.runtime)
