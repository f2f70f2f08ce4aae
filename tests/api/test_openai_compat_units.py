"""Pure parts of OpenAI compatibility: the field policy (nulls, ignored, unsupported), tool
plans and answers, message rendering for the chat template, logprobs shapes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from server.api.fields import IGNORED_HEADER, request_error, screen
from server.api.logprobs import chat_logprobs, completion_logprobs
from server.api.tools import (
    NamedToolChoice,
    TemplateSupport,
    ToolDefinition,
    message_with_calls,
    plan_tools,
    probe_template,
    template_messages,
)
from server.errors import InvalidRequest

pytestmark = pytest.mark.unit

Q = [{"role": "user", "content": "Hi"}]


# ----------------------------------------------------------------------------- fields


def test_null_means_not_set_everywhere_but_in_data():
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "x", "name": None},
            {
                "role": "assistant",
                "content": "y",
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": None,
            },
        ],
        "tools": None,
        "logit_bias": None,
        "stream_options": {"include_usage": None},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"default": None}}},
        "audio": None,
    }
    s = screen(body, "chat")
    assert s.body["messages"][0] == {"role": "user", "content": "x"}
    assert s.body["messages"][1] == {"role": "assistant", "content": "y"}
    assert "tools" not in s.body and "logit_bias" not in s.body and "audio" not in s.body
    assert s.body["stream_options"] == {}
    assert s.body["response_format"]["json_schema"]["schema"] == {"default": None}  # data keeps its nulls
    assert s.ignored == [] and s.unsupported == [] and s.header() == {}


def test_fields_without_effect_are_dropped_and_named():
    body = {
        "model": "m",
        "messages": [*Q, {"role": "assistant", "content": "a", "annotations": []}],
        "metadata": {"k": "v"},
        "store": True,
        "service_tier": "auto",
        "user": "u1",
        "reasoning_effort": "low",
        "modalities": ["text"],
        "parallel_tool_calls": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }
    s = screen(body, "chat")
    assert set(s.body) == {"model", "messages", "stream_options"}
    assert s.body["stream_options"] == {"include_usage": True}
    assert s.ignored == [
        "metadata",
        "store",
        "service_tier",
        "user",
        "reasoning_effort",
        "modalities",
        "messages.1.annotations",
        "parallel_tool_calls",
        "stream_options.include_obfuscation",
    ]
    assert s.header()[IGNORED_HEADER].startswith("metadata, store")
    assert request_error(s) is None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list
    temperature: float | None = None


def test_one_error_names_every_unsupported_and_unknown_field():
    body = {
        "model": "m",
        "messages": Q,
        "audio": {"voice": "x"},
        "functions": [{"name": "f"}],
        "modalities": ["text", "audio"],
        "frobnicate": 1,
        "wibble": 2,
    }
    s = screen(body, "chat")
    with pytest.raises(ValidationError) as info:
        _Strict.model_validate(s.body)
    err = request_error(s, info.value)
    assert isinstance(err, InvalidRequest)
    assert err.status == 400 and err.param == "audio" and err.code == "unsupported_field"
    for name in ("audio", "functions", "modalities", "frobnicate", "wibble"):
        assert name in err.message
    assert err.details == {"fields": ["audio", "functions", "modalities", "frobnicate", "wibble"]}


def test_a_plain_invalid_value_keeps_its_param():
    s = screen({"model": "m", "messages": Q, "temperature": "hot"}, "chat")
    with pytest.raises(ValidationError) as info:
        _Strict.model_validate(s.body)
    err = request_error(s, info.value)
    assert err is not None and err.param == "temperature" and err.code is None


def test_non_null_refusal_and_audio_in_history_are_refused():
    s = screen(
        {"model": "m", "messages": [*Q, {"role": "assistant", "content": None, "refusal": "no", "audio": {"id": "a"}}]},
        "chat",
    )
    assert s.unsupported == ["messages.1.audio", "messages.1.refusal"]


def test_completions_policy_echo_best_of_suffix():
    ok = screen({"model": "m", "prompt": "x", "echo": False, "best_of": 2, "n": 2, "user": "u"}, "completions")
    assert ok.unsupported == [] and ok.ignored == ["user"] and "echo" not in ok.body and "best_of" not in ok.body
    bad = screen({"model": "m", "prompt": "x", "echo": True, "best_of": 3, "suffix": "s"}, "completions")
    assert bad.unsupported == ["suffix", "echo", "best_of"]


def test_custom_tools_are_unsupported():
    s = screen({"model": "m", "messages": Q, "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "chat")
    assert s.unsupported == ["tools.0.type"]


# ----------------------------------------------------------------------------- tools

WEATHER = ToolDefinition.model_validate(
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
)
TIME = ToolDefinition.model_validate({"type": "function", "function": {"name": "get_time"}})


def test_named_choice_constrains_to_the_function_schema():
    plan = plan_tools([WEATHER, TIME], NamedToolChoice.model_validate({"function": {"name": "get_weather"}}), None)
    assert plan.mode == "named" and plan.name == "get_weather"
    assert plan.schema == WEATHER.function.parameters
    assert plan.schema is not WEATHER.function.parameters  # a copy: the request stays as it was
    empty = plan_tools([TIME], NamedToolChoice.model_validate({"function": {"name": "get_time"}}), None)
    assert empty.schema == {"type": "object", "properties": {}}


def test_required_is_an_array_of_calls_one_per_tool_variant():
    plan = plan_tools([WEATHER, TIME], "required", False)
    assert plan.schema["type"] == "array" and plan.schema["minItems"] == 1 and plan.schema["maxItems"] == 1
    names = [v["properties"]["name"]["enum"] for v in plan.schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    assert "maxItems" not in plan_tools([WEATHER, TIME], "required", None).schema


def test_tool_choice_errors():
    with pytest.raises(InvalidRequest) as e:
        plan_tools([WEATHER], NamedToolChoice.model_validate({"function": {"name": "nope"}}), None)
    assert e.value.param == "tool_choice"
    with pytest.raises(InvalidRequest):
        plan_tools(None, "required", None)
    with pytest.raises(InvalidRequest) as e:
        plan_tools([WEATHER, WEATHER], "auto", None)
    assert e.value.param == "tools"
    assert plan_tools(None, "none", None).mode == "none"
    assert plan_tools([WEATHER], None, None).mode == "auto"  # OpenAI's default with tools


def test_answers_become_tool_calls_or_stay_text_when_cut():
    named = plan_tools([WEATHER], NamedToolChoice.model_validate({"function": {"name": "get_weather"}}), None)
    message, finish = message_with_calls(named, '{"city": "Paris"}', "stop")
    assert message["content"] is None and finish == "stop"
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    cut, finish = message_with_calls(named, '{"city": "Pa', "length")
    assert cut == {"role": "assistant", "content": '{"city": "Pa'} and finish == "length"

    required = plan_tools([WEATHER, TIME], "required", None)
    text = '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Oslo"}}]'
    message, finish = message_with_calls(required, text, "stop")
    assert finish == "tool_calls"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
        ("get_time", {}),
        ("get_weather", {"city": "Oslo"}),
    ]


def test_history_with_tool_calls_renders_in_the_template_or_as_text():
    history = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"c": 1}'}}],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    native = template_messages(history, TemplateSupport(tools=True, tool_calls=True))
    assert native[0] == {"role": "system", "content": "Be brief."}
    assert native[2]["tool_calls"][0]["function"] == {"name": "w", "arguments": {"c": 1}}
    assert native[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    text = template_messages(history, TemplateSupport(tools=False, tool_calls=False))
    assert "tool_calls" not in text[2]
    assert text[2]["content"] == '<tool_call>\n{"name": "w", "arguments": {"c": 1}}\n</tool_call>'


def test_probe_sees_what_a_template_renders():
    def renders_everything(messages, tools):
        return json.dumps([messages, tools])

    def renders_content_only(messages, tools):
        return "".join(m["content"] for m in messages)

    assert probe_template(renders_everything) == TemplateSupport(True, True)
    assert probe_template(renders_content_only) == TemplateSupport(False, False)


# ----------------------------------------------------------------------------- logprobs


@dataclass
class _Alt:
    token_id: int
    token: str
    logprob: float


@dataclass
class _Tok:
    token_id: int
    token: str
    logprob: float
    top: list = field(default_factory=list)


def test_logprobs_shapes():
    toks = [
        _Tok(1, "Hel", -0.1, [_Alt(1, "Hel", -0.1), _Alt(2, "Hi", -2.5)]),
        _Tok(3, "lo", float("-inf"), [_Alt(4, "p", -0.01), _Alt(3, "lo", float("-inf"))]),
    ]
    chat = chat_logprobs(toks, 1)
    assert chat["refusal"] is None
    first = chat["content"][0]
    assert first == {
        "token": "Hel",
        "logprob": -0.1,
        "bytes": [72, 101, 108],
        "top_logprobs": [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108]}],
    }
    assert chat["content"][1]["logprob"] == -9999.0  # JSON has no -inf
    json.dumps(chat, allow_nan=False)
    comp = completion_logprobs(toks, 2, text_offset=5)
    assert comp["tokens"] == ["Hel", "lo"] and comp["text_offset"] == [5, 8]
    assert comp["top_logprobs"][0] == {"Hel": -0.1, "Hi": -2.5}
    assert completion_logprobs(toks, 0)["top_logprobs"] is None


def test_engine_logprobs_keep_ranked_alternatives_in_rank_order():
    from types import SimpleNamespace as NS

    from server.engine.vllm_engine import GenerationRequest, _token_logprobs
    from server.manifest.sampling import Sampling

    def lp(logprob, rank, text):
        return NS(logprob=logprob, rank=rank, decoded_token=text)

    # vLLM puts the sampled token first, then the top-k; here the sampled token (7) ranks 3rd
    output = NS(token_ids=[7], logprobs=[{7: lp(-2.0, 3, "c"), 5: lp(-0.5, 1, "a"), 6: lp(-1.0, 2, "b")}])
    req = GenerationRequest("r", [1], Sampling(), logprobs=2)
    (tok,) = _token_logprobs(output, req)
    assert (tok.token_id, tok.token, tok.logprob) == (7, "c", -2.0)
    assert [(t.token_id, t.token) for t in tok.top] == [(5, "a"), (6, "b")]
    assert _token_logprobs(output, GenerationRequest("r", [1], Sampling())) is None
