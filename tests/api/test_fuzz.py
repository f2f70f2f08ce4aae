"""Bounded fuzzing of the chat and expert routes (hypothesis), over the app with the fake
engine: whatever a client sends, the answer is never a 5xx, and every refusal is OpenAI's
error JSON. The inputs a generator rarely finds (lone surrogates, deep nesting, invalid JSON
schemas, integers outside 64 bits, strings for booleans) are explicit cases, and those never
reach the engine. A few hundred requests in all: well under a minute."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.settings import Settings
from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.service

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, FakeEngine]]:
    from server.api.app import create_app

    root: Path = tmp_path_factory.mktemp("fuzz-experts")
    write_expert(root, manifest("plain", decoding={"temperature": 0.3}))
    write_expert(root, manifest("jsoner", decoding={"use_grammar": True, "grammar_type": "json"}))
    engine = FakeEngine()
    app = create_app(Settings(experts_dir=root, max_model_len=256), engine_factory=lambda model, name, args: engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = 120
        import time

        start = time.monotonic()
        while client.get("/ready").status_code != 200:
            assert time.monotonic() - start < deadline, "the app did not get ready"
            time.sleep(0.2)
        yield client, engine


def check(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) >= {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and "Traceback" not in err["message"]


# ----------------------------------------------------------------------------- strategies

text = st.text(max_size=12) | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3)
leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
)
json_value = st.recursive(
    leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8
)

message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "wizard"]) | json_value, "content": text | json_value}
)
SAMPLING = {
    "temperature": st.floats(min_value=-1, max_value=3) | json_value,
    "top_p": st.floats(min_value=-0.5, max_value=1.5) | json_value,
    "top_k": st.integers(min_value=-(2**65), max_value=2**65) | json_value,
    "min_p": st.floats(min_value=-1, max_value=2) | json_value,
    "max_tokens": st.integers(min_value=-5, max_value=2**65) | json_value,
    "seed": st.integers(min_value=-(2**66), max_value=2**66) | json_value,
    "n": st.integers(min_value=-1, max_value=40) | json_value,
    "stop": st.lists(text, max_size=4) | text | json_value,
    "stream": st.booleans() | json_value,
    "presence_penalty": st.floats(min_value=-3, max_value=3) | json_value,
    "repetition_penalty": st.floats(min_value=-1, max_value=3) | json_value,
    "soft_prompt": text | st.just("none"),
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
        optional={"json_schema": st.fixed_dictionaries({"name": text}, optional={"schema": json_value})},
    )
    | json_value,
    "logit_bias": st.dictionaries(text, json_value, max_size=3) | json_value,
}
chat_body = st.fixed_dictionaries(
    {
        "model": st.sampled_from([BASE, "plain", "jsoner"]) | text,
        "messages": st.lists(message, max_size=3) | json_value,
    },
    optional={**SAMPLING, "zzz_unknown": json_value},
)


@FUZZ
@given(body=chat_body | json_value)
def test_fuzzed_chat_requests_never_get_a_5xx(app_client, body) -> None:
    client, _ = app_client
    r = client.post(
        "/v1/chat/completions", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    check(r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(name=st.text(min_size=1, max_size=40) | st.sampled_from(["plain", "..", "a/../b", "%2e%2e", "x" * 300]))
def test_fuzzed_expert_names_never_get_a_5xx(app_client, name) -> None:
    client, _ = app_client
    quoted = urllib.parse.quote(name.encode("utf-8", "surrogatepass"), safe="")
    check(client.get(f"/experts/{quoted}"))
    check(client.post(f"/experts/{quoted}/reload"))


# ----------------------------------------------------------------------------- explicit cases


def _deep_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _schema_body(schema) -> str:
    return json.dumps(
        {
            "model": BASE,
            "messages": [{"role": "user", "content": "Hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        }
    )


def _raw(rest: str) -> str:
    """A body written by hand (json.dumps cannot write a lone surrogate escape)."""
    return '{"model": "' + BASE + '", ' + rest + "}"


def _body(**extra) -> str:
    return json.dumps({"model": BASE, "messages": [{"role": "user", "content": "Hi"}], **extra})


HOSTILE = {
    "surrogate-content": _raw('"messages": [{"role": "user", "content": "a\\ud800b"}]'),
    "surrogate-stop": _raw('"messages": [{"role": "user", "content": "Hi"}], "stop": ["\\udfff"]'),
    "surrogate-key": _raw('"messages": [{"role": "user", "content": "Hi"}], "\\ud800": 1'),
    "utf8-encoded-surrogate": b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    "deep-body": "[" * 100_000 + "]" * 100_000,
    "deep-unknown-field": _body()[:-1] + ', "x": ' + "[" * 3000 + "]" * 3000 + "}",
    "deep-content-parts": _raw('"messages": [{"role": "user", "content": ' + "[" * 3000 + "]" * 3000 + "}]"),
    "deep-schema": _schema_body(_deep_schema(40)),
    "schema-type-number": _schema_body({"type": 123}),
    "schema-properties-string": _schema_body({"type": "object", "properties": "x"}),
    "schema-missing-ref": _schema_body({"$ref": "#/$defs/missing"}),
    "schema-bad-regex": _schema_body({"type": "string", "pattern": "(["}),
    "schema-minimum-1e308": _schema_body({"type": "integer", "minimum": 1e308}),
    "schema-self-ref": _schema_body({"$ref": "#"}),
    "schema-not-object": _schema_body([1, 2]),
    "seed-2^64": _body(seed=2**64),
    "seed-2^100": _body(seed=2**100),
    "seed-below-int64": _body(seed=-(2**63) - 1),
    "top_k-2^64": _body(top_k=2**64),
    "max_tokens-2^100": _body(max_tokens=2**100),
    "n-2^64": _body(n=2**64),
    "stream-yes": _body(stream="yes"),
    "stream-1": _body(stream=1),
    "temperature-string": _body(temperature="0.5"),
    "temperature-nan": _body()[:-1] + ', "temperature": NaN}',
    "include_usage-string": _body(stream=True, stream_options={"include_usage": "true"}),
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_inputs_are_400_and_never_reach_the_engine(app_client, raw) -> None:
    client, engine = app_client
    before = len(engine.requests)
    r = client.post(
        "/v1/chat/completions",
        content=raw if isinstance(raw, bytes) else raw.encode(),
        headers={"content-type": "application/json"},
    )
    check(r)
    assert r.status_code == 400, r.text[:300]
    assert len(engine.requests) == before


def test_the_openapi_document_describes_the_chat_body_and_openai_errors(app_client) -> None:
    client, _ = app_client
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/v1/chat/completions"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert {"model", "messages", "temperature", "stream", "response_format"} <= set(body["properties"])
    assert body["additionalProperties"] is False
    error = op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert doc["components"]["schemas"][error.rsplit("/", 1)[-1]]["required"] == ["error"]
    assert "HTTPValidationError" not in json.dumps(doc)
    assert client.get("/docs").status_code == 200 and client.get("/redoc").status_code == 200


def test_api_docs_can_be_turned_off(tmp_path: Path) -> None:
    from server.api.app import create_app

    app = create_app(Settings(experts_dir=tmp_path, api_docs=False), engine_factory=lambda *a: FakeEngine())
    with TestClient(app) as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("stream", [False, True])
def test_the_sampling_header_is_bounded(app_client, stream: bool) -> None:
    client, _ = app_client
    stops = [f"{i}" + "z" * 60_000 for i in range(16)]
    body = {"model": "plain", "messages": [{"role": "user", "content": "Hi"}], "stop": stops, "stream": stream}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text[:300]
    header = r.headers["x-expert-sampling"]
    assert len(header) <= 4096
    sampling = json.loads(header)
    assert sampling["stop"] == {"omitted": "16 values, too long for a header", "source": "request"}
    assert sampling["temperature"] == {"value": 0.3, "source": "manifest"}
