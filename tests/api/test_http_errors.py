"""The HTTP layer over a fake engine: every malformed request is refused in OpenAI's error
shape, with the right status, and never reaches the engine; keys; names that are paths."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fake_engine import FakeEngine

from server.api.app import create_app
from server.settings import Settings
from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.service

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
Q = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def experts(tmp_path: Path) -> Path:
    write_expert(tmp_path, manifest("plain", decoding={"temperature": 0.3}, runtime={"max_model_len": 64}))
    return tmp_path


def run(coro):
    return asyncio.run(coro)


async def _with_app(settings: Settings, engine: FakeEngine, body):
    app = create_app(settings, engine_factory=lambda model, name, args: engine)
    async with LifespanManager(app):
        gw = app.state.service
        await asyncio.wait_for(gw.started(), 60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await body(client, gw)


def call(experts: Path, body, engine: FakeEngine | None = None, **settings_kw):
    engine = engine or FakeEngine()
    settings = Settings(experts_dir=experts, max_model_len=256, max_body_bytes=4096, **settings_kw)
    return run(_with_app(settings, engine, body)), engine


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


BAD_BODIES = [
    ({"model": BASE, "messages": Q, "temperature": -0.1}, "temperature"),
    ({"model": BASE, "messages": Q, "temperature": 2.5}, "temperature"),
    ({"model": BASE, "messages": Q, "top_p": 0}, "top_p"),
    ({"model": BASE, "messages": Q, "top_p": 1.5}, "top_p"),
    ({"model": BASE, "messages": Q, "top_k": 0}, "top_k"),
    ({"model": BASE, "messages": Q, "max_tokens": 0}, "max_tokens"),
    ({"model": BASE, "messages": Q, "n": 0}, "n"),
    ({"model": BASE, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": BASE, "messages": []}, "messages"),
    ({"model": BASE}, "messages"),
    ({"messages": Q}, "model"),
    ({"model": BASE, "messages": Q, "stop": [""]}, "stop"),
    ({"model": BASE, "messages": Q, "tools": []}, "tools"),
    ({"model": BASE, "messages": Q, "max_tokens": 10_000}, "max_tokens"),
    ({"model": BASE, "messages": [{"role": "user", "content": "word " * 300}]}, "messages"),
    ({"model": "plain", "messages": [{"role": "user", "content": "word " * 60}]}, "messages"),
    ({"model": "plain", "messages": Q, "soft_prompt": "nope"}, "soft_prompt"),
    ({"model": BASE, "messages": Q, "response_format": {"type": "json_schema"}}, "response_format"),
]


@pytest.mark.parametrize("body,param", BAD_BODIES, ids=[p for _, p in BAD_BODIES])
def test_invalid_values_are_400_and_never_reach_the_engine(experts, body, param):
    async def go(client, gw):
        return await client.post("/v1/chat/completions", json=body)

    r, engine = call(experts, go)
    assert_error(r, 400, param=param)
    assert engine.requests == []


def test_unknown_model_is_404(experts):
    async def go(client, gw):
        return await client.post("/v1/chat/completions", json={"model": "nobody", "messages": Q})

    r, engine = call(experts, go)
    assert_error(r, 404, param="model", code="model_not_found")
    assert engine.requests == []


def test_not_json_and_not_object_are_400(experts):
    async def go(client, gw):
        a = await client.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        b = await client.post("/v1/chat/completions", json=[1, 2])
        return a, b

    (a, b), engine = call(experts, go)
    assert_error(a, 400)
    assert_error(b, 400)
    assert engine.requests == []


def test_oversized_body_is_413(experts):
    async def go(client, gw):
        return await client.post(
            "/v1/chat/completions", json={"model": BASE, "messages": [{"role": "user", "content": "x" * 10_000}]}
        )

    r, engine = call(experts, go)
    assert_error(r, 413)
    assert engine.requests == []


def test_a_valid_request_reaches_the_engine_with_resolved_sampling(experts):
    async def go(client, gw):
        return await client.post("/v1/chat/completions", json={"model": "plain", "messages": Q, "top_p": 0.5})

    r, engine = call(experts, go)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello world."
    (req,) = engine.requests
    assert req.sampling.temperature == 0.3 and req.sampling.top_p == 0.5
    # the manifest's context (64) bounds the default max_tokens
    assert req.sampling.max_tokens == 64 - len(req.prompt_token_ids)


def test_not_ready_is_503(experts):
    release = threading.Event()

    def slow_factory(model, name, args):
        release.wait(30)
        return FakeEngine()

    async def go():
        app = create_app(Settings(experts_dir=experts), engine_factory=slow_factory)
        async with (
            LifespanManager(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
        ):
            health = await client.get("/health")
            ready = await client.get("/ready")
            chat = await client.post("/v1/chat/completions", json={"model": BASE, "messages": Q})
            release.set()
            await asyncio.wait_for(app.state.service.started(), 30)
            ready_after = await client.get("/ready")
            return health, ready, chat, ready_after

    health, ready, chat, ready_after = run(go())
    assert health.status_code == 200
    assert_error(ready, 503)
    assert_error(chat, 503)
    assert ready_after.status_code == 200


def test_engine_failure_is_500_without_internals(experts):
    async def go(client, gw):
        return await client.post("/v1/chat/completions", json={"model": BASE, "messages": Q})

    r, _ = call(experts, go, engine=FakeEngine(fail_after=0))
    err = assert_error(r, 500)
    assert err["type"] == "engine_error"


def test_error_after_first_byte_is_one_sse_event(experts):
    async def go(client, gw):
        return await client.post("/v1/chat/completions", json={"model": BASE, "messages": Q, "stream": True})

    r, _ = call(experts, go, engine=FakeEngine(fail_after=2))
    assert r.status_code == 200
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["type"] == "engine_error"
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert "".join(c or "" for c in contents) == "Hello world"


# Literal ".." never leaves a client (it normalises dot segments); "%2E%2E" reaches the server as "..".
# An encoded "/" splits the path, so no route matches: 404.
@pytest.mark.parametrize("name", ["%2E%2E", "a..b", ".hidden", "-x", "x" * 200, "a%00b", "a%2Fb", "..%2Fetc"])
def test_names_that_are_not_plain_are_400_before_any_file_is_touched(experts, name):
    async def go(client, gw):
        a = await client.post(f"/experts/{name}/reload")
        b = await client.get(f"/experts/{name}")
        c = await client.delete(f"/experts/{name}")
        return a, b, c

    responses, engine = call(experts, go)
    for r in responses:
        assert r.status_code in (400, 404), r.text
        assert r.json()["error"]["type"] in ("invalid_request_error", "not_found_error")
    expected = 404 if "%2F" in name else 400
    assert [r.status_code for r in responses] == [expected] * 3
    assert engine.loras == {}


def test_keys_guard_inference_and_lifecycle(experts):
    async def go(client, gw):
        out = {}
        out["none"] = await client.post("/v1/chat/completions", json={"model": BASE, "messages": Q})
        out["bad"] = await client.post(
            "/v1/chat/completions", json={"model": BASE, "messages": Q}, headers={"Authorization": "Bearer wrong"}
        )
        out["client"] = await client.post(
            "/v1/chat/completions", json={"model": BASE, "messages": Q}, headers={"Authorization": "Bearer c-key"}
        )
        out["client_reload"] = await client.post("/experts/plain/reload", headers={"Authorization": "Bearer c-key"})
        out["admin_reload"] = await client.post("/experts/plain/reload", headers={"Authorization": "Bearer a-key"})
        out["admin_chat"] = await client.post(
            "/v1/chat/completions", json={"model": BASE, "messages": Q}, headers={"Authorization": "Bearer a-key"}
        )
        out["health"] = await client.get("/health")
        return out

    out, engine = call(experts, go, api_keys=["c-key"], admin_keys=["a-key"])
    assert_error(out["none"], 401, code="missing_api_key")
    assert_error(out["bad"], 401, code="invalid_api_key")
    assert out["client"].status_code == 200
    assert_error(out["client_reload"], 403)
    assert out["admin_reload"].status_code == 200
    assert out["admin_chat"].status_code == 200
    assert out["health"].status_code == 200
    assert len(engine.requests) == 2


def test_hashed_keys_file(experts, tmp_path):
    import hashlib

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"client": [hashlib.sha256(b"from-file").hexdigest()], "admin": []}))

    async def go(client, gw):
        ok = await client.get("/v1/models", headers={"Authorization": "Bearer from-file"})
        bad = await client.get("/v1/models", headers={"Authorization": "Bearer other"})
        return ok, bad

    (ok, bad), _ = call(experts, go, keys_file=keys)
    assert ok.status_code == 200
    assert_error(bad, 401)


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    from server.commands.serve import serve

    assert serve(Settings(host="0.0.0.0", experts_dir=tmp_path)) == 2


def test_unknown_route_and_wrong_method(experts):
    async def go(client, gw):
        return await client.get("/v2/nothing"), await client.get("/v1/chat/completions")

    (missing, wrong), _ = call(experts, go)
    assert_error(missing, 404)
    assert_error(wrong, 405)
