"""The gateway: what one app owns (settings, engine, registry, prompt builder, metrics)
and its start-up, in order:

1. the base model folder (the embedded model is prepared on first use);
2. the engine plan from the experts' runtime hints (hints.py), reported per expert;
3. the vLLM engine, started off the event loop so `/health` answers meanwhile;
4. every servable expert, in `constraints.load_order`; the rest are reported, not fatal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.engine.prompts import PromptBuilder
from server.engine.vllm_engine import Engine, VLLMEngine, configure_cpu_environment, known_attention_backends
from server.errors import NotReady
from server.experts.base_model import base_info, model_location
from server.experts.lifecycle import Lifecycle
from server.experts.registry import Registry, read_for_plan
from server.manifest.artifacts import BaseInfo
from server.manifest.embedded import default_cache_dir
from server.manifest.hints import EnginePlan, plan_engine
from server.metrics import Metrics
from server.settings import Settings, detect_platform

log = logging.getLogger("expert_gateway")

EngineFactory = Callable[[str, str, dict[str, Any]], Engine]


@dataclass
class Gateway:
    settings: Settings
    engine_factory: EngineFactory | None = None
    engine: Engine | None = None
    registry: Registry | None = None
    prompts: PromptBuilder | None = None
    base: BaseInfo | None = None
    plan: EnginePlan | None = None
    platform: str = "cpu"
    engine_max_model_len: int = 2048
    lifecycle: Lifecycle | None = None
    metrics: Metrics = field(default_factory=Metrics)
    watcher: asyncio.Task | None = None
    startup_error: str | None = None
    _staging: Path | None = None
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[..., None]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.ready_event.is_set() and self.engine is not None and not self.engine.dead

    def require_ready(self) -> tuple[Engine, Registry, PromptBuilder]:
        if self.startup_error:
            raise NotReady(f"the server failed to start: {self.startup_error}")
        if not self.ready or self.engine is None or self.registry is None or self.prompts is None:
            if self.engine is not None and self.engine.dead:
                raise NotReady("the engine died; the server needs a restart")
            raise NotReady("the server is starting: the engine and experts are not ready yet")
        return self.engine, self.registry, self.prompts

    async def start(self) -> None:
        try:
            await self._start()
        except Exception as exc:  # reported by /ready and every request, never a traceback to clients
            log.exception("start-up failed")
            self.startup_error = f"{type(exc).__name__}: {exc}"

    async def _start(self) -> None:
        s = self.settings
        self.platform = detect_platform(s)
        if self.platform == "cpu":
            configure_cpu_environment()
        model = await asyncio.to_thread(model_location, s, prepare=True)
        assert model is not None
        self.base = base_info(s)
        manifests = read_for_plan(s.experts_dir)
        backends = None
        if self.engine_factory is None:
            backends = await asyncio.to_thread(known_attention_backends)
        self.plan = plan_engine(
            [(n, m.runtime) for n, m in manifests],
            platform=self.platform,
            defaults=s.engine_defaults(),
            known_backends=backends,
        )
        for name, outcomes in self.plan.reports.items():
            for h in outcomes:
                log.info(
                    "expert %s: hint %s=%r %s (%s)",
                    name,
                    h.field,
                    h.requested,
                    "honoured" if h.honoured else "NOT honoured",
                    h.reason,
                )
        args = self.engine_args(self.plan)
        self.engine_max_model_len = int(args["max_model_len"])
        self.prompts = await asyncio.to_thread(PromptBuilder, model)
        factory = self.engine_factory or VLLMEngine.start
        self.engine = await asyncio.to_thread(factory, model, s.served_model_name, args)
        self.registry = Registry(
            self.engine,
            self.base,
            self.plan,
            platform=self.platform,
            max_lora_rank=s.max_lora_rank,
            engine_max_model_len=self.engine_max_model_len,
            staging_dir=self.staging_dir,
        )
        self.registry.on_change.append(self._update_info)
        self.lifecycle = Lifecycle(self.registry, s.experts_dir, self.metrics)
        # the folders as they are loaded: a change from here on is seen by the watcher
        baseline = await asyncio.to_thread(self.lifecycle.fingerprints) if s.watch else {}
        await self.registry.load_all(s.experts_dir)
        self._update_info()
        if s.watch:
            self.watcher = asyncio.create_task(self.lifecycle.watch(baseline))
        loaded = [x.name for x in self.registry.all()]
        log.info(
            "ready: base %s, %d expert(s) loaded %s, %d not loaded %s",
            s.served_model_name,
            len(loaded),
            loaded,
            len(self.registry.not_loaded),
            sorted(self.registry.not_loaded),
        )
        self.ready_event.set()

    def _update_info(self) -> None:
        assert self.registry is not None
        self.metrics.set_loaded(
            (
                e.name,
                e.version,
                self.settings.served_model_name,
                e.lora.name if e.lora else "",
                e.default_soft_prompt or "",
            )
            for e in self.registry.all()
        )

    def engine_args(self, plan: EnginePlan) -> dict[str, Any]:
        s = self.settings
        args: dict[str, Any] = {
            "dtype": s.dtype,
            "max_model_len": s.max_model_len,
            "enable_lora": True,
            "max_loras": s.max_loras,
            "max_cpu_loras": s.max_cpu_loras,
            "max_lora_rank": s.max_lora_rank,
            "enable_prompt_embeds": True,
            "enforce_eager": s.enforce_eager,
            "max_num_seqs": s.max_num_seqs,
        }
        args.update(plan.engine_args)
        return args

    @property
    def staging_dir(self) -> Path:
        if self._staging is None:
            root = (self.settings.cache_dir or default_cache_dir()) / "adapters"
            root.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f"serve-{os.getpid()}-", dir=root))
        return self._staging

    def shutdown(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        if self.engine is not None:
            try:
                self.engine.shutdown()
            except Exception:  # shutting down anyway
                log.exception("engine shutdown failed")
