"""Prometheus metrics: the gateway's own, per expert and version, in a per-app registry,
exported at `/metrics` together with vLLM's `vllm:*` families.

Label values never come from unchecked client input: a request for a model that does not
exist is counted with `expert=""`.

For routers: adapter residency per expert (resident, evictions, load time, time to first token
cold or warm; see server/experts/residency.py), and vLLM's series that the Kubernetes Gateway
API Inference Extension's endpoint picker reads (`vllm:num_requests_waiting`,
`vllm:kv_cache_usage_perc`, `vllm:lora_requests_info` with `running_lora_adapters`,
`waiting_lora_adapters` and `max_lora`), the adapters named by their expert, as clients send
them in `model`, not by the engine's internal adapter names.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)
RELOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ev = ["expert", "version"]
        self.requests = Counter(
            "expert_gateway_requests", "Chat completion requests by HTTP status.", [*ev, "status"], registry=r
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
            [*ev, "check", "result"],
            registry=r,
        )
        self.adapter_resident = Gauge(
            "expert_gateway_adapter_resident",
            "1 while the engine holds the expert's LoRA adapter in its adapter cache, else 0.",
            ev,
            registry=r,
        )
        self.adapter_evictions = Counter(
            "expert_gateway_adapter_evictions",
            "Times the engine dropped the expert's adapter from its adapter cache (seen by the gateway).",
            ["expert"],
            registry=r,
        )
        self.adapter_load = Histogram(
            "expert_gateway_adapter_load_seconds",
            "Time to load an expert's LoRA adapter into the engine.",
            ["expert"],
            buckets=RELOAD_BUCKETS,
            registry=r,
        )
        self.adapter_ttft = Histogram(
            "expert_gateway_adapter_time_to_first_token_seconds",
            "Time to first token of requests to LoRA experts; adapter=cold: the adapter had not served "
            "since it was loaded or was not resident, warm: it was resident and had served.",
            ["expert", "adapter"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._expert_of_lora: dict[str, str] = {}  # the engine's adapter name -> expert name

    def set_loaded(self, experts: Iterable[tuple[str, str, str, str, str]]) -> None:
        """Replace the info gauge with (expert, version, base_model, adapter, soft_prompt) rows."""
        self.info.clear()
        rows = list(experts)
        for row in rows:
            self.info.labels(*row).set(1)
            if row[3]:
                # kept after an unload or reload: a draining old version still runs under its name
                self._expert_of_lora[row[3]] = row[0]
        self.loaded.set(len(rows))

    def render(self) -> bytes:
        vllm = _Only(PROCESS_REGISTRY, "vllm:", self._expert_of_lora)
        return generate_latest(self.registry) + generate_latest(vllm)


LORA_INFO = "vllm:lora_requests_info"
LORA_LIST_LABELS = ("running_lora_adapters", "waiting_lora_adapters")


class _Only:
    """A view of a registry with the metric families whose name starts with a prefix; in
    vLLM's `vllm:lora_requests_info`, adapter names become expert names (`expert_of`)."""

    def __init__(self, registry: CollectorRegistry, prefix: str, expert_of: dict[str, str] | None = None):
        self._registry = registry
        self._prefix = prefix
        self._expert_of = expert_of or {}

    def collect(self):
        for family in self._registry.collect():
            if family.name.startswith(self._prefix):
                yield expert_named(family, self._expert_of) if family.name == LORA_INFO else family


def expert_named(family: Metric, expert_of: dict[str, str]) -> Metric:
    """`vllm:lora_requests_info` with each comma-separated adapter name replaced by its expert's
    (unknown names kept), samples that become the same merged (the latest time stays)."""
    merged: dict[tuple, tuple[str, dict[str, str], float]] = {}
    for sample in family.samples:
        labels = dict(sample.labels)
        for label in LORA_LIST_LABELS:
            if labels.get(label):
                names = [expert_of.get(n, n) for n in labels[label].split(",")]
                labels[label] = ",".join(dict.fromkeys(names))
        key = (sample.name, tuple(sorted(labels.items())))
        if key not in merged or merged[key][2] < sample.value:
            merged[key] = (sample.name, labels, sample.value)
    out = Metric(family.name, family.documentation, family.type, family.unit)
    for name, labels, value in merged.values():
        out.add_sample(name, labels, value)
    return out
