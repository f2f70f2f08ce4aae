"""Fates that change what the server does, through the real app over the fake engine: what
GET /experts/{name} shows, and refusals that keep an expert from being served (at start-up and
on reload)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from test_lifecycle import _run, write_lora_expert

from server.settings import Settings

pytestmark = pytest.mark.service


def _edit(folder: Path, **changes) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data.update(changes)
    (folder / "manifest.json").write_text(json.dumps(data))


def test_fates_and_refusals_over_the_app(tmp_path: Path) -> None:
    shown = write_lora_expert(tmp_path, "shown", "1.0.0")
    _edit(
        shown,
        homepage="https://example.org/shown",
        quality_metrics={"exact_match": 0.9},
        limitations=["short inputs only"],
        perf={"latency_ms_overhead": 3.0},
        constraints={"load_order": 0},
    )
    needy = write_lora_expert(tmp_path, "needy", "1.0.0")
    _edit(needy, constraints={"load_order": 1, "requires": ["shown@>=2.0.0"]})
    twice = write_lora_expert(tmp_path, "twice", "1.0.0")
    data = json.loads((twice / "manifest.json").read_text())
    second = dict(data["base_models"][0]["adapters"][0], path="second")
    data["base_models"][0]["adapters"].append(second)
    (twice / "manifest.json").write_text(json.dumps(data))
    settings = Settings(experts_dir=tmp_path, probe_on_load=False)

    async def body(client, service):
        r = await client.get("/experts/shown")
        assert r.status_code == 200, r.text
        info = r.json()
        assert info["about"]["homepage"] == "https://example.org/shown"
        assert info["about"]["quality_metrics"] == {"exact_match": 0.9}
        assert info["about"]["limitations"] == ["short inputs only"]
        assert info["about"]["perf"] == {"latency_ms_overhead": 3.0}
        fates = {f["field"]: f for f in info["fields"]}
        assert fates["quality_metrics.exact_match"]["detail"].startswith("shown by GET /experts/{name}")

        listing = (await client.get("/experts")).json()
        not_loaded = (
            {e["name"]: e for e in listing.get("not_loaded", [])}
            if isinstance(listing.get("not_loaded"), list)
            else listing.get("not_loaded", {})
        )
        text = json.dumps(not_loaded)
        assert "needy" in text and "does not satisfy 'shown@>=2.0.0'" in text
        assert "twice" in text and "one adapter per expert is served" in text

        r = await client.post("/experts/needy/reload")
        assert r.status_code == 422, r.text
        assert "does not satisfy 'shown@>=2.0.0'" in r.text
        _edit(needy, constraints={"load_order": 1, "requires": ["shown@>=1.0.0"]})
        r = await client.post("/experts/needy/reload")
        assert r.status_code == 200, r.text
        fates = {f["field"]: f for f in (await client.get("/experts/needy")).json()["fields"]}
        assert fates["constraints.requires"]["fate"] == "applied"

    import asyncio

    asyncio.run(_run(settings, FakeEngine(words=("a ",)), body))
