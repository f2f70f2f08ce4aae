"""Adapter residency (server/experts/residency.py) and the series a Gateway API Inference
Extension endpoint picker reads, with expert names (server/metrics.py)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.experts.residency import COLD, WARM, Residency
from server.metrics import LORA_INFO, Metrics, _Only

pytestmark = pytest.mark.unit


def samples(metrics: Metrics, name: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_cold_then_warm_then_cold_after_an_eviction():
    m = Metrics()
    r = Residency(m)
    r.loaded("sql", "1.0.0", 7, 0.25)
    assert samples(m, "expert_gateway_adapter_resident") == {(("expert", "sql"), ("version", "1.0.0")): 1.0}
    assert samples(m, "expert_gateway_adapter_load_seconds_count") == {(("expert", "sql"),): 1.0}
    assert r.request(7) == COLD  # first request after the load: placed in a slot
    assert r.request(7) == WARM
    r.refresh([7, 9])
    assert r.request(7) == WARM
    r.refresh([9])  # the engine dropped it from its cache
    assert samples(m, "expert_gateway_adapter_resident")[(("expert", "sql"), ("version", "1.0.0"))] == 0.0
    assert samples(m, "expert_gateway_adapter_evictions_total") == {(("expert", "sql"),): 1.0}
    assert r.request(7) == COLD
    r.refresh([9])  # still out: not evicted twice
    assert samples(m, "expert_gateway_adapter_evictions_total") == {(("expert", "sql"),): 1.0}
    r.refresh([7, 9])  # the cold request made the engine load it again, and used it
    assert r.request(7) == WARM
    assert r.request(12345) == COLD  # an adapter the gateway does not know


def test_ttft_is_labelled_cold_or_warm_and_removal_drops_the_resident_series():
    m = Metrics()
    r = Residency(m)
    r.loaded("sql", "1.0.0", 7, 0.1)
    r.first_token("sql", r.request(7), 0.9)
    r.first_token("sql", r.request(7), 0.05)
    counts = samples(m, "expert_gateway_adapter_time_to_first_token_seconds_count")
    assert counts == {(("adapter", "cold"), ("expert", "sql")): 1.0, (("adapter", "warm"), ("expert", "sql")): 1.0}
    r.removed(7)
    r.removed(7)  # twice is harmless
    assert samples(m, "expert_gateway_adapter_resident") == {}


def test_lora_requests_info_names_experts():
    """vLLM labels its gauge with the engine's adapter names; the picker matches the request's
    `model`, an expert name."""
    m = Metrics()
    m.set_loaded([("sql", "2.0.0", "base", "sql@2.0.0#3", ""), ("chat", "1.0.0", "base", "chat@1.0.0#1", "")])
    m.set_loaded([("chat", "1.0.0", "base", "chat@1.0.0#1", "")])  # sql unloaded; its old name still maps
    engine = CollectorRegistry()
    gauge = Gauge(
        LORA_INFO,
        "Running stats on lora requests.",
        ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        registry=engine,
    )
    gauge.labels("5", "", "sql@2.0.0#3,chat@1.0.0#1").set(100.0)
    gauge.labels("5", "sql@2.0.0#3", "chat@1.0.0#1,other").set(101.0)
    gauge.labels("5", "", "sql@2.0.0#4,sql@2.0.0#3").set(50.0)  # two versions of one expert
    Gauge("vllm:num_requests_waiting", "Waiting.", registry=engine).set(2)
    Gauge("not_vllm", "Not exported.", registry=engine).set(1)
    text = generate_latest(_Only(engine, "vllm:", m._expert_of_lora)).decode()
    found = {
        (s.labels["running_lora_adapters"], s.labels["waiting_lora_adapters"], s.labels["max_lora"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == LORA_INFO
        for s in family.samples
    }
    assert found == {
        ("sql,chat", "", "5"): 100.0,
        ("chat,other", "sql", "5"): 101.0,
        ("sql@2.0.0#4,sql", "", "5"): 50.0,  # a name the gateway never loaded stays as it is
    }
    assert "vllm:num_requests_waiting 2.0" in text and "not_vllm" not in text
