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
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.errors import EngineFailure, InvalidRequest, NotReady
from server.manifest.sampling import Sampling, StructuredOutput

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
    sampling: Sampling  # resolved values (see server/manifest/sampling.py)
    prompt_embeds: Any = None  # torch.Tensor [n, hidden] when a soft prompt is prepended
    lora: LoRAHandle | None = None
    structured: StructuredOutput | None = None
    logprobs: int | None = None  # report log probabilities with this many alternatives per token; None: none
    logit_bias: dict[int, float] | None = None  # token id -> bias added to its logit


@dataclass(frozen=True)
class TopToken:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability, and the most likely tokens at its position (by rank)."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopToken, ...] = ()


@dataclass
class Completion:
    index: int
    text: str  # the new text since the previous step (steps are deltas)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when asked for


@dataclass
class GenerationStep:
    completions: list[Completion]
    prompt_tokens: int
    finished: bool


@dataclass(frozen=True)
class ParsedAnswer:
    """A model's answer read by a tool parser: the text before the calls, and the calls."""

    content: str | None
    calls: list[tuple[str, str]]  # (function name, arguments as a JSON string)


class ToolCallParser:
    """One of vLLM's tool parsers (`vllm/tool_parsers`), reading the tool calls a model wrote
    in its own syntax (Hermes' `<tool_call>{...}</tool_call>`, Llama's JSON, ...) out of a
    complete answer; used for tool_choice "auto"."""

    def __init__(self, name: str, tokenizer: Any):
        from vllm.tool_parsers import ToolParserManager

        try:
            parser_class = ToolParserManager.get_tool_parser(name)
        except KeyError:
            known = ", ".join(sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers}))
            raise ValueError(f"no vLLM tool parser named {name!r}; vLLM has: {known}") from None
        self.name = name
        self._parser_class = parser_class
        self._tokenizer = tokenizer

    def parse(self, text: str, tools: list[dict[str, Any]]) -> ParsedAnswer:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        try:
            request = ChatCompletionRequest.model_validate({"model": "-", "messages": [], "tools": tools})
            offered: list[Any] = list(request.tools or [])
            parser = self._parser_class(self._tokenizer, offered)  # parsers keep state: one per answer
            info = parser.extract_tool_calls(text, request)
        except Exception:  # tools vLLM's request model refuses, or a parser failing on odd text: the answer stays text
            return ParsedAnswer(text, [])
        if not info.tools_called:
            return ParsedAnswer(text, [])
        calls = [(c.function.name, c.function.arguments) for c in info.tool_calls if c.function.name]
        names = {t.function.name for t in offered}
        if not calls or any(name not in names for name, _ in calls):
            # a call to a function the request did not offer is not a tool call the client can
            # run (the parsers pass any name through): the answer stays text, as the model wrote it
            return ParsedAnswer(text, [])
        return ParsedAnswer(info.content or None, calls)


class Engine(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationStep]: ...
    async def add_lora(self, handle: LoRAHandle) -> None: ...
    async def remove_lora(self, handle: LoRAHandle) -> None: ...
    async def list_loras(self) -> set[int]: ...
    async def check_health(self) -> None: ...
    def shutdown(self) -> None: ...

    @property
    def dead(self) -> bool: ...


def known_attention_backends() -> frozenset[str]:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return frozenset(b.name for b in AttentionBackendEnum)


def supported_kv_cache_dtypes(platform: str) -> frozenset[str] | None:
    """The KV-cache dtypes the platform's attention backend accepts; None where the backend
    is chosen at engine start (CUDA: it depends on the GPU)."""
    if platform != "cpu":
        return None
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return frozenset(CPUAttentionBackend.supported_kv_cache_dtypes)


def configure_cpu_environment() -> None:
    """vLLM CPU settings that must be in the environment before the engine starts."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max((os.cpu_count() or 1) - 1, 0)}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _token_logprobs(output: Any, req: GenerationRequest) -> list[TokenLogprob] | None:
    """vLLM's per-token logprob dicts (the sampled token, and the top `req.logprobs` by rank) as
    TokenLogprob; alternatives sorted by rank, the sampled token's own entry kept only if ranked."""
    if req.logprobs is None or output.logprobs is None:
        return None
    out = []
    for token_id, position in zip(output.token_ids, output.logprobs, strict=False):
        ranked = sorted(
            (lp.rank or 0, tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= req.logprobs
        )
        top = tuple(TopToken(tid, lp.decoded_token or "", float(lp.logprob)) for _, tid, lp in ranked)
        own = position.get(token_id)
        out.append(
            TokenLogprob(
                token_id,
                (own.decoded_token if own is not None else None) or "",
                float(own.logprob) if own is not None else float("-inf"),
                top,
            )
        )
    return out


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

        structured = None
        if req.structured is not None:
            structured = StructuredOutputsParams(**req.structured.to_structured_outputs_kwargs())
        return SamplingParams(
            **req.sampling.to_sampling_params_kwargs(),
            structured_outputs=structured,
            logprobs=req.logprobs,
            logit_bias=req.logit_bias,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationStep]:
        from vllm.exceptions import VLLMClientError
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
        except (ValueError, VLLMClientError) as exc:  # vLLM's own checks of sampling values
            raise InvalidRequest(str(exc)) from None
        try:
            async for out in self._llm.generate(prompt, params, req.request_id, lora_request=lora):
                yield GenerationStep(
                    completions=[
                        Completion(o.index, o.text, list(o.token_ids), o.finish_reason, _token_logprobs(o, req))
                        for o in out.outputs
                    ],
                    prompt_tokens=len(out.prompt_token_ids or [])
                    or (
                        int(req.prompt_embeds.shape[0]) if req.prompt_embeds is not None else len(req.prompt_token_ids)
                    ),
                    finished=out.finished,
                )
        except EngineDeadError:
            self._dead = True
            log.error("the vLLM engine died")
            raise NotReady("the engine died; the server is exiting to be restarted") from None
        except (asyncio.CancelledError, GeneratorExit):
            # AsyncLLM aborts the request itself when its generator is cancelled.
            raise
        except (ValueError, VLLMClientError) as exc:  # VLLMValidationError is not a ValueError
            raise InvalidRequest(str(exc)) from None
        except Exception as exc:
            log.exception("generation failed")
            raise EngineFailure("generation failed in the engine") from exc

    def engine_config(self) -> dict[str, Any]:
        """The running engine's own configuration (its `vllm_config`), for the engine args the
        manifests' runtime hints ask for: what the engine runs with, not what was asked."""
        from vllm.platforms import current_platform

        config = self._llm.vllm_config
        backend = getattr(getattr(config, "attention_config", None), "backend", None)
        chosen = getattr(backend, "name", None)
        if current_platform.is_cpu():
            chosen = "CPU_ATTN"  # vLLM's CPU platform runs every model's attention with it
        return {
            "attention_backend": chosen or "auto",
            "enable_prefix_caching": bool(config.cache_config.enable_prefix_caching),
            "kv_cache_dtype": str(config.cache_config.cache_dtype),
            "max_model_len": int(config.model_config.max_model_len),
        }

    async def probe(
        self,
        request_id: str,
        *,
        prompt_token_ids: list[int] | None = None,
        prompt_embeds: Any = None,
        lora: LoRAHandle | None = None,
        max_tokens: int = 1,
        logprobs: int | None = None,
        stop: list[str] | None = None,
        grammar: str | None = None,
        json_object: bool = False,
    ) -> dict[str, Any]:
        """One greedy generation for a load-time probe: the text, the token ids, the finish
        reason and, with `logprobs`, the top log-probabilities of the first token."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if grammar is not None:
            structured = StructuredOutputsParams(grammar=grammar)
        elif json_object:
            structured = StructuredOutputsParams(json_object=True)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            logprobs=logprobs,
            stop=stop or None,
            structured_outputs=structured,
        )
        prompt: dict[str, Any] = (
            {"prompt_embeds": prompt_embeds} if prompt_embeds is not None else {"prompt_token_ids": prompt_token_ids}
        )
        lora_request = LoRARequest(lora.name, lora.id, lora.path) if lora else None
        final = None
        async for out in self._llm.generate(prompt, params, request_id, lora_request=lora_request):
            final = out
        assert final is not None
        o = final.outputs[0]
        first: dict[int, float] = {}
        if logprobs and o.logprobs:
            first = {int(t): float(lp.logprob) for t, lp in o.logprobs[0].items()}
        return {
            "text": o.text,
            "token_ids": list(o.token_ids),
            "finish_reason": o.finish_reason,
            "logprobs": first,
        }

    async def add_lora(self, handle: LoRAHandle) -> None:
        from vllm.lora.request import LoRARequest

        ok = await self._llm.add_lora(LoRARequest(handle.name, handle.id, handle.path))
        if ok is False:
            raise RuntimeError(f"the engine refused LoRA adapter {handle.path}")

    async def remove_lora(self, handle: LoRAHandle) -> None:
        await self._llm.remove_lora(handle.id)

    async def list_loras(self) -> set[int]:
        """The ids of the adapters the engine holds in its adapter cache now."""
        return set(await self._llm.list_loras())

    async def check_health(self) -> None:
        await self._llm.check_health()

    def shutdown(self) -> None:
        import gc

        llm, self._llm = self._llm, None
        self._dead = True
        if llm is not None:
            stop_output_handler(llm)
            llm.shutdown()
            del llm
            gc.collect()  # AsyncLLM.__del__ shuts down again: let it run now, not at interpreter exit


def stop_output_handler(llm: Any, timeout_s: float = 10.0) -> None:
    """Cancel `AsyncLLM`'s output handler before its engine processes stop.

    vLLM's `AsyncLLM.shutdown` stops the engine core first and cancels the handler after. The
    gateway shuts the engine down from a worker thread while its event loop runs, so in between the
    handler may read the closing of the engine's socket as a dead engine and log an ERROR with an
    `EngineDeadError` traceback at an ordinary shutdown. Cancelled first, it ends quietly. Requests
    still waiting (none after a graceful stop) get the engine's death as their error instead of
    waiting for outputs that will not come.
    """
    task = getattr(llm, "output_handler", None)
    if task is None or task.done():
        return
    loop = task.get_loop()
    try:
        on_loop = asyncio.get_running_loop() is loop
    except RuntimeError:
        on_loop = False

    def fail_waiting() -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        processor = getattr(llm, "output_processor", None)
        if processor is not None and processor.has_unfinished_requests():
            processor.propagate_error(EngineDeadError())

    if on_loop:  # the loop cannot run the handler until this shutdown returns: cancelling is enough
        task.cancel()
        fail_waiting()
        return
    if loop.is_closed() or not loop.is_running():
        return

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        fail_waiting()

    try:
        asyncio.run_coroutine_threadsafe(cancel(), loop).result(timeout_s)
    except (concurrent.futures.TimeoutError, RuntimeError):  # shutting down anyway
        log.warning("the engine's output handler did not stop within %.0f s", timeout_s)
