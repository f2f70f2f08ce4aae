"""Building expert versions: from one parsed manifest to a snapshot ready to publish.

Each manifest is read and parsed once per load (`read_expert`, `read_experts`); start-up
plans the engine from the same parsed manifests it then loads. `Loader.build` checks the
folder's files against that manifest, stages and adds the adapter under a new, never-reused
LoRA name and id, loads the soft-prompt tensors, and returns an unpublished snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine.vllm_engine import Engine, LoRAHandle
from server.experts.probes import probe_expert, subject_of
from server.experts.registry import ExpertSnapshot, Registry
from server.experts.residency import Residency
from server.manifest.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BaseInfo,
    check_artifacts,
    grammar_location,
    inside,
)
from server.manifest.constraints import check_constraints
from server.manifest.embedded import sha256_file
from server.manifest.fates import field_fates, output_check
from server.manifest.grammar import copies_input
from server.manifest.hints import EnginePlan, hints_against_engine
from server.manifest.sampling import Grammar, JsonObject, StructuredOutput, expert_defaults
from server.manifest.schema import (
    MANIFEST_FILENAME,
    Manifest,
    ManifestError,
    SchemaIssue,
    is_plain_name,
    parse_manifest,
    read_manifest_json,
)

log = logging.getLogger("expert_gateway.loader")


class ExpertLoadError(Exception):
    """An expert folder that cannot be loaded; `reasons` says why, field by field."""

    def __init__(self, name: str, reasons: list[str]):
        self.name = name
        self.reasons = reasons
        super().__init__(f"{name}: " + "; ".join(reasons))


def manifest_issues(exc: ManifestError) -> list[str]:
    return [f"{i.field or '<manifest>'}: {i.message}" for i in exc.issues]


@dataclass(frozen=True)
class ParsedExpert:
    """An expert folder with its manifest, read and parsed once."""

    folder: Path
    raw: dict[str, Any]  # the decoded JSON (field fates report on what it sets)
    manifest: Manifest

    @property
    def manifest_file(self) -> Path:
        return self.folder / MANIFEST_FILENAME


def scan(experts_dir: Path) -> list[tuple[str, Path]]:
    """Expert folders (those holding a manifest.json) with a plain name."""
    if not experts_dir.is_dir():
        return []
    return sorted(
        (p.name, p)
        for p in experts_dir.iterdir()
        if p.is_dir() and is_plain_name(p.name) and (p / MANIFEST_FILENAME).is_file()
    )


def read_expert(folder: Path) -> ParsedExpert:
    """Read and parse the folder's manifest; ManifestError when it is missing or invalid
    (or a link out of the folder: every file is read from inside it)."""
    path = folder / MANIFEST_FILENAME
    if path.is_symlink() and inside(folder, MANIFEST_FILENAME) is None:
        raise ManifestError([SchemaIssue("", f"{MANIFEST_FILENAME} links out of the expert folder (refused)")])
    raw = read_manifest_json(path)
    return ParsedExpert(folder, raw, parse_manifest(raw))


def read_experts(experts_dir: Path) -> tuple[list[ParsedExpert], dict[str, list[str]]]:
    """Every expert folder read once: the parsed ones in load order, and the reasons the
    others' manifests do not parse, by folder name."""
    parsed: list[ParsedExpert] = []
    unreadable: dict[str, list[str]] = {}
    for folder_name, folder in scan(experts_dir):
        try:
            parsed.append(read_expert(folder))
        except ManifestError as exc:
            unreadable[folder_name] = manifest_issues(exc)
    parsed.sort(key=lambda p: (p.manifest.load_order, p.manifest.name))
    return parsed, unreadable


class Loader:
    """Builds snapshots for one engine and base model."""

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
        prompts: Any = None,
        probe_on_load: bool = False,
        kv_cache_dtypes: frozenset[str] | None = None,
    ):
        self.prompts = prompts  # PromptBuilder: the probes render their prompt with it
        self.probe_on_load = probe_on_load
        self.kv_cache_dtypes = kv_cache_dtypes
        self.engine = engine
        self.base = base
        self.plan = plan
        self.platform = platform
        self.max_lora_rank = max_lora_rank
        self.engine_max_model_len = engine_max_model_len
        self.staging_dir = staging_dir
        self._lora_ids = itertools.count(1)  # LoRA ids and names are never reused
        self.residency: Residency | None = None  # told of every adapter the engine accepts
        self._serials = itertools.count(1)

    async def load_all(self, registry: Registry, parsed: list[ParsedExpert], unreadable: dict[str, list[str]]) -> None:
        """Start-up: publish every servable expert in load order; report the others."""
        for folder_name, reasons in unreadable.items():
            registry.refuse(folder_name, reasons)
        for p in parsed:
            m = p.manifest
            reasons = []
            if m.name != p.folder.name:
                reasons.append(f"manifest name {m.name!r} differs from its folder name {p.folder.name!r}")
            if reasons:
                registry.refuse(m.name, reasons)
                continue
            try:
                snapshot = await self.build(p, startup=True, loaded=loaded_versions(registry, m.name))
            except ExpertLoadError as exc:
                registry.refuse(m.name, exc.reasons)
                continue
            registry.publish(snapshot)
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

    async def build(
        self, parsed: ParsedExpert, *, startup: bool = False, loaded: dict[str, str] | None = None
    ) -> ExpertSnapshot:
        """Check a parsed folder and load its adapter and tensors, without publishing anything."""
        folder, m = parsed.folder, parsed.manifest
        # file checks hash, read tensors and compile grammars: off the event loop
        report = await asyncio.to_thread(
            check_artifacts, folder, parsed.manifest_file, m, self.base, self.max_lora_rank
        )
        constraints = check_constraints(m, loaded or {}, context="loaded on this server")
        reasons = [f"{f}: {msg}" for f, msg in report.errors] + report.blockers + constraints.blockers
        if startup and m.name in self.plan.reports:
            hints = self.plan.reports[m.name]
        else:  # loaded later: the engine runs with the args it was started with
            hints = hints_against_engine(
                m.runtime, self.plan.engine_args, platform=self.platform, kv_cache_dtypes=self.kv_cache_dtypes
            )
        if reasons:
            raise ExpertLoadError(m.name, reasons)

        # the tensors check_artifacts read, hashed and checked: each file is read once
        soft_prompts = {sp.name: report.soft_prompts[sp.name] for sp in m.soft_prompts}
        context = self.engine_max_model_len
        if m.runtime and m.runtime.max_model_len:
            context = min(m.runtime.max_model_len, context)
        if m.soft_prompts and m.soft_prompts[0].tokens >= context:
            # the default soft prompt goes before every prompt: it must leave room for one
            raise ExpertLoadError(
                m.name,
                [
                    f"soft_prompts[0].tokens: the default soft prompt has {m.soft_prompts[0].tokens} tokens, "
                    f"not less than the context of {context} tokens"
                ],
            )

        lora = None
        adapter = report.adapter  # the one adapter served, with its own folder and sha256
        if adapter is not None and report.adapter_dir is not None:
            lora_id = next(self._lora_ids)
            name = f"{m.name}@{m.version}#{lora_id}"
            staged = await asyncio.to_thread(self._stage_adapter, report.adapter_dir, name, adapter.sha256)
            lora = LoRAHandle(name, lora_id, str(staged))
            started = time.perf_counter()
            try:
                await self.engine.add_lora(lora)
            except Exception as exc:
                shutil.rmtree(staged, ignore_errors=True)
                raise ExpertLoadError(m.name, [f"the engine could not load the adapter: {exc}"]) from None
            if self.residency is not None:
                self.residency.loaded(m.name, m.version, lora_id, time.perf_counter() - started)

        structured: StructuredOutput | None = None
        kind, _ = grammar_location(folder, parsed.manifest_file, m)
        if kind == "json":
            structured = JsonObject()
        elif kind == "gbnf" and report.grammar_text is not None:
            # the text check_artifacts read and compiled
            structured = Grammar(report.grammar_text, copies_input=copies_input(report.grammar_text))
        d = m.decoding
        check = output_check(d)
        evidence: dict[str, Any] = {}
        if self.probe_on_load and self.prompts is not None and hasattr(self.engine, "probe"):
            subject = subject_of(
                m,
                adapter=adapter,
                lora=lora,
                soft_prompts=soft_prompts,
                grammar_kind=kind,
                grammar_text=report.grammar_text,
                tokenizer_dir=self.base.path,
                hints=list(hints),
            )
            probes = await probe_expert(self.engine, self.prompts, subject)
            log.info("expert %s %s: probes on the engine took %.2f s", m.name, m.version, probes.seconds)
            if probes.blockers:
                if lora is not None:
                    await self.engine.remove_lora(lora)
                    shutil.rmtree(lora.path, ignore_errors=True)
                raise ExpertLoadError(m.name, probes.blockers)
            evidence = probes.evidence
        max_len = m.runtime.max_model_len if m.runtime and m.runtime.max_model_len else None
        return ExpertSnapshot(
            serial=next(self._serials),
            name=m.name,
            version=m.version,
            manifest=m,
            root=folder,
            lora=lora,
            soft_prompts=soft_prompts,
            defaults=expert_defaults(d),
            structured=structured,
            output_check=check,
            max_model_len=min(max_len, self.engine_max_model_len) if max_len else None,
            fates=tuple(field_fates(parsed.raw, m, report, hints, constraints=constraints, evidence=evidence)),
            hints=tuple(hints),
        )

    def _stage_adapter(self, source: Path, name: str, sha256: str | None) -> Path:
        """Copy the adapter files to a private folder the engine reads from: a version keeps
        its own files whatever happens to the expert folder later (the engine may reload an
        adapter from disk after evicting it from its cache)."""
        # a folder name the server makes: nothing from a manifest is ever a path component
        target = Path(tempfile.mkdtemp(prefix="adapter-", dir=self.staging_dir))
        for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(source / file, target / file)
        if sha256 and sha256_file(target / ADAPTER_WEIGHTS) != sha256:
            shutil.rmtree(target, ignore_errors=True)
            raise ExpertLoadError(name, [f"{ADAPTER_WEIGHTS} changed while loading (sha256 mismatch)"])
        return target


def loaded_versions(registry: Registry, except_name: str) -> dict[str, str]:
    """Name -> version of the experts the registry serves, but `except_name` (the one loading)."""
    return {e.name: e.version for e in registry.all() if e.name != except_name}
