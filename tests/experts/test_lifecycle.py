"""Lifecycle bookkeeping over a fake engine: draining, adapter removal, watching a folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from fake_engine import FakeEngine
from safetensors.numpy import save_file

from server.api.app import create_app
from server.settings import Settings
from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.service

ADAPTER_CONFIG = {
    "peft_type": "LORA",
    "r": 2,
    "lora_alpha": 4,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj"],
    "base_model_name_or_path": "x",
}


def write_lora_expert(root: Path, name: str, version: str) -> Path:
    folder = write_expert(
        root,
        manifest(name, version=version, adapter={"type": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj"]}),
    )
    (folder / "adapter_config.json").write_text(json.dumps(ADAPTER_CONFIG))
    # tiny weights: the fake engine never reads them, but the server checks them (finite, F16/BF16/F32)
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.full((2, 8), 0.01, dtype="float32"),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.full((8, 2), 0.01, dtype="float32"),
        },
        str(folder / "adapter_model.safetensors"),
    )
    return folder


async def _run(settings: Settings, engine: FakeEngine, body):
    app = create_app(settings, engine_factory=lambda *a: engine)
    async with LifespanManager(app):
        await asyncio.wait_for(app.state.service.started(), 60)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await body(client, app.state.service)


def test_old_adapter_leaves_the_engine_only_after_its_last_request(tmp_path):
    write_lora_expert(tmp_path, "ex", "1.0.0")
    engine = FakeEngine(words=tuple(f"w{i} " for i in range(20)), delay=0.05)

    async def body(client, gw):
        first = next(iter(engine.loras.values()))
        slow = asyncio.create_task(
            client.post("/v1/chat/completions", json={"model": "ex", "messages": [{"role": "user", "content": "hi"}]})
        )
        await asyncio.sleep(0.2)  # the request is generating on version 1
        write_lora_expert(tmp_path, "ex", "2.0.0")
        reload = await client.post("/experts/ex/reload")
        removed_while_running = list(engine.removed)
        response = await slow
        await asyncio.sleep(0.05)
        return first, reload, removed_while_running, response

    first, reload, removed_while_running, response = asyncio.run(_run(Settings(experts_dir=tmp_path), engine, body))
    assert reload.status_code == 200
    assert reload.json()["old_version"] == "1.0.0" and reload.json()["new_version"] == "2.0.0"
    assert removed_while_running == []  # still serving the request that started on 1.0.0
    assert response.status_code == 200 and response.headers["x-expert-version"] == "1.0.0"
    assert engine.removed == [first]
    new = [h for h in engine.loras.values()]
    assert len(new) == 1 and new[0].id != first.id and new[0].name != first.name


def test_watch_reloads_a_changed_folder_and_skips_a_broken_one(tmp_path):
    write_lora_expert(tmp_path, "ex", "1.0.0")
    engine = FakeEngine()

    async def version(client) -> str:
        return (await client.get("/experts/ex")).json().get("version")

    async def wait_for_version(client, wanted: str, seconds: float = 20) -> str:
        for _ in range(int(seconds / 0.25)):
            if await version(client) == wanted:
                break
            await asyncio.sleep(0.25)
        return await version(client)

    async def body(client, gw):
        write_lora_expert(tmp_path, "ex", "2.0.0")
        after_change = await wait_for_version(client, "2.0.0")
        (tmp_path / "ex" / "manifest.json").write_text('{"name": "ex", "version": "3.0.0", ')  # half-written
        await asyncio.sleep(5)
        after_broken = await version(client)
        return after_change, after_broken

    after_change, after_broken = asyncio.run(_run(Settings(experts_dir=tmp_path, watch=True), engine, body))
    assert after_change == "2.0.0"
    assert after_broken == "2.0.0"


def test_unload_waits_for_draining_then_404(tmp_path):
    write_lora_expert(tmp_path, "ex", "1.0.0")
    engine = FakeEngine(words=tuple("abcdefghij"), delay=0.05)

    async def body(client, gw):
        running = asyncio.create_task(
            client.post("/v1/chat/completions", json={"model": "ex", "messages": [{"role": "user", "content": "hi"}]})
        )
        await asyncio.sleep(0.1)
        unload = await client.delete("/experts/ex")
        finished_first = running.done()
        after = await client.post(
            "/v1/chat/completions", json={"model": "ex", "messages": [{"role": "user", "content": "hi"}]}
        )
        return unload, finished_first, (await running), after

    unload, finished_first, running, after = asyncio.run(_run(Settings(experts_dir=tmp_path), engine, body))
    assert unload.status_code == 200 and unload.json()["drained"] is True
    assert finished_first  # the DELETE answered after the running request ended
    assert running.status_code == 200
    assert after.status_code == 404
    assert engine.loras == {}
