"""Soft prompts served as prompt embeddings, with the real engine; mixed traffic never kills it."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest
from conftest import _start_server, _stop

from trainer.synthetic import make_lora, manifest, write_expert, write_soft_prompt_expert

pytestmark = pytest.mark.engine

Q = [{"role": "user", "content": "Tell me a story."}]  # an open question: each soft prompt changes the answer


def chat(server, **body) -> httpx.Response:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": Q, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r


def text(r: httpx.Response) -> str:
    return r.json()["choices"][0]["message"]["content"]


def test_default_soft_prompt_is_applied_and_reported(server):
    default = chat(server, model="sp-expert")
    assert default.headers["x-expert-soft-prompt"] == "alpha"
    explicit = chat(server, model="sp-expert", soft_prompt="alpha")
    off = chat(server, model="sp-expert", soft_prompt="none")
    other = chat(server, model="sp-expert", soft_prompt="beta")
    assert off.headers["x-expert-soft-prompt"] == "none"
    assert other.headers["x-expert-soft-prompt"] == "beta"
    assert text(default) == text(explicit)
    assert len({text(default), text(off), text(other)}) == 3, (text(default), text(off), text(other))
    # the soft prompt's tokens count as prompt tokens
    assert default.json()["usage"]["prompt_tokens"] > off.json()["usage"]["prompt_tokens"]


def test_served_tokens_equal_peft_reference(server, experts_dir):
    """The engine's greedy tokens equal transformers + PEFT with the same adapter and prompt."""
    from trainer.reference import peft_greedy_tokens

    for sp in ("alpha", "beta", None):
        served = chat(server, model="sp-expert", soft_prompt=sp or "none", max_tokens=16, return_token_ids=True).json()[
            "choices"
        ][0]["token_ids"]
        reference = peft_greedy_tokens(experts_dir / "sp-expert", Q, max_new_tokens=16, soft_prompt=sp)
        assert served == reference, sp


def test_soft_prompt_shape_is_checked_at_load(server, experts_dir, base_path):
    folder = experts_dir / "sp-bad"
    shutil.copytree(experts_dir / "sp-expert", folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["name"] = "sp-bad"
    data["soft_prompts"][0]["tokens"] += 1  # the tensor has one row fewer than declared
    (folder / "manifest.json").write_text(json.dumps(data))
    r = httpx.post(f"{server.url}/experts/sp-bad/reload", timeout=60)
    assert r.status_code == 422, r.text
    assert any("tokens" in d for d in r.json()["error"]["details"])


async def _mixed_round(url: str, models: list[str], n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=180) as client:

        async def one(i: int) -> int:
            body = {
                "model": models[i % len(models)],
                "messages": [{"role": "user", "content": f"Tell me fact {i}."}],
                "max_tokens": 12,
                "temperature": 0,
                "stream": i % 2 == 0,
            }
            if i % 3 == 0:
                body.update(repetition_penalty=1.2, frequency_penalty=0.5, presence_penalty=0.3)
            r = await client.post(url + "/v1/chat/completions", json=body)
            await r.aread()
            if r.status_code == 200 and body["stream"] and '"error"' in r.text:
                return 599
            return r.status_code

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_mixed_traffic_always_succeeds(server):
    """Soft-prompt experts, LoRA experts and the base model at once; streaming or not; penalties or not."""
    models = ["sp-expert", "lora-a", server.base_model, "swap", "jsoner"]
    for _ in range(3):
        statuses = asyncio.run(_mixed_round(server.url, models, 30))
        assert statuses == [200] * 30, statuses
    assert httpx.get(server.url + "/ready").status_code == 200


@pytest.fixture(scope="module")
def unpatched_server(tmp_path_factory, base_path):
    """A server whose engine runs without this project's vLLM plugin (VLLM_PLUGINS names none)."""
    root = tmp_path_factory.mktemp("experts-unpatched")
    write_soft_prompt_expert(root, base_path)
    write_expert(root, manifest("plain-lora", adapter=make_lora(base_path, root / "plain-lora", seed=8)))
    running = _start_server(root, tmp_path_factory.mktemp("logs") / "unpatched.log", {"VLLM_PLUGINS": ""})
    try:
        yield running
    finally:
        _stop(running.process)


def test_without_the_plugin_mixed_prompts_kill_the_engine(unpatched_server):
    """The upstream bug this project designs around, reproduced: if vLLM fixes it, this fails
    and server/engine/plugin.py can go."""
    models = ["sp-expert", "plain-lora", unpatched_server.base_model]
    statuses: list[int] = []
    for _ in range(5):
        statuses += asyncio.run(_mixed_round(unpatched_server.url, models, 24))
        if httpx.get(unpatched_server.url + "/ready").status_code == 503:
            break
    assert httpx.get(unpatched_server.url + "/ready").status_code == 503
    assert 503 in statuses or 599 in statuses or 500 in statuses
    assert "einsum()" in unpatched_server.log()
