"""A hand-written engine with the interface of server.engine.vllm_engine.Engine, for tests of the HTTP
layer (errors, auth, names, lifecycle bookkeeping) that must not depend on generation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.engine.vllm_engine import Completion, GenerationRequest, GenerationStep, LoRAHandle


class FakeEngine:
    def __init__(
        self, words: tuple[str, ...] = ("Hello", " world", "."), fail_after: int | None = None, delay: float = 0.0
    ):
        self.words = words
        self.fail_after = fail_after
        self.delay = delay
        self.requests: list[GenerationRequest] = []
        self.loras: dict[int, LoRAHandle] = {}
        self.removed: list[LoRAHandle] = []
        self.dead = False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationStep]:
        from server.errors import EngineFailure

        self.requests.append(request)
        n = request.sampling.n
        for i, word in enumerate(self.words):
            if self.fail_after is not None and i >= self.fail_after:
                raise EngineFailure("generation failed in the engine")
            if self.delay:
                await asyncio.sleep(self.delay)
            last = i == len(self.words) - 1
            yield GenerationStep(
                completions=[Completion(k, word, [100 + i], "stop" if last else None) for k in range(n)],
                prompt_tokens=len(request.prompt_token_ids),
                finished=last,
            )

    async def add_lora(self, handle: LoRAHandle) -> None:
        self.loras[handle.id] = handle

    async def remove_lora(self, handle: LoRAHandle) -> None:
        self.loras.pop(handle.id, None)
        self.removed.append(handle)

    async def list_loras(self) -> set[int]:
        return set(self.loras)

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None
