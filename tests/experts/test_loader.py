"""Building expert versions over a fake engine: each manifest is read once per load (start-up
plans the engine from the manifests it then loads; a reload reads the folder's manifest once),
and a lease holds its version until the block ends, an error included."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fake_engine import FakeEngine
from test_lifecycle import write_lora_expert

from server.api.app import create_app
from server.experts import loader
from server.experts.registry import UnknownExpert
from server.settings import Settings
from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.service


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[Path]:
    """Manifest files read by the loader, counted by path."""
    counted: Counter[Path] = Counter()
    real = loader.read_manifest_json

    def counting(path: Path):
        counted[path] += 1
        return real(path)

    monkeypatch.setattr(loader, "read_manifest_json", counting)
    return counted


async def _run(settings: Settings, engine: FakeEngine, body):
    app = create_app(settings, engine_factory=lambda *a: engine)
    async with LifespanManager(app):
        state = await asyncio.wait_for(app.state.service.started(), 60)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await body(client, state)


def test_start_up_and_reload_read_each_manifest_once(tmp_path, reads):
    write_expert(tmp_path, manifest("first", runtime={"max_model_len": 64}))
    write_lora_expert(tmp_path, "second", "1.0.0")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"name": "broken", ')

    async def body(client, state):
        at_start = dict(reads)
        reads.clear()
        reload = await client.post("/experts/second/reload")
        ready = (await client.get("/ready")).json()
        return at_start, dict(reads), reload, ready

    at_start, at_reload, reload, ready = asyncio.run(_run(Settings(experts_dir=tmp_path), FakeEngine(), body))
    assert at_start == {tmp_path / n / "manifest.json": 1 for n in ("first", "second", "broken")}
    assert reload.status_code == 200, reload.text
    assert at_reload == {tmp_path / "second" / "manifest.json": 1}
    assert ready["experts"] == ["first", "second"] and list(ready["not_loaded"]) == ["broken"]


def test_a_lease_holds_its_version_until_the_block_ends(tmp_path):
    write_lora_expert(tmp_path, "ex", "1.0.0")
    engine = FakeEngine()

    async def body(client, state):
        registry = state.registry
        with pytest.raises(UnknownExpert):
            async with registry.lease("nobody"):
                pass
        old = registry.get("ex")
        with pytest.raises(RuntimeError):
            async with registry.lease("ex") as leased:
                assert leased is old and registry.in_flight(old) == 1
                write_lora_expert(tmp_path, "ex", "2.0.0")
                reload = await client.post("/experts/ex/reload")
                removed_inside = list(engine.removed)
                raise RuntimeError("the request failed")
        return old, reload, removed_inside, registry.in_flight(old), list(engine.removed)

    old, reload, removed_inside, left, removed_after = asyncio.run(_run(Settings(experts_dir=tmp_path), engine, body))
    assert reload.status_code == 200 and reload.json()["new_version"] == "2.0.0"
    assert removed_inside == []  # the leased version stays in the engine while leased
    assert left == 0
    assert removed_after == [old.lora]


def test_each_soft_prompt_file_is_read_once_per_load(tmp_path, monkeypatch):
    """The artifact check hashes, parses and checks the file from one read; the loader serves that tensor."""
    import builtins
    import hashlib
    import io

    import safetensors
    import safetensors.torch
    import torch

    from server.manifest.soft_prompt import save_soft_prompt

    folder = tmp_path / "prompted"
    tensor = torch.randn(4, 576, generator=torch.Generator().manual_seed(3))
    save_soft_prompt(tensor, folder / "soft_prompts" / "p.safetensors")
    sha = hashlib.sha256((folder / "soft_prompts" / "p.safetensors").read_bytes()).hexdigest()
    entry = {"name": "p", "path": "soft_prompts/p.safetensors", "tokens": 4, "sha256": sha}
    write_expert(tmp_path, manifest("prompted", soft_prompts=[entry]))
    file = (folder / "soft_prompts" / "p.safetensors").resolve()

    opens: Counter[str] = Counter()
    real_open = io.open

    def counting_open(name, *args, **kwargs):
        if isinstance(name, (str, Path)) and Path(name).resolve() == file:
            opens["open"] += 1
        return real_open(name, *args, **kwargs)

    def no_file_reader(*args, **kwargs):
        raise AssertionError("a soft prompt was read by path a second time")

    monkeypatch.setattr(io, "open", counting_open)  # Path.open and Path.read_bytes go through it
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(safetensors.torch, "load_file", no_file_reader)
    monkeypatch.setattr(safetensors, "safe_open", no_file_reader)

    async def body(client, state):
        at_start = dict(opens)
        served_at_start = state.registry.get("prompted").soft_prompts["p"]
        opens.clear()
        reload = await client.post("/experts/prompted/reload")
        return at_start, served_at_start, dict(opens), reload, state.registry.get("prompted").soft_prompts["p"]

    at_start, served, at_reload, reload, served_after = asyncio.run(
        _run(Settings(experts_dir=tmp_path), FakeEngine(), body)
    )
    assert at_start == {"open": 1}
    assert reload.status_code == 200, reload.text
    assert at_reload == {"open": 1}
    assert torch.equal(served, tensor) and torch.equal(served_after, tensor)
