"""An expert whose grammar copies from the request's text (`input-span`), over a fake engine: the
grammar each request reaches the engine with is defined from that request's own words — the user's
messages in chat, the prompt in text completions — and a text that cannot define it is refused
before the engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fake_engine import FakeEngine
from xgrammar.testing import _is_grammar_accept_string

from server.api.app import create_app
from server.manifest import input_spans
from server.manifest.sampling import Grammar
from server.settings import Settings
from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.service

GRAMMAR = 'root ::= "{\\"v\\": \\"" input-span "\\"}"\n'


@pytest.fixture
def experts(tmp_path: Path) -> Path:
    decoding = {"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "grammar.gbnf", "max_tokens": 8}
    write_expert(tmp_path, manifest("copier", decoding=decoding), files={"grammar.gbnf": GRAMMAR})
    return tmp_path


def call(experts: Path, body) -> FakeEngine:
    engine = FakeEngine()
    settings = Settings(experts_dir=experts, max_model_len=8192, max_body_bytes=200_000, probe_on_load=False)

    async def main():
        app = create_app(settings, engine_factory=lambda model, name, args: engine)
        async with LifespanManager(app):
            await asyncio.wait_for(app.state.service.started(), 60)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                await body(client)

    asyncio.run(main())
    return engine


def grammar_of(engine: FakeEngine, i: int = 0) -> str:
    structured = engine.requests[i].structured
    assert isinstance(structured, Grammar)
    return structured.text


def test_chat_copies_from_the_users_messages_only(experts):
    async def body(client):
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "copier",
                "messages": [
                    {"role": "system", "content": "Answer tersely, stranger."},
                    {"role": "user", "content": "Who lives in Much Kilbarrack?"},
                    {"role": "assistant", "content": "Nobody, traveller."},
                    {"role": "user", "content": "And in Upper Cotswick?"},
                ],
            },
        )
        assert r.status_code == 200, r.text

    grammar = grammar_of(call(experts, body))
    for value in ["Much Kilbarrack", "Upper Cotswick", "And in Upper"]:
        assert _is_grammar_accept_string(grammar, '{"v": ' + json.dumps(value) + "}"), value
    for value in ["stranger", "traveller", "Kilbarrack And", "Cotswick?"]:  # system, assistant, across, edge
        assert not _is_grammar_accept_string(grammar, '{"v": ' + json.dumps(value) + "}"), value


def test_text_completions_copy_from_the_prompt_and_response_format_text_turns_it_off(experts):
    async def body(client):
        r = await client.post("/v1/completions", json={"model": "copier", "prompt": "The ferry leaves Stromness."})
        assert r.status_code == 200, r.text
        r = await client.get("/experts/copier")
        assert r.json()["constraint"] == "grammar" and r.json()["constraint_copies_input"] is True
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "copier",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "text"},
            },
        )
        assert r.status_code == 200, r.text

    engine = call(experts, body)
    assert _is_grammar_accept_string(grammar_of(engine), '{"v": "leaves Stromness"}')
    assert not _is_grammar_accept_string(grammar_of(engine), '{"v": "Kirkwall"}')
    assert engine.requests[1].structured is None


def test_a_text_that_cannot_define_the_rule_is_refused_before_the_engine(experts):
    async def body(client):
        for content in ["?! ...", "a " * (input_spans.MAX_WORDS + 1)]:
            r = await client.post(
                "/v1/chat/completions", json={"model": "copier", "messages": [{"role": "user", "content": content}]}
            )
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == "messages" and "copies values of its answer from the text" in err["message"]

    assert call(experts, body).requests == []
