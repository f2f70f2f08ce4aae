"""The OpenAI-compatible HTTP layer over the fake engine: field policy and its header, one 400
for every unsupported field, tool calls in the response and stream shapes, /v1/completions and
/v1/models/{id}; nothing refused reaches the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from test_http_errors import BASE, Q, assert_error, call

from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.service

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture
def experts(tmp_path: Path) -> Path:
    write_expert(tmp_path, manifest("plain", decoding={"temperature": 0.3}))
    write_expert(tmp_path, manifest("jsoner", decoding={"use_grammar": True, "grammar_type": "json"}))
    return tmp_path


def _events(text: str) -> list:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def test_ignored_fields_are_named_and_nulls_are_not_set(experts):
    body = {
        "model": BASE,
        "messages": [*Q, {"role": "assistant", "content": "x", "refusal": None, "annotations": None, "audio": None}],
        "metadata": {"a": "b"},
        "store": True,
        "user": "u",
        "tools": None,
        "logit_bias": None,
        "temperature": None,
        "stream_options": {"include_obfuscation": True},
    }

    async def go(client, gw):
        return await client.post("/v1/chat/completions", json=body)

    r, engine = call(experts, go)
    assert r.status_code == 200, r.text
    assert r.headers["x-expert-ignored"] == "metadata, store, user, stream_options.include_obfuscation"
    (req,) = engine.requests
    assert req.sampling.temperature == 1.0 and req.logit_bias is None and req.logprobs is None


def test_every_unsupported_field_in_one_400(experts):
    body = {"model": BASE, "messages": Q, "audio": {}, "functions": [], "verbosity": "low", "nope": 1, "nein": 2}

    async def go(client, gw):
        return await client.post("/v1/chat/completions", json=body)

    r, engine = call(experts, go)
    err = assert_error(r, 400, param="audio", code="unsupported_field")
    assert err["details"]["fields"] == ["audio", "functions", "verbosity", "nope", "nein"]
    assert engine.requests == []


BAD = [
    ({"model": BASE, "messages": Q, "top_logprobs": 3}, "top_logprobs"),
    ({"model": BASE, "messages": Q, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"model": BASE, "messages": Q, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"model": BASE, "messages": Q, "logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"model": BASE, "messages": Q, "logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"model": BASE, "messages": Q, "tools": [WEATHER]}, "tool_choice"),  # auto
    ({"model": BASE, "messages": Q, "tool_choice": "required"}, "tool_choice"),
    ({"model": BASE, "messages": Q, "tools": [WEATHER], "tool_choice": {"function": {"name": "x"}}}, "tool_choice"),
    ({"model": "jsoner", "messages": Q, "tools": [WEATHER], "tool_choice": NAMED}, "tools"),
    (
        {
            "model": BASE,
            "messages": Q,
            "tools": [WEATHER],
            "tool_choice": NAMED,
            "response_format": {"type": "json_object"},
        },
        "response_format",
    ),
    ({"model": BASE, "messages": [*Q, {"role": "tool", "content": "x"}]}, "messages.1"),
]


@pytest.mark.parametrize("body,param", BAD, ids=[p for _, p in BAD])
def test_invalid_tool_logprob_and_bias_requests_are_400(experts, body, param):
    async def go(client, gw):
        return await client.post("/v1/chat/completions", json=body)

    r, engine = call(experts, go)
    assert_error(r, 400, param=param)
    assert engine.requests == []


def test_named_tool_call_shapes_stream_and_not(experts):
    engine = FakeEngine(words=('{"city":', ' "Oslo"}'))
    body = {"model": BASE, "messages": Q, "tools": [WEATHER], "tool_choice": NAMED, "parallel_tool_calls": False}

    async def go(client, gw):
        whole = await client.post("/v1/chat/completions", json=body)
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
        return whole, streamed

    (whole, streamed), engine = call(experts, go, engine=engine)
    assert whole.status_code == 200, whole.text
    message = whole.json()["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert engine.requests[0].structured.schema == WEATHER["function"]["parameters"]
    deltas = [c["delta"] for e in _events(streamed.text) for c in e["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Oslo"}'
    assert "x-expert-ignored" not in whole.headers  # parallel_tool_calls is used when tools are given


def test_required_tool_calls_stream_whole_at_the_end(experts):
    engine = FakeEngine(words=('[{"name": "get_weather", ', '"parameters": {"city": "Rome"}}]'))
    body = {"model": BASE, "messages": Q, "tools": [WEATHER], "tool_choice": "required", "stream": True}

    async def go(client, gw):
        return await client.post("/v1/chat/completions", json=body)

    r, engine = call(experts, go, engine=engine)
    choices = [c for e in _events(r.text) for c in e["choices"]]
    assert choices[-1]["finish_reason"] == "tool_calls"
    (call_,) = choices[-1]["delta"]["tool_calls"]
    assert call_["index"] == 0 and json.loads(call_["function"]["arguments"]) == {"city": "Rome"}
    assert engine.requests[0].structured.schema["type"] == "array"


def test_history_with_tool_calls_reaches_the_prompt(experts):
    call_ = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "X"}'}}
    with_call = [*Q, {"role": "assistant", "content": None, "tool_calls": [call_]}]
    with_answer = [*with_call, {"role": "tool", "tool_call_id": "call_1", "content": "rain"}]

    async def go(client, gw):
        for messages in (with_call, with_answer):
            r = await client.post("/v1/chat/completions", json={"model": BASE, "messages": messages})
            assert r.status_code == 200, r.text

    _, engine = call(experts, go)
    a, b = engine.requests
    assert len(b.prompt_token_ids) > len(a.prompt_token_ids)


def test_completions_and_model_retrieve(experts):
    async def go(client, gw):
        whole = await client.post("/v1/completions", json={"model": "plain", "prompt": "Once", "user": "u"})
        ids = await client.post("/v1/completions", json={"model": BASE, "prompt": [1, 2, 3], "stream": True})
        several = await client.post("/v1/completions", json={"model": BASE, "prompt": ["a", "b"]})
        echo = await client.post("/v1/completions", json={"model": BASE, "prompt": "a", "echo": True, "suffix": "z"})
        base = await client.get(f"/v1/models/{BASE}")
        expert = await client.get("/v1/models/plain")
        missing = await client.get("/v1/models/nobody")
        return whole, ids, several, echo, base, expert, missing

    (whole, ids, several, echo, base, expert, missing), engine = call(experts, go)
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "Hello world."
    assert whole.headers["x-expert-ignored"] == "user" and whole.headers["x-expert-version"]
    assert json.loads(whole.headers["x-expert-sampling"])["temperature"]["source"] == "manifest"
    assert "".join(c["text"] for e in _events(ids.text) for c in e["choices"]) == "Hello world."
    assert engine.requests[1].prompt_token_ids == [1, 2, 3]
    assert_error(several, 400, param="prompt")
    err = assert_error(echo, 400, code="unsupported_field")
    assert err["details"]["fields"] == ["suffix", "echo"]
    assert base.json()["id"] == BASE and expert.json()["parent"] == BASE
    assert_error(missing, 404, code="model_not_found")
    assert len(engine.requests) == 2


HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def test_auto_tool_choice_reads_calls_with_the_vllm_parser(experts, tools_model):
    """tool_choice "auto" with EXPERT_TOOL_PARSER: the template shows the model its tools, the
    answer is not constrained, and vLLM's hermes parser turns the calls the model wrote into
    `tool_calls` (stream: one chunk at the end); an answer without calls stays text."""
    from transformers import AutoTokenizer

    engine = FakeEngine(words=("Let me look.", "\n" + HERMES_CALL))
    body = {"model": BASE, "messages": Q, "tools": [WEATHER]}  # "auto" is the default with tools

    async def go(client, gw):
        whole = await client.post("/v1/chat/completions", json=body)
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
        return whole, streamed

    settings = {"model": str(tools_model), "model_name": BASE, "tool_parser": "hermes"}
    (whole, streamed), engine = call(experts, go, engine=engine, **settings)
    assert whole.status_code == 200, whole.text
    choice = whole.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Let me look.\n"
    (tool_call_,) = message["tool_calls"]
    assert tool_call_["function"]["name"] == "get_weather" and tool_call_["id"].startswith("call_")
    assert json.loads(tool_call_["function"]["arguments"]) == {"city": "Oslo"}
    request = engine.requests[0]
    assert request.structured is None  # the model chooses: nothing constrains it
    prompt = AutoTokenizer.from_pretrained(str(tools_model)).decode(request.prompt_token_ids)
    assert "<tools>" in prompt and '"get_weather"' in prompt  # the template showed the tools

    chunks = [c for e in _events(streamed.text) for c in e["choices"]]
    assert chunks[-1]["finish_reason"] == "tool_calls"
    assert chunks[-1]["delta"]["content"] == "Let me look.\n"
    (streamed_call,) = chunks[-1]["delta"]["tool_calls"]
    assert streamed_call["index"] == 0 and json.loads(streamed_call["function"]["arguments"]) == {"city": "Oslo"}
    assert not any(c["delta"].get("content") for c in chunks[1:-1])  # held back until parsed

    text_only = FakeEngine(words=("It is", " sunny."))
    r, _ = call(
        experts, lambda client, gw: client.post("/v1/chat/completions", json=body), engine=text_only, **settings
    )
    choice = r.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "It is sunny."}
    assert choice["finish_reason"] == "stop"

    # a call to a function the request did not offer is returned as the text the model wrote
    unoffered = HERMES_CALL.replace("get_weather", "delete_files")
    r, _ = call(
        experts,
        lambda client, gw: client.post("/v1/chat/completions", json=body),
        engine=FakeEngine(words=(unoffered,)),
        **settings,
    )
    choice = r.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": unoffered}
    assert choice["finish_reason"] == "stop"


def test_auto_tool_choice_refusals_are_400_and_reach_no_engine(experts, tools_model):
    body = {"model": BASE, "messages": Q, "tools": [WEATHER], "tool_choice": "auto"}
    # no parser set
    r, engine = call(experts, lambda client, gw: client.post("/v1/chat/completions", json=body))
    assert "EXPERT_TOOL_PARSER" in assert_error(r, 400, "tool_choice")["message"] and not engine.requests
    # a parser, but the embedded model's template renders no tools
    r, engine = call(experts, lambda client, gw: client.post("/v1/chat/completions", json=body), tool_parser="hermes")
    assert "renders no tools" in assert_error(r, 400, "tool_choice")["message"] and not engine.requests
    # an expert whose grammar constrains the answer, and a response_format
    settings = {"model": str(tools_model), "model_name": BASE, "tool_parser": "hermes"}
    for extra in ({"model": "jsoner"}, {"response_format": {"type": "json_object"}}):
        r, engine = call(
            experts,
            lambda client, gw, extra=extra: client.post("/v1/chat/completions", json={**body, **extra}),
            **settings,
        )
        assert "tool calls" in assert_error(r, 400, "tool_choice")["message"] and not engine.requests


def test_an_unknown_tool_parser_fails_start_up_with_the_known_names(experts):
    import asyncio

    from asgi_lifespan import LifespanManager

    from server.api.app import create_app
    from server.api.service import StartupFailed
    from server.settings import Settings

    engine = FakeEngine()

    async def go():
        app = create_app(Settings(experts_dir=experts, tool_parser="no-such-parser"), engine_factory=lambda *a: engine)
        async with LifespanManager(app):
            with pytest.raises(StartupFailed) as failed:
                await asyncio.wait_for(app.state.service.started(), 60)
            return str(failed.value)

    message = asyncio.run(go())
    assert "EXPERT_TOOL_PARSER" in message and "no-such-parser" in message and "hermes" in message
    assert not engine.requests
