"""Ordinary OpenAI client code, unchanged, against the real server and engine: the official
`openai` client, `langchain-openai` and `litellm`. Tool calling (named and required, stream
and not), the history round trip with `model_dump()`, fields accepted and reported,
logprobs, logit_bias, `/v1/completions`, `models.retrieve`, developer messages."""

from __future__ import annotations

import asyncio
import json
import os
import warnings

import httpx
import jsonschema
import openai
import pytest

pytestmark = pytest.mark.engine

EXPERT = "lora-a"  # a LoRA expert without a grammar
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "record_person", "description": "Record a person's name and age.", "parameters": PERSON},
    },
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
]
ASK = [{"role": "user", "content": "Alice is 30 years old. Record her."}]
NAMED = {"type": "function", "function": {"name": "record_person"}}


def _model(server, which: str) -> str:
    return server.base_model if which == "base" else EXPERT


# ----------------------------------------------------------------------------- tool calling


@pytest.mark.parametrize("which", ["base", "expert"])
def test_named_tool_call_arguments_follow_the_schema_stream_and_not(openai_client, server, which):
    model = _model(server, which)
    r = openai_client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=60
    )
    msg = r.choices[0].message
    assert msg.content is None and r.choices[0].finish_reason == "stop"
    (call,) = msg.tool_calls
    assert call.type == "function" and call.function.name == "record_person" and call.id
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, PERSON)

    stream = openai_client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=60, stream=True
    )
    name, arguments, ids, finish = None, "", set(), None
    for chunk in stream:
        for c in chunk.choices:
            assert not c.delta.content
            for d in c.delta.tool_calls or []:
                assert d.index == 0
                ids.add(d.id) if d.id else None
                name = d.function.name or name
                arguments += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert name == "record_person" and len(ids) == 1 and finish == "stop"
    assert json.loads(arguments) == args  # greedy: the same call


def test_required_tool_choice_returns_calls_of_the_given_tools(openai_client, server):
    for stream in (False, True):
        kwargs = {
            "model": server.base_model,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": TOOLS,
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "temperature": 0,
            "max_tokens": 80,
        }
        if not stream:
            r = openai_client.chat.completions.create(**kwargs)
            assert r.choices[0].finish_reason == "tool_calls"
            calls = [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls]
        else:
            calls, finish = {}, None
            for chunk in openai_client.chat.completions.create(**kwargs, stream=True):
                for c in chunk.choices:
                    for d in c.delta.tool_calls or []:
                        entry = calls.setdefault(d.index, ["", ""])
                        entry[0] += d.function.name or ""
                        entry[1] += d.function.arguments or ""
                    finish = c.finish_reason or finish
            assert finish == "tool_calls"
            calls = [tuple(v) for _, v in sorted(calls.items())]
        assert len(calls) == 1  # parallel_tool_calls false
        name, arguments = calls[0]
        schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[name]
        jsonschema.validate(json.loads(arguments), schema)


def test_history_round_trip_with_model_dump(openai_client, server):
    for model in (server.base_model, EXPERT):
        messages = [{"role": "developer", "content": "You record people."}, *ASK]
        r = openai_client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=60
        )
        message = r.choices[0].message
        messages.append(message.model_dump())  # refusal, annotations, audio, function_call: null
        messages.append({"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "recorded"})
        messages.append({"role": "user", "content": "Thanks. Say done."})
        again = openai_client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=8)
        assert again.choices[0].message.content
        # a plain answer appended the same way
        messages.append(again.choices[0].message.model_dump())
        messages.append({"role": "user", "content": "Once more."})
        assert openai_client.chat.completions.create(model=model, messages=messages, max_tokens=4).choices


def test_tool_calls_in_history_reach_the_prompt(openai_client, server):
    """The embedded template does not render `tool_calls`: they reach it as text, so the prompt grows with them."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    base = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    with_tool = [*base, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    a = openai_client.chat.completions.create(model=server.base_model, messages=base, max_tokens=1)
    b = openai_client.chat.completions.create(model=server.base_model, messages=with_tool, max_tokens=1)
    without = [*ASK, {"role": "assistant", "content": ""}]
    c = openai_client.chat.completions.create(model=server.base_model, messages=without, max_tokens=1)
    assert a.usage.prompt_tokens > c.usage.prompt_tokens  # the call is in the prompt
    assert b.usage.prompt_tokens > a.usage.prompt_tokens  # and so is the tool's answer


def test_auto_tool_choice_on_the_embedded_model_is_a_clear_400(openai_client, server):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=server.base_model, messages=ASK, tools=TOOLS)
    err = e.value.body
    assert err["param"] == "tool_choice" and "auto" in err["message"] and "required" in err["message"]
    # tool_choice none: the tools are not used, the answer is text
    r = openai_client.chat.completions.create(
        model=server.base_model, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=4
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content is not None


@pytest.mark.parametrize("expert", ["jsoner", "gbnf-expert"])
def test_an_expert_with_its_own_grammar_refuses_tools(openai_client, expert):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=expert, messages=ASK, tools=TOOLS, tool_choice=NAMED)
    assert e.value.body["param"] == "tools" and "grammar" in e.value.body["message"]


# ----------------------------------------------------------------------------- fields


def test_fields_without_effect_are_accepted_and_named_in_a_header(openai_client, server):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=server.base_model,
        messages=ASK,
        max_tokens=4,
        metadata={"team": "a"},
        store=False,
        service_tier="auto",
        user="u-1",
        reasoning_effort="low",
        stream_options=None,
        tools=None,
        logit_bias=None,
        extra_body={"top_logprobs": None},
    )
    assert raw.http_response.status_code == 200
    ignored = [s.strip() for s in raw.headers["x-expert-ignored"].split(",")]
    assert sorted(ignored) == ["metadata", "reasoning_effort", "service_tier", "store", "user"]
    plain = openai_client.chat.completions.with_raw_response.create(model=server.base_model, messages=ASK, max_tokens=2)
    assert "x-expert-ignored" not in plain.headers


def test_unsupported_fields_are_one_400_naming_all(server):
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": server.base_model,
            "messages": ASK,
            "audio": {"voice": "alloy", "format": "wav"},
            "web_search_options": {},
            "frobnicate": True,
        },
        timeout=60,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert all(f in err["message"] for f in ("audio", "web_search_options", "frobnicate"))
    assert err["details"]["fields"] == ["audio", "web_search_options", "frobnicate"]


def test_logit_bias_forces_a_token(openai_client, server):
    plain = openai_client.chat.completions.create(
        model=server.base_model, messages=ASK, temperature=0, max_tokens=3, extra_body={"return_token_ids": True}
    )
    forced_id = 28  # a token the greedy answer does not start with
    assert plain.choices[0].model_extra["token_ids"][0] != forced_id
    biased = openai_client.chat.completions.create(
        model=server.base_model,
        messages=ASK,
        temperature=0,
        max_tokens=3,
        logit_bias={str(forced_id): 100},
        extra_body={"return_token_ids": True},
    )
    assert biased.choices[0].model_extra["token_ids"] == [forced_id] * 3
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=server.base_model, messages=ASK, logit_bias={"999999": 1})
    assert e.value.body["param"] == "logit_bias"


def test_developer_message_acts_as_the_system_message(openai_client, server):
    def ask(role):
        return openai_client.chat.completions.create(
            model=server.base_model,
            messages=[{"role": role, "content": "Answer in one word."}, *ASK],
            temperature=0,
            max_tokens=8,
        )

    dev, system = ask("developer"), ask("system")
    assert dev.usage.prompt_tokens == system.usage.prompt_tokens
    assert dev.choices[0].message.content == system.choices[0].message.content
    # the template's default system prompt is replaced, not kept before the developer message
    no_system = openai_client.chat.completions.create(model=server.base_model, messages=ASK, max_tokens=1)
    assert no_system.usage.prompt_tokens != dev.usage.prompt_tokens


# ----------------------------------------------------------------------------- logprobs


@pytest.mark.parametrize("which", ["base", "expert"])
def test_logprobs_top1_is_the_greedy_token_stream_and_not(openai_client, server, which):
    model = _model(server, which)
    kwargs = {"model": model, "messages": ASK, "temperature": 0, "max_tokens": 8, "logprobs": True, "top_logprobs": 3}
    r = openai_client.chat.completions.create(**kwargs)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content).startswith(r.choices[0].message.content)
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
    streamed = []
    for chunk in openai_client.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            if c.logprobs is not None:
                streamed += c.logprobs.content or []
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    off = openai_client.chat.completions.create(model=model, messages=ASK, max_tokens=2, logprobs=False)
    assert off.choices[0].logprobs is None


def test_top_logprobs_needs_logprobs(openai_client, server):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=server.base_model, messages=ASK, top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


# ----------------------------------------------------------------------------- completions and models


@pytest.mark.parametrize("which", ["base", "expert"])
def test_completions_stream_and_not_give_the_same_greedy_text(openai_client, server, which):
    model = _model(server, which)
    prompt = "The capital of France is"
    raw = openai_client.completions.with_raw_response.create(model=model, prompt=prompt, temperature=0, max_tokens=10)
    whole = raw.parse()
    assert whole.object == "text_completion" and whole.choices[0].text
    assert raw.headers["x-expert-version"] == ("base" if which == "base" else "1.0.0")
    assert json.loads(raw.headers["x-expert-sampling"])["max_tokens"] == {"value": 10, "source": "request"}
    text, usage = "", None
    for chunk in openai_client.completions.create(
        model=model, prompt=prompt, temperature=0, max_tokens=10, stream=True, stream_options={"include_usage": True}
    ):
        usage = chunk.usage or usage
        text += "".join(c.text for c in chunk.choices)
    assert text == whole.choices[0].text
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completions_take_token_ids_and_give_logprobs(openai_client, server):
    prompt = "The capital of France is"
    by_text = openai_client.completions.create(
        model=server.base_model, prompt=prompt, temperature=0, max_tokens=6, logprobs=2
    )
    ids = openai_client.completions.create(
        model=server.base_model, prompt=prompt, temperature=0, max_tokens=1, extra_body={"return_token_ids": True}
    )
    from transformers import AutoTokenizer

    from server.manifest.embedded import prepare

    token_ids = AutoTokenizer.from_pretrained(prepare()).encode(prompt, add_special_tokens=False)
    by_ids = openai_client.completions.create(model=server.base_model, prompt=token_ids, temperature=0, max_tokens=6)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == len(token_ids)
    assert ids.choices[0].model_extra["token_ids"]
    lp = by_text.choices[0].logprobs
    assert "".join(lp.tokens).startswith(by_text.choices[0].text) and len(lp.tokens) == by_text.usage.completion_tokens
    for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert max(top, key=top.get) == token
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model=server.base_model, prompt=[10**9])
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="nobody", prompt=prompt)


def test_models_retrieve(openai_client, server):
    base = openai_client.models.retrieve(server.base_model)
    assert base.id == server.base_model
    expert = openai_client.models.retrieve(EXPERT)
    assert expert.id == EXPERT and expert.model_extra["parent"] == server.base_model
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("nobody")


# ----------------------------------------------------------------------------- langchain and litellm


@pytest.mark.parametrize("which", ["base", "expert"])
def test_langchain_structured_output_with_function_calling(server, which):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        """A person mentioned in the text."""

        name: str = Field(max_length=20)
        age: int

    # our own HTTP client, closed at the end (langchain's default one is cached for the process)
    with openai.DefaultHttpxClient() as http_client:
        llm = ChatOpenAI(
            model=_model(server, which),
            base_url=server.url + "/v1",
            api_key="unused",
            temperature=0,
            max_tokens=60,
            max_retries=0,
            http_client=http_client,
        )
        person = llm.with_structured_output(Person, method="function_calling").invoke(ASK[0]["content"])
        assert isinstance(person, Person)
        bound = llm.bind_tools([Person], tool_choice="Person")
        msg = bound.invoke(ASK[0]["content"])
    (call,) = msg.tool_calls
    assert call["name"] == "Person" and Person.model_validate(call["args"])


def test_litellm_tools(server):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # our own client, closed at the end (litellm's default one is cached for the process)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
        r = litellm.completion(
            client=client,
            model=f"openai/{EXPERT}",
            api_base=server.url + "/v1",
            api_key="unused",
            messages=ASK,
            tools=TOOLS,
            tool_choice=NAMED,
            temperature=0,
            max_tokens=60,
        )
    _close_thread_event_loop()  # litellm's synchronous call leaves one open
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "record_person"
    jsonschema.validate(json.loads(call.function.arguments), PERSON)


def _close_thread_event_loop() -> None:
    """Close the event loop a library set for this thread (asyncio.get_event_loop outside a loop)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # would warn only if it made a new one
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:  # none: an earlier asyncio.run() left the thread without one
            return
    if not loop.is_running():
        loop.close()
        asyncio.set_event_loop(None)
