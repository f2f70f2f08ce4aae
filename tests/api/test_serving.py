"""The real server, the real vLLM engine, the embedded model and the official openai client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import sampling_header

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat_raw(client, **kwargs):
    return client.chat.completions.with_raw_response.create(**kwargs)


def test_base_model_answers_paris(openai_client, server):
    r = openai_client.chat.completions.create(model=server.base_model, messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content
    assert r.usage.completion_tokens > 0


def test_models_lists_base_and_experts(openai_client, server):
    models = {m.id: m for m in openai_client.models.list().data}
    assert server.base_model in models
    for name in ("lora-a", "stopper", "jsoner", "gbnf-expert", "short-ctx"):
        assert name in models, name
        assert models[name].model_extra["parent"] == server.base_model
    assert "dora-expert" not in models
    assert models["lora-a"].model_extra["version"] == "1.0.0"


def test_manifest_temperature_is_default_with_source(openai_client):
    raw = chat_raw(openai_client, model="lora-a", messages=QUESTION)
    s = sampling_header(raw)
    assert s["temperature"] == {"value": 0.1, "source": "manifest"}
    assert s["max_tokens"] == {"value": 12, "source": "manifest"}
    assert s["top_p"] == {"value": 1.0, "source": "server"}
    assert raw.headers["x-expert-version"] == "1.0.0"


def test_request_overrides_one_field_only(openai_client):
    raw = chat_raw(openai_client, model="lora-a", messages=QUESTION, temperature=0.5)
    s = sampling_header(raw)
    assert s["temperature"] == {"value": 0.5, "source": "request"}
    assert s["max_tokens"] == {"value": 12, "source": "manifest"}


def test_zero_temperature_in_request_is_a_value_not_unset(openai_client):
    s = sampling_header(chat_raw(openai_client, model="lora-a", messages=QUESTION, temperature=0.0))
    assert s["temperature"] == {"value": 0.0, "source": "request"}


def test_manifest_max_tokens_cuts_the_answer(openai_client):
    r = openai_client.chat.completions.create(
        model="lora-a", messages=[{"role": "user", "content": "Write a long story about a dragon."}], temperature=0
    )
    assert r.usage.completion_tokens == 12
    assert r.choices[0].finish_reason == "length"


def test_manifest_stop_sequence_cuts_the_answer(openai_client, server):
    full = openai_client.chat.completions.create(
        model=server.base_model, messages=QUESTION, temperature=0, max_tokens=20
    )
    assert "Paris" in full.choices[0].message.content
    raw = chat_raw(openai_client, model="stopper", messages=QUESTION, max_tokens=20)
    r = raw.parse()
    assert "Paris" not in r.choices[0].message.content
    assert full.choices[0].message.content.startswith(r.choices[0].message.content.rstrip())
    assert r.choices[0].finish_reason == "stop"
    assert sampling_header(raw)["stop"] == {"value": ["Paris"], "source": "manifest"}


def test_lora_expert_differs_from_base(openai_client, server):
    prompts = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?"]
    differ = 0
    for p in prompts:
        msgs = [{"role": "user", "content": p}]
        base = openai_client.chat.completions.create(
            model=server.base_model, messages=msgs, temperature=0, max_tokens=12
        )
        lora = openai_client.chat.completions.create(model="lora-a", messages=msgs, temperature=0, max_tokens=12)
        differ += base.choices[0].message.content != lora.choices[0].message.content
    assert differ == len(prompts)


def test_lora_expert_is_deterministic_when_greedy(openai_client):
    a = openai_client.chat.completions.create(model="lora-a", messages=QUESTION, temperature=0)
    b = openai_client.chat.completions.create(model="lora-a", messages=QUESTION, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


@pytest.mark.parametrize("model", ["lora-a", "base"])
def test_stream_and_non_stream_give_the_same_greedy_text(openai_client, server, model):
    model = server.base_model if model == "base" else model
    whole = openai_client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=12)
    stream = openai_client.chat.completions.create(
        model=model,
        messages=QUESTION,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert finish == whole.choices[0].finish_reason


def test_stream_carries_the_sampling_header(server):
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"model": "lora-a", "messages": QUESTION, "stream": True},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        s = json.loads(r.headers["x-expert-sampling"])
        assert s["temperature"]["source"] == "manifest"
        assert r.headers["x-expert-version"] == "1.0.0"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


PROMPTS = [
    "Give me a JSON object describing a cat.",
    "Describe the weather today.",
    "List two fruits.",
    "Who wrote Hamlet?",
    "Say hello.",
]


JSON_PROMPTS = [
    "Reply in JSON with one key answer. What is 2+2?",
    "Reply in JSON with one key answer. Who wrote Hamlet?",
    "Reply in JSON with one key answer. Name a fruit.",
    "Reply in JSON with one key answer. What is the capital of France?",
]


def test_json_grammar_expert_returns_parseable_json(openai_client):
    # json_object bounds the syntax, not the length: the prompts ask for short answers
    for p in JSON_PROMPTS:
        r = openai_client.chat.completions.create(
            model="jsoner", messages=[{"role": "user", "content": p}], temperature=0
        )
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", text
        json.loads(text)


def test_gbnf_grammar_expert_follows_its_grammar(openai_client):
    for p in PROMPTS:
        r = openai_client.chat.completions.create(
            model="gbnf-expert", messages=[{"role": "user", "content": p}], temperature=0.8, seed=1
        )
        data = json.loads(r.choices[0].message.content)
        assert list(data) == ["answer"] and isinstance(data["answer"], str)


COPY_PROMPTS = [
    "Where does she live? Gwenaëlle Phethqusqìm, an orchestral bell ringer, lives in Much Kilbarrack.",
    "What is the capital of France?",
]


def test_copying_grammar_answers_with_a_run_of_the_requests_words(openai_client):
    # sampled, not greedy: whatever the model draws, the grammar lets it write only the text's words
    for p in COPY_PROMPTS:
        for seed in (1, 2, 3):
            r = openai_client.chat.completions.create(
                model="copier", messages=[{"role": "user", "content": p}], temperature=1.0, seed=seed
            )
            value = json.loads(r.choices[0].message.content)["answer"]
            assert value and value in p, (p, value)
    r = openai_client.completions.create(model="copier", prompt=COPY_PROMPTS[0], temperature=1.0, seed=4)
    value = json.loads(r.choices[0].text)["answer"]
    assert value and value in COPY_PROMPTS[0], value
    # the same model unconstrained answers in its own words: the grammar is what copies
    r = openai_client.chat.completions.create(
        model="copier",
        messages=[{"role": "user", "content": COPY_PROMPTS[1]}],
        temperature=0,
        response_format={"type": "text"},
    )
    assert "Paris" in r.choices[0].message.content and "Paris" not in COPY_PROMPTS[1]


def test_response_format_json_schema_on_base(openai_client, server):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = openai_client.chat.completions.create(
        model=server.base_model,
        messages=QUESTION,
        temperature=0,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    assert set(json.loads(r.choices[0].message.content)) == {"city"}


def test_response_format_text_turns_the_expert_grammar_off(openai_client):
    r = openai_client.chat.completions.create(
        model="gbnf-expert", messages=QUESTION, temperature=0, max_tokens=12, response_format={"type": "text"}
    )
    assert not r.choices[0].message.content.startswith('{"answer"')


def test_seed_makes_sampling_repeatable(openai_client, server):
    kw = dict(
        model=server.base_model,
        messages=[{"role": "user", "content": "Tell me a word."}],
        temperature=1.0,
        max_tokens=10,
        seed=1234,
    )
    a = openai_client.chat.completions.create(**kw)
    b = openai_client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_n_returns_several_choices(openai_client, server):
    r = openai_client.chat.completions.create(model=server.base_model, messages=QUESTION, n=3, max_tokens=5, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]


def test_vllm_extra_sampling_fields_are_accepted(openai_client):
    raw = chat_raw(
        openai_client,
        model="lora-a",
        messages=QUESTION,
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2},
    )
    s = sampling_header(raw)
    assert s["top_k"] == {"value": 5, "source": "request"}
    assert s["repetition_penalty"] == {"value": 1.2, "source": "request"}


def test_experts_endpoints_report_fates_hints_and_defaults(server):
    listing = httpx.get(server.url + "/experts").json()
    assert {e["name"] for e in listing["experts"]} >= {"lora-a", "stopper", "jsoner"}
    dora = [e for e in listing["not_loaded"] if e["name"] == "dora-expert"]
    assert dora and any("dora" in r for r in dora[0]["reasons"])
    detail = httpx.get(server.url + "/experts/lora-a").json()
    assert detail["version"] == "1.0.0"
    assert detail["decoding"]["temperature"] == {"value": 0.1, "source": "manifest"}
    fates = {f["field"]: f["fate"] for f in detail["fields"]}
    assert fates["training.decoding.temperature"] == "applied"
    assert fates["base_models[0].adapters[0].sha256"] == "applied"
    short = httpx.get(server.url + "/experts/short-ctx").json()
    hints = {h["field"]: h for h in short["hints"]}
    assert hints["runtime.attention_kernel"]["honoured"] is False
    assert "CPU_ATTN" in hints["runtime.attention_kernel"]["reason"]
    assert hints["runtime.max_model_len"]["honoured"] is True


def test_startup_log_reports_each_expert(server):
    log = server.log()
    assert "expert lora-a 1.0.0 loaded" in log
    assert "expert dora-expert not loaded" in log
    assert "runtime.attention_kernel" in log and "NOT honoured" in log


def test_expert_max_model_len_is_enforced(openai_client):
    long = "word " * 200
    with pytest.raises(openai.BadRequestError) as exc:
        openai_client.chat.completions.create(model="short-ctx", messages=[{"role": "user", "content": long}])
    assert exc.value.body["code"] == "context_length_exceeded"


def test_health_and_ready(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    r = httpx.get(server.url + "/ready")
    assert r.status_code == 200 and "lora-a" in r.json()["experts"]


def _metric(server, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_aborts_its_engine_request(server, stream):
    import time

    base = {"expert": server.base_model, "version": "base"}
    gone_before = _metric(server, "expert_gateway_requests_total", status="499", **base)
    body = {
        "model": server.base_model,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 900,
        "temperature": 0.8,
        "stream": stream,
    }
    started = time.time()
    if stream:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)  # some tokens arrived: the request is generating
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", json=body, timeout=2)
    deadline = time.time() + 20
    while time.time() < deadline and (
        _metric(server, "vllm:num_requests_running") > 0
        or _metric(server, "expert_gateway_requests_in_flight", **base) > 0
    ):
        time.sleep(0.2)
    assert _metric(server, "vllm:num_requests_running") == 0
    assert _metric(server, "expert_gateway_requests_in_flight", **base) == 0
    assert _metric(server, "expert_gateway_requests_total", status="499", **base) == gone_before + 1
    # 900 tokens take far longer than this here: the engine stopped generating them
    assert time.time() - started < 25
