"""What one app owns (settings, keys, metrics, and once started: engine, live table, loader,
prompt builder, lifecycle) and its start-up, in order:

1. the base model folder (the embedded model is prepared on first use);
2. every expert folder read once; the engine plan from the parsed manifests' runtime hints
   (server.manifest.hints), reported per expert;
3. the vLLM engine, started off the event loop so `/health` answers meanwhile;
4. every servable expert from the same parsed manifests, in `constraints.load_order`; the
   rest are reported, not fatal.

`await service.started()` waits for the end of start-up: the ready state, or the start-up
error raised as `StartupFailed`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.api.auth import KeyRing
from server.engine.prompts import PromptBuilder
from server.engine.vllm_engine import (
    Engine,
    ToolCallParser,
    VLLMEngine,
    configure_cpu_environment,
    known_attention_backends,
    supported_kv_cache_dtypes,
)
from server.errors import NotReady
from server.experts.base_model import base_info, model_location
from server.experts.lifecycle import Lifecycle, fingerprints
from server.experts.loader import Loader, read_experts
from server.experts.registry import Registry
from server.experts.residency import Residency
from server.manifest.embedded import default_cache_dir
from server.manifest.hints import EnginePlan, plan_engine
from server.manifest.sampling import SERVER_DEFAULTS
from server.metrics import Metrics
from server.settings import Settings, detect_platform

log = logging.getLogger("expert_gateway")

EngineFactory = Callable[[str, str, dict[str, Any]], Engine]
ENGINE_WATCH_SECONDS = 1.0
RESIDENCY_SECONDS = 5.0  # how often the engine's adapter cache is looked at


class StartupFailed(RuntimeError):
    """Start-up ended with an error; the message says which (never a traceback)."""


@dataclass(frozen=True)
class ReadyState:
    """What requests use once start-up has finished."""

    engine: Engine
    registry: Registry
    prompts: PromptBuilder
    lifecycle: Lifecycle
    engine_max_model_len: int
    tool_parser: ToolCallParser | None = None  # reads tool calls for tool_choice "auto" (EXPERT_TOOL_PARSER)


class Service:
    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None):
        self.settings = settings
        self.engine_factory = engine_factory
        self.keys = KeyRing.from_settings(settings.api_keys, settings.admin_keys, settings.keys_file)
        self.server_defaults: dict[str, Any] = {**SERVER_DEFAULTS, "max_tokens": settings.default_max_tokens}
        self.metrics = Metrics()
        self.startup_error: str | None = None
        self._engine: Engine | None = None  # set as soon as it runs: shut down even if start-up fails later
        self._state: ReadyState | None = None
        self._staging: Path | None = None
        self._finished = asyncio.Event()  # start-up ended, either way
        self._watcher: asyncio.Task[None] | None = None
        # a dead engine is fatal: /health fails and `expert serve` exits non-zero, for its
        # supervisor (Kubernetes, systemd) to start a fresh process
        self.fatal: str | None = None
        self.on_fatal: list[Callable[[], None]] = []
        self._engine_watch: asyncio.Task[None] | None = None
        self._residency_watch: asyncio.Task[None] | None = None
        self.residency: Residency | None = None  # set at start

    # -- state

    def ready_state(self) -> ReadyState:
        """The ready state, or NotReady saying why there is none."""
        if self.startup_error:
            raise NotReady(f"the server failed to start: {self.startup_error}")
        if self._state is None or self._state.engine.dead:
            if self._engine is not None and self._engine.dead:
                raise NotReady("the engine died; the server is exiting to be restarted")
            raise NotReady("the server is starting: the engine and experts are not ready yet")
        return self._state

    def registry_if_ready(self) -> Registry | None:
        return self._state.registry if self._state is not None else None

    def not_ready_reason(self) -> str | None:
        """None when ready; else why not, in a few words."""
        if self._state is not None and not self._state.engine.dead:
            return None
        if self.startup_error:
            return self.startup_error
        return "engine died" if self._engine is not None and self._engine.dead else "starting"

    async def started(self) -> ReadyState:
        """Wait for start-up to end: the ready state, or StartupFailed."""
        await self._finished.wait()
        if self.startup_error:
            raise StartupFailed(self.startup_error)
        return self.ready_state()

    # -- start and stop

    async def start(self) -> None:
        try:
            await self._start()
        except Exception as exc:  # reported by /ready and every request, never a traceback to clients
            log.exception("start-up failed")
            self.startup_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._finished.set()

    async def _start(self) -> None:
        s = self.settings
        platform = detect_platform(s)
        if platform == "cpu":
            configure_cpu_environment()
        model = await asyncio.to_thread(model_location, s, prepare=True)
        assert model is not None
        base = base_info(s)
        # the folders before they are read: a change from here on is seen by the watcher
        baseline = await asyncio.to_thread(fingerprints, s.experts_dir) if s.watch else {}
        parsed, unreadable = await asyncio.to_thread(read_experts, s.experts_dir)
        backends = kv_dtypes = None
        if self.engine_factory is None:
            backends = await asyncio.to_thread(known_attention_backends)
            kv_dtypes = await asyncio.to_thread(supported_kv_cache_dtypes, platform)
        plan = plan_engine(
            [(p.manifest.name, p.manifest.runtime) for p in parsed],
            platform=platform,
            defaults=s.engine_defaults(),
            known_backends=backends,
            kv_cache_dtypes=kv_dtypes,
        )
        for name, outcomes in plan.reports.items():
            for h in outcomes:
                log.info(
                    "expert %s: hint %s=%r %s (%s)",
                    name,
                    h.field,
                    h.requested,
                    "honoured" if h.honoured else "NOT honoured",
                    h.reason,
                )
        # an adapter slot for each LoRA expert found at start (up to a cap), unless set
        loras = sum(1 for p in parsed if any(a.type == "lora" for _, ads in p.manifest.bases()[:1] for a in ads))
        args = self.engine_args(plan, loras)
        engine_max_model_len = int(args["max_model_len"])
        prompts = await asyncio.to_thread(PromptBuilder, model)
        tool_parser = None
        if s.tool_parser:
            try:
                tool_parser = await asyncio.to_thread(ToolCallParser, s.tool_parser, prompts.tokenizer)
            except ValueError as exc:
                raise StartupFailed(f"EXPERT_TOOL_PARSER: {exc}") from None
        factory: EngineFactory = self.engine_factory or VLLMEngine.start
        engine: Engine = await asyncio.to_thread(factory, model, s.served_model_name, args)
        self._engine = engine
        registry = Registry(engine, self.staging_dir)
        loader = Loader(
            engine,
            base,
            plan,
            platform=platform,
            max_lora_rank=s.max_lora_rank,
            engine_max_model_len=engine_max_model_len,
            staging_dir=self.staging_dir,
            prompts=prompts,
            probe_on_load=s.probe_on_load,
            kv_cache_dtypes=kv_dtypes,
        )
        residency = self.residency = loader.residency = Residency(self.metrics)
        registry.on_change.append(lambda: self._update_info(registry))
        lifecycle = Lifecycle(registry, loader, s.experts_dir, self.metrics)
        await loader.load_all(registry, parsed, unreadable)
        self._update_info(registry)
        if s.watch:
            self._watcher = asyncio.create_task(lifecycle.watch(baseline))
        loaded = [x.name for x in registry.all()]
        log.info(
            "ready: base %s, %d expert(s) loaded %s, %d not loaded %s",
            s.served_model_name,
            len(loaded),
            loaded,
            len(registry.not_loaded),
            sorted(registry.not_loaded),
        )
        self._state = ReadyState(engine, registry, prompts, lifecycle, engine_max_model_len, tool_parser)
        self._engine_watch = asyncio.create_task(self._watch_engine(engine))
        self._residency_watch = asyncio.create_task(self._watch_residency(engine, registry, residency))

    async def _watch_engine(self, engine: Engine) -> None:
        """Notice a dead engine even when no request is running (vLLM marks its client dead
        when the engine core process exits)."""
        while not engine.dead:
            await asyncio.sleep(ENGINE_WATCH_SECONDS)
        self.fatal = "the engine died"
        log.error(
            "the vLLM engine died: /health fails from now on and the server exits for its supervisor to restart it"
        )
        for callback in self.on_fatal:
            callback()

    async def _watch_residency(self, engine: Engine, registry: Registry, residency: Residency) -> None:
        """Which experts' adapters the engine holds, every RESIDENCY_SECONDS (for /metrics)."""
        while not engine.dead:
            await asyncio.sleep(RESIDENCY_SECONDS)
            try:
                listed = await engine.list_loras()
            except Exception as exc:  # a metric, never a reason to stop serving
                log.warning("could not list the engine's adapters: %s", exc)
                continue
            residency.refresh(listed, (e.lora.id for e in registry.all() if e.lora))

    def _update_info(self, registry: Registry) -> None:
        self.metrics.set_loaded(
            (
                e.name,
                e.version,
                self.settings.served_model_name,
                e.lora.name if e.lora else "",
                e.default_soft_prompt or "",
            )
            for e in registry.all()
        )

    def engine_args(self, plan: EnginePlan, lora_experts: int = 0) -> dict[str, Any]:
        s = self.settings
        slots = s.lora_slots(lora_experts)
        args: dict[str, Any] = {
            "dtype": s.engine_dtype(detect_platform(s)),
            "max_model_len": s.max_model_len,
            "enable_lora": True,
            "max_loras": slots,
            "max_cpu_loras": max(s.max_cpu_loras, slots),  # vLLM needs max_cpu_loras >= max_loras
            "max_lora_rank": s.max_lora_rank,
            "enable_prompt_embeds": True,
            "enforce_eager": s.enforce_eager,
            "max_num_seqs": s.max_num_seqs,
        }
        if s.kv_block_size is not None:
            args["block_size"] = s.kv_block_size
        args.update(plan.engine_args)
        return args

    @property
    def staging_dir(self) -> Path:
        if self._staging is None:
            root = (self.settings.cache_dir or default_cache_dir()) / "adapters"
            root.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f"serve-{os.getpid()}-", dir=root))
        return self._staging

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._engine_watch is not None:
            self._engine_watch.cancel()
        if self._residency_watch is not None:
            self._residency_watch.cancel()

    def shutdown(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        if self._engine is not None:
            try:
                self._engine.shutdown()
            except Exception:  # shutting down anyway
                log.exception("engine shutdown failed")
