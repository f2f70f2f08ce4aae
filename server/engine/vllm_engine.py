"""The engine seam: the only module that imports vLLM.

`Engine` is the interface the app talks to; `VLLMEngine` runs a real `AsyncLLM`. Tests that
are about the HTTP layer may pass another implementation of the same interface to
`create_app`; everything about generation is tested against `VLLMEngine`.

Failures are sorted once, here: a cancelled generation aborts its engine request; an
engine that died raises `NotReady` (and stays dead); a request the engine refuses raises
`InvalidRequest`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.errors import EngineFailure, InvalidRequest, NotReady

log = logging.getLogger("expert_gateway.engine")


@dataclass(frozen=True)
class LoRAHandle:
    name: str  # never reused: a reused name serves a stale prefix cache in vLLM
    id: int
    path: str


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: dict[str, Any]  # resolved values (see sampling.py)
    prompt_embeds: Any = None  # torch.Tensor [n, hidden] when a soft prompt is prepended
    lora: LoRAHandle | None = None
    structured: tuple[str, Any] | None = None  # ("json_object", True) | ("json", schema) | ("grammar", text)


@dataclass
class Completion:
    index: int
    text: str  # the new text since the previous step (steps are deltas)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class GenerationStep:
    completions: list[Completion]
    prompt_tokens: int
    finished: bool


class Engine(Protocol):
    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationStep]: ...
    async def add_lora(self, handle: LoRAHandle) -> None: ...
    async def remove_lora(self, handle: LoRAHandle) -> None: ...
    async def check_health(self) -> None: ...
    def shutdown(self) -> None: ...

    @property
    def dead(self) -> bool: ...


def known_attention_backends() -> frozenset[str]:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return frozenset(b.name for b in AttentionBackendEnum)


def configure_cpu_environment() -> None:
    """vLLM CPU settings that must be in the environment before the engine starts."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max((os.cpu_count() or 1) - 1, 0)}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


class VLLMEngine:
    """One vLLM `AsyncLLM` serving one base model, with LoRA and prompt embeddings enabled."""

    def __init__(self, llm: Any):
        self._llm = llm
        self._dead = False

    @classmethod
    def start(cls, model: str, served_name: str, engine_args: dict[str, Any]) -> VLLMEngine:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=model, served_model_name=[served_name], **engine_args)
        log.info("starting vLLM engine: model=%s %s", model, engine_args)
        return cls(AsyncLLM.from_engine_args(args))

    @property
    def dead(self) -> bool:
        return self._dead or self._llm is None or bool(getattr(self._llm, "errored", False))

    def _sampling_params(self, req: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        s = req.sampling
        structured = None
        if req.structured is not None:
            kind, value = req.structured
            structured = StructuredOutputsParams(**{kind: value})
        return SamplingParams(
            n=s["n"],
            temperature=s["temperature"],
            top_p=s["top_p"],
            top_k=s["top_k"],
            min_p=s["min_p"],
            repetition_penalty=s["repetition_penalty"],
            presence_penalty=s["presence_penalty"],
            frequency_penalty=s["frequency_penalty"],
            max_tokens=s["max_tokens"],
            seed=s["seed"],
            stop=list(s["stop"]) or None,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationStep]:
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.dead:
            raise NotReady("the engine is not running")
        prompt: dict[str, Any]
        if req.prompt_embeds is not None:
            prompt = {"prompt_embeds": req.prompt_embeds}
        else:
            prompt = {"prompt_token_ids": req.prompt_token_ids}
        lora = LoRARequest(req.lora.name, req.lora.id, req.lora.path) if req.lora else None
        try:
            params = self._sampling_params(req)
        except ValueError as exc:  # vLLM's own checks of sampling values
            raise InvalidRequest(str(exc)) from None
        try:
            async for out in self._llm.generate(prompt, params, req.request_id, lora_request=lora):
                yield GenerationStep(
                    completions=[Completion(o.index, o.text, list(o.token_ids), o.finish_reason) for o in out.outputs],
                    prompt_tokens=len(out.prompt_token_ids or [])
                    or (
                        int(req.prompt_embeds.shape[0]) if req.prompt_embeds is not None else len(req.prompt_token_ids)
                    ),
                    finished=out.finished,
                )
        except EngineDeadError:
            self._dead = True
            log.error("the vLLM engine died")
            raise NotReady("the engine died; the server needs a restart") from None
        except (asyncio.CancelledError, GeneratorExit):
            # AsyncLLM aborts the request itself when its generator is cancelled.
            raise
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        except Exception as exc:
            log.exception("generation failed")
            raise EngineFailure("generation failed in the engine") from exc

    async def add_lora(self, handle: LoRAHandle) -> None:
        from vllm.lora.request import LoRARequest

        ok = await self._llm.add_lora(LoRARequest(handle.name, handle.id, handle.path))
        if ok is False:
            raise RuntimeError(f"the engine refused LoRA adapter {handle.path}")

    async def remove_lora(self, handle: LoRAHandle) -> None:
        await self._llm.remove_lora(handle.id)

    async def check_health(self) -> None:
        await self._llm.check_health()

    def shutdown(self) -> None:
        import gc

        llm, self._llm = self._llm, None
        self._dead = True
        if llm is not None:
            llm.shutdown()
            del llm
            gc.collect()  # AsyncLLM.__del__ shuts down again: let it run now, not at interpreter exit
