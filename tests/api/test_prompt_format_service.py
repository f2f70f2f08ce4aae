"""The server renders each expert's prompt format (`base_models[].prompt_template`) before the
engine: hivellm's qwen3 and legacy chatml exactly, the tokenizer's own template otherwise; the
legacy format's end marker stops answers; messages a format cannot render are a 400."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_engine import FakeEngine
from test_http_errors import assert_error, call

from server.manifest import prompt_formats
from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.service

CAPS = ["database:postgresql"]


@pytest.fixture
def experts(tmp_path: Path) -> Path:
    for name, template in (("q3", "qwen3"), ("legacy", "chatml"), ("own", "tokenizer")):
        data = manifest(name, decoding={"temperature": 0})
        data["base_models"][0]["prompt_template"] = template
        data["capabilities"] = CAPS
        write_expert(tmp_path, data)
    return tmp_path


def _send(experts: Path, model: str, messages: list[dict], **extra):
    async def go(client, gw):
        body = {"model": model, "messages": messages, "max_tokens": 4, **extra}
        return await client.post("/v1/chat/completions", json=body), gw.ready_state().prompts.tokenizer

    (r, tokenizer), engine = call(experts, go, engine=FakeEngine())
    return r, tokenizer, engine


USER = [{"role": "user", "content": "Schema: users(id, name)\n\nFind all users"}]


@pytest.mark.parametrize("model", ["q3", "legacy", "own"])
def test_engine_gets_the_expert_format(experts: Path, model: str):
    r, tokenizer, engine = _send(experts, model, USER)
    assert r.status_code == 200, r.text
    (req,) = engine.requests
    template = {"q3": "qwen3", "legacy": "chatml", "own": "tokenizer"}[model]
    text = prompt_formats.render_prompt(template, USER, capabilities=CAPS, tokenizer=tokenizer)
    assert req.prompt_token_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    if model == "q3":
        assert tokenizer.decode(req.prompt_token_ids) == (
            "<|im_start|>system\nDialect: sql\nSchema: users(id, name)<|im_end|>\n"
            "<|im_start|>user\nFind all users<|im_end|>\n<|im_start|>assistant\n"
        )
    stops = list(req.sampling.stop or [])
    assert ("<|end|>" in stops) == (model == "legacy")


def test_legacy_end_marker_joins_the_request_stops(experts: Path):
    r, _, engine = _send(experts, "legacy", USER, stop=["SELECT"])
    assert r.status_code == 200, r.text
    assert list(engine.requests[0].sampling.stop) == ["SELECT", "<|end|>"]


def test_messages_a_format_cannot_render_are_400(experts: Path):
    turns = [*USER, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    r, _, engine = _send(experts, "q3", turns)
    assert_error(r, 400, "messages")
    assert "one user message" in r.json()["error"]["message"]
    assert engine.requests == []
