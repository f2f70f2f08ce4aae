"""Prometheus metrics: the gateway's own, per expert and version, in a per-app registry,
exported at `/metrics` together with vLLM's `vllm:*` families.

Label values never come from unchecked client input: a request for a model that does not
exist is counted with `expert=""`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)
RELOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ev = ["expert", "version"]
        self.requests = Counter(
            "expert_gateway_requests", "Chat completion requests by HTTP status.", ev + ["status"], registry=r
        )
        self.latency = Histogram(
            "expert_gateway_request_duration_seconds",
            "Time from request to last byte.",
            ev,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "expert_gateway_time_to_first_token_seconds",
            "Time from request to first token.",
            ev,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "expert_gateway_prompt_tokens", "Prompt tokens (soft-prompt tokens included).", ev, registry=r
        )
        self.generation_tokens = Counter("expert_gateway_generation_tokens", "Generated tokens.", ev, registry=r)
        self.in_flight = Gauge("expert_gateway_requests_in_flight", "Requests being generated.", ev, registry=r)
        self.info = Gauge(
            "expert_gateway_expert_info",
            "Loaded experts (value 1), with what each is made of.",
            ["expert", "version", "base_model", "adapter", "soft_prompt"],
            registry=r,
        )
        self.loaded = Gauge("expert_gateway_experts_loaded", "Number of experts loaded.", registry=r)
        self.reloads = Counter("expert_gateway_reloads", "Expert reloads by result.", ["expert", "result"], registry=r)
        self.reload_duration = Histogram(
            "expert_gateway_reload_duration_seconds",
            "Duration of expert reloads.",
            ["expert"],
            buckets=RELOAD_BUCKETS,
            registry=r,
        )
        self.output_checks = Counter(
            "expert_gateway_output_validations",
            "Answers checked by the manifest's training.decoding.validation.",
            ev + ["check", "result"],
            registry=r,
        )

    def set_loaded(self, experts: Iterable[tuple[str, str, str, str, str]]) -> None:
        """Replace the info gauge with (expert, version, base_model, adapter, soft_prompt) rows."""
        self.info.clear()
        rows = list(experts)
        for row in rows:
            self.info.labels(*row).set(1)
        self.loaded.set(len(rows))

    def render(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(_Only(PROCESS_REGISTRY, "vllm:"))


class _Only:
    """A view of a registry with the metric families whose name starts with a prefix."""

    def __init__(self, registry: CollectorRegistry, prefix: str):
        self._registry = registry
        self._prefix = prefix

    def collect(self):
        for family in self._registry.collect():
            if family.name.startswith(self._prefix):
                yield family
