"""The project's CPU LoRA ops (server/engine/lora_ops.py, installed by server/engine/plugin.py)
through the real engine: greedy tokens equal transformers + PEFT for several LoRA experts and
the base model sent at once (batches that mix adapters and tokens without one, every adapter
slot in use), and the series a Gateway API Inference Extension endpoint picker reads."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import _start_server, _stop

from trainer.synthetic import make_lora, manifest, write_expert

pytestmark = pytest.mark.engine

EXPERTS = ["ops-a", "ops-b", "ops-c", "ops-d"]  # as many as the engine's adapter slots
MESSAGES = [{"role": "user", "content": "Name three colours and a fruit."}]
TOKENS = 12


@pytest.fixture(scope="module")
def lora_experts(tmp_path_factory, base_path):
    root = tmp_path_factory.mktemp("experts-lora-ops")
    for n, name in enumerate(EXPERTS):
        adapter = make_lora(base_path, root / name, seed=40 + n, scale=0.05)
        write_expert(root, manifest(name, adapter=adapter, decoding={"temperature": 0}))
    return root


@pytest.fixture(scope="module")
def references(lora_experts):
    """Greedy tokens from transformers + PEFT: each expert, and the base model alone."""
    from trainer.reference import greedy_tokens, load_expert

    out = {
        name: greedy_tokens(load_expert(lora_experts / name, None), MESSAGES, TOKENS, stop_at_eos=True)
        for name in EXPERTS
    }
    base = load_expert(lora_experts / EXPERTS[0], None, use_adapter=False)
    out["base"] = greedy_tokens(base, MESSAGES, TOKENS, stop_at_eos=True)
    assert len({tuple(v) for v in out.values()}) >= 3, out  # the adapters change the answer
    return out


def _serve(root, tmp_path_factory, ops: str):
    log = tmp_path_factory.mktemp("logs") / f"lora-ops-{ops}.log"
    return _start_server(root, log, {"EXPERT_LORA_OPS": ops, "EXPERT_MAX_LORAS": str(len(EXPERTS))})


async def _all_at_once(url: str, models: list[str]) -> dict[str, list[int]]:
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(model: str) -> list[int]:
            body = {
                "model": model,
                "messages": MESSAGES,
                "max_tokens": TOKENS,
                "temperature": 0,
                "return_token_ids": True,
            }
            r = await client.post(url + "/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["token_ids"]

        answers = await asyncio.gather(*(one(m) for m in models))
    return dict(zip(models, answers, strict=True))


def _served(server, rounds: int = 2) -> list[dict[str, str]]:
    models = [*EXPERTS, server.base_model]
    return [asyncio.run(_all_at_once(server.url, models)) for _ in range(rounds)]


def test_project_ops_equal_peft_with_mixed_adapters(lora_experts, references, tmp_path_factory):
    server = _serve(lora_experts, tmp_path_factory, "project")
    try:
        for answers in _served(server):
            for name in EXPERTS:
                assert answers[name] == references[name], name
            assert answers[server.base_model] == references["base"]
        # the base model alone, after every slot has held an adapter
        alone = asyncio.run(_all_at_once(server.url, [server.base_model]))
        assert alone[server.base_model] == references["base"]
        _check_router_series(server)
    finally:
        _stop(server.process)


def _check_router_series(server) -> None:
    """/metrics carries what a Gateway API Inference Extension endpoint picker reads: queue,
    KV-cache use, and the running adapters under their expert names with the slot count."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    assert "vllm:num_requests_waiting" in families
    assert "vllm:kv_cache_usage_perc" in families
    info = families["vllm:lora_requests_info"].samples
    assert {s.labels["max_lora"] for s in info} == {str(len(EXPERTS))}
    running = {name for s in info for name in s.labels["running_lora_adapters"].split(",") if name}
    assert running == set(EXPERTS), running
