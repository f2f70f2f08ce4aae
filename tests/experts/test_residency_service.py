"""Adapter slots and residency through the app over the fake engine: the engine's `max_loras`
covers the LoRA experts, and /metrics follows what the engine holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fake_engine import FakeEngine
from prometheus_client.parser import text_string_to_metric_families

from server.api import service
from server.api.app import create_app
from server.settings import Settings
from trainer.synthetic import make_lora, manifest, write_expert

pytestmark = pytest.mark.service


def _values(text: str, name: str) -> dict[tuple, float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


def test_slots_cover_the_lora_experts_and_metrics_follow_the_engine(tmp_path: Path, base_path: Path, monkeypatch):
    monkeypatch.setattr(service, "RESIDENCY_SECONDS", 0.05)
    for n, name in enumerate(["res-a", "res-b"]):
        write_expert(tmp_path, manifest(name, adapter=make_lora(base_path, tmp_path / name, seed=60 + n)))
    write_expert(tmp_path, manifest("no-adapter"))
    engine = FakeEngine()
    seen: dict = {}

    def factory(model, name, args):
        seen.update(args)
        return engine

    async def body() -> tuple[str, str]:
        app = create_app(Settings(experts_dir=tmp_path, max_model_len=256), engine_factory=factory)
        async with LifespanManager(app):
            await asyncio.wait_for(app.state.service.started(), 60)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                before = (await client.get("/metrics")).text
                for _ in range(2):  # the first finds res-b's adapter cold, the second warm
                    r = await client.post(
                        "/v1/chat/completions",
                        json={"model": "res-b", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                    )
                    assert r.status_code == 200, r.text
                dropped = next(h for h in engine.loras.values() if h.name.startswith("res-a@"))
                del engine.loras[dropped.id]  # the engine evicts res-a's adapter from its cache
                await asyncio.sleep(0.5)
                return before, (await client.get("/metrics")).text

    before, after = asyncio.run(body())
    assert seen["max_loras"] == 2 and seen["max_cpu_loras"] >= 2  # a slot per LoRA expert
    resident = _values(before, "expert_gateway_adapter_resident")
    assert {dict(k)["expert"]: v for k, v in resident.items()} == {"res-a": 1.0, "res-b": 1.0}
    loads = _values(before, "expert_gateway_adapter_load_seconds_count")
    assert {dict(k)["expert"]: v for k, v in loads.items()} == {"res-a": 1.0, "res-b": 1.0}
    resident = _values(after, "expert_gateway_adapter_resident")
    assert {dict(k)["expert"]: v for k, v in resident.items()} == {"res-a": 0.0, "res-b": 1.0}
    assert {dict(k)["expert"]: v for k, v in _values(after, "expert_gateway_adapter_evictions_total").items()} == {
        "res-a": 1.0
    }
    ttft = _values(after, "expert_gateway_adapter_time_to_first_token_seconds_count")
    assert ttft == {(("adapter", "cold"), ("expert", "res-b")): 1.0, (("adapter", "warm"), ("expert", "res-b")): 1.0}
