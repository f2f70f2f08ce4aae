"""The real server (real engine, embedded model) against hostile clients and folders: values the
engine would choke on are a 400 before it sees them, bodies and headers that never arrive are
cut off in time, a log line cannot be forged, hostile folders at start-up leave the rest served,
and a killed engine core turns /health to 503 and the process exits for its supervisor, which
starts a server that answers again."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import RunningServer, _start_server, _stop

from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.engine

Q = [{"role": "user", "content": "Hi"}]


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    return err


# ----------------------------------------------------------------------------- through the shared server

SCHEMAS = {
    "type is a number": {"type": 123},
    "properties is a string": {"type": "object", "properties": "x"},
    "missing $ref": {"$ref": "#/$defs/nope"},
    "invalid regex": {"type": "string", "pattern": "(["},
    "minimum 1e308": {"type": "integer", "minimum": 1e308},
    "self reference": {"$ref": "#"},
}


def _deep_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    "extra",
    [
        {"seed": 2**64},
        {"seed": 2**100},
        {"seed": -(2**63) - 1},
        {"top_k": 2**64},
        {"stream": "yes"},
        {"temperature": "0.5"},
        *(
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}}
            for s in SCHEMAS.values()
        ),
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": _deep_schema(70)}}},
    ],
    ids=[
        "seed-2^64",
        "seed-2^100",
        "seed-below-int64",
        "top_k-2^64",
        "stream-yes",
        "temperature-string",
        *SCHEMAS,
        "schema-70-deep",
    ],
)
def test_values_the_engine_would_choke_on_are_400(server: RunningServer, extra: dict) -> None:
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": server.base_model, "messages": Q, "max_tokens": 2, **extra},
        timeout=120,
    )
    assert_openai_error(r, 400)


@pytest.mark.parametrize(
    "raw",
    [
        '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        '{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "stop": ["\\udfff"]}',
        '{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
        '{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "x": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"model": "%s", "messages": [{"role": "user", "content": ' + "[" * 5000 + "]" * 5000 + "}]}",
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["surrogate-content", "surrogate-stop", "surrogate-part", "deep-unknown-field", "deep-content", "deep-body"],
)
def test_surrogates_and_deep_bodies_are_400(server: RunningServer, raw: str) -> None:
    body = raw % server.base_model if "%s" in raw else raw
    r = httpx.post(
        server.url + "/v1/chat/completions",
        content=body.encode(),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert_openai_error(r, 400)


def test_the_sampling_header_stays_small_with_huge_stop_strings(server: RunningServer, openai_client) -> None:
    stops = [f"{i}" + "z" * 60_000 for i in range(16)]
    raw = openai_client.chat.completions.with_raw_response.create(
        model=server.base_model, messages=Q, max_tokens=2, stop=stops
    )
    header = raw.headers["x-expert-sampling"]
    assert len(header) <= 4096
    assert json.loads(header)["stop"]["omitted"].startswith("16 values")
    assert raw.parse().choices[0].finish_reason in ("stop", "length")


def test_a_log_line_cannot_be_forged_through_the_model_name(server: RunningServer) -> None:
    r = httpx.post(
        server.url + "/v1/chat/completions", json={"model": "nope\r\nERROR forged-by-client", "messages": Q}, timeout=60
    )
    assert_openai_error(r, 404)
    time.sleep(0.5)
    lines = server.log().splitlines()
    assert not any(line.startswith("ERROR forged-by-client") for line in lines)
    # an unknown model is logged without its name (expert=-): the request's text never reaches the log
    assert not any("forged-by-client" in line for line in lines)
    assert any("status=404" in line and "expert=-" in line for line in lines)


# ----------------------------------------------------------------------------- one server of its own


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hostile-experts")
    write_expert(root, manifest("plain", decoding={"temperature": 0, "max_tokens": 4}))
    deep = root / "deep-manifest"
    deep.mkdir()
    (deep / "manifest.json").write_text('{"name": "deep-manifest", "_x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    write_expert(
        root,
        manifest("deep-grammar", decoding={"use_grammar": True, "grammar_type": "gbnf"}),
        files={"grammar.gbnf": "root ::= " + "(" * 3000 + '"a"' + ")" * 3000 + "\n"},
    )
    write_expert(root, manifest("escaper", version="1/../../../escaped"))
    return root, tmp_path_factory.mktemp("hostile-logs")


def _wait_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    start = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return time.monotonic() - start, data


def _engine_core(pid: int) -> psutil.Process:
    """vLLM's engine core: the child titled `VLLM::EngineCore`, else the child holding the most
    memory (the model's weights and KV cache)."""
    children = psutil.Process(pid).children(recursive=True)
    for child in children:
        try:
            if "EngineCor" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    assert children, "the server has no child processes"
    return max(children, key=lambda c: c.memory_info().rss)


def test_hostile_start_slow_clients_a_killed_engine_and_a_killed_gateway(hostile: tuple[Path, Path]) -> None:
    root, logs = hostile
    env = {"EXPERT_READ_TIMEOUT": "3"}
    running = _start_server(root, logs / "first.log", env)
    try:
        ready = httpx.get(running.url + "/ready", timeout=30).json()
        assert ready["experts"] == ["plain"]
        assert set(ready["not_loaded"]) == {"deep-manifest", "deep-grammar", "escaper"}
        from server.manifest.embedded import default_cache_dir

        assert not list(default_cache_dir().glob("escaped*"))

        host, port = running.url.removeprefix("http://").split(":")
        # a body that never arrives: 408 at the read timeout, then the connection closes
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"model": '
            )
            took, data = _wait_closed(sock, 30)
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert took < 15
        # headers that never end: the connection is closed
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            took, data = _wait_closed(sock, 30)
        assert took < 15 and data == b""
        assert httpx.get(running.url + "/health", timeout=10).status_code == 200

        # kill the engine core: 503s, /health fails, the process exits non-zero
        _engine_core(running.process.pid).send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and running.process.poll() is None:
            try:
                r = httpx.get(running.url + "/health", timeout=5)
                if r.status_code == 503:
                    health = r
                    chat = httpx.post(
                        running.url + "/v1/chat/completions", json={"model": "plain", "messages": Q}, timeout=10
                    )
                    assert_openai_error(chat, 503)
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert health is not None, running.log()[-3000:]
        assert_openai_error(health, 503)
        assert running.process.wait(timeout=120) == 3, running.log()[-3000:]
    finally:
        _stop(running.process)

    # the supervisor (here the test, as Kubernetes would) starts the same command again
    again = _start_server(root, logs / "second.log", env)
    try:
        r = httpx.post(
            again.url + "/v1/chat/completions", json={"model": "plain", "messages": Q, "max_tokens": 2}, timeout=120
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] is not None

        # the gateway killed outright (SIGKILL, the OOM killer): its engine processes do not outlive it
        engine = psutil.Process(again.process.pid).children(recursive=True)
        assert any("EngineCor" in p.name() for p in engine), [p.name() for p in engine]
        again.process.kill()
        again.process.wait(timeout=10)
        _, alive = psutil.wait_procs(engine, timeout=60)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        _stop(again.process)
