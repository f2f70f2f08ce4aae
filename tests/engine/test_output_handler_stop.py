"""`stop_output_handler`: the engine's output handler is cancelled before the engine stops, from the
event loop's thread or from a worker thread (as the gateway shuts down), and requests still waiting
get the engine's death as their error. (That the real engine then stops without logging an
`EngineDeadError` is checked by `expert eval`'s tests, tests/commands/test_eval.py.)"""

from __future__ import annotations

import asyncio

import pytest
from vllm.v1.engine.exceptions import EngineDeadError

from server.engine.vllm_engine import stop_output_handler

pytestmark = pytest.mark.unit


class Processor:
    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        self.errors: list[Exception] = []

    def has_unfinished_requests(self) -> bool:
        return self.waiting > 0

    def propagate_error(self, e: Exception) -> None:
        self.errors.append(e)


class LLM:
    def __init__(self, waiting: int) -> None:
        self.output_handler = asyncio.create_task(asyncio.sleep(3600))  # waits for outputs, as vLLM's does
        self.output_processor = Processor(waiting)


@pytest.mark.parametrize("waiting", [0, 2])
def test_from_a_worker_thread_the_handler_has_ended_before_the_call_returns(waiting):
    async def main() -> LLM:
        llm = LLM(waiting)
        await asyncio.sleep(0)
        await asyncio.to_thread(stop_output_handler, llm)
        assert llm.output_handler.cancelled()
        return llm

    llm = asyncio.run(main())
    assert [type(e) for e in llm.output_processor.errors] == [EngineDeadError] * (waiting > 0)


def test_on_the_loop_thread_the_handler_is_cancelled_and_waiting_requests_fail():
    async def main() -> LLM:
        llm = LLM(1)
        await asyncio.sleep(0)
        stop_output_handler(llm)  # blocking shutdown follows here: the loop runs the handler only after
        await asyncio.sleep(0)
        assert llm.output_handler.cancelled()
        return llm

    llm = asyncio.run(main())
    assert [type(e) for e in llm.output_processor.errors] == [EngineDeadError]


def test_an_ended_handler_or_none_is_left_alone():
    class Bare:
        pass

    stop_output_handler(Bare())  # an engine that never started its handler

    async def main() -> None:
        llm = LLM(1)
        await asyncio.sleep(0)
        llm.output_handler.cancel()
        await asyncio.sleep(0)
        stop_output_handler(llm)
        assert llm.output_processor.errors == []

    asyncio.run(main())
