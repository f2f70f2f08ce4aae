"""One request's observation: metrics and the access-log line, recorded exactly once."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.api.chat import Outcome, PlannedChat
from server.errors import APIError
from server.experts.residency import Residency
from server.metrics import Metrics

access_log = logging.getLogger("expert_gateway.access")


@dataclass
class Observation:
    metrics: Metrics
    log_json: bool
    start: float = field(default_factory=time.perf_counter)
    expert: str = ""
    version: str = ""
    request_id: str = ""
    output_check: str | None = None
    residency: Residency | None = None  # for the time to first token, cold or warm
    _adapter_state: str | None = None
    _done: bool = False
    _counted_in_flight: bool = False

    def attribute(self, model: object, registry: Any, served_model_name: str) -> None:
        """Label a request that fails before it is planned (an invalid parameter, ...) with the
        model it names, when that is a loaded expert or the base model; anything else stays
        `expert=""`, so label values never come from unchecked client input."""
        if not isinstance(model, str):
            return
        if model == served_model_name:
            self.expert, self.version = model, "base"
            return
        found = registry.get(model) if registry is not None else None
        if found is not None:
            self.expert, self.version = found.name, found.version

    def bind(self, plan: PlannedChat) -> None:
        self.expert = plan.expert.name if plan.expert else plan.model
        self.version = plan.expert.version if plan.expert else "base"
        self.request_id = plan.request_id
        self.output_check = plan.expert.output_check if plan.expert else None
        if self.residency is not None and plan.expert is not None and plan.expert.lora is not None:
            self._adapter_state = self.residency.request(plan.expert.lora.id)
        self.metrics.in_flight.labels(self.expert, self.version).inc()
        self._counted_in_flight = True

    def finish(self, status: int, outcome: Outcome | None = None) -> None:
        if self._done:
            return
        self._done = True
        elapsed = time.perf_counter() - self.start
        m, ev = self.metrics, (self.expert, self.version)
        if self._counted_in_flight:
            m.in_flight.labels(*ev).dec()
        m.requests.labels(*ev, str(status)).inc()
        prompt = completion = 0
        if outcome is not None:
            prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
            m.latency.labels(*ev).observe(elapsed)
            if outcome.first_token_at is not None:
                m.ttft.labels(*ev).observe(outcome.first_token_at - self.start)
                if self.residency is not None and self._adapter_state is not None:
                    self.residency.first_token(self.expert, self._adapter_state, outcome.first_token_at - self.start)
            m.prompt_tokens.labels(*ev).inc(prompt)
            m.generation_tokens.labels(*ev).inc(completion)
            if self.output_check == "json" and outcome.texts is not None and status == 200:
                for text in outcome.texts:
                    m.output_checks.labels(*ev, "json", "ok" if _parses(text) else "failed").inc()
        self._log(status, elapsed, prompt, completion)

    def _log(self, status: int, elapsed: float, prompt: int, completion: int) -> None:
        record: dict[str, Any] = {
            "request_id": self.request_id or "-",
            "expert": self.expert or "-",
            "version": self.version or "-",
            "status": status,
            "latency_ms": round(elapsed * 1000, 1),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
        if self.log_json:
            access_log.info(json.dumps(record))
        else:
            access_log.info(" ".join(f"{k}={v}" for k, v in record.items()))

    async def wrap_stream(self, chunks: AsyncIterator[bytes], outcome: Outcome) -> AsyncIterator[bytes]:
        status = 200
        try:
            async for chunk in chunks:
                yield chunk
        except APIError as exc:
            status = exc.status
        except BaseException:
            status = 499  # the client went away (nginx's convention)
            raise
        finally:
            self.finish(status, outcome)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False
