"""Expert folders and settings written by a careless or hostile operator, through the app (over
the fake engine: what is tested here is validation and start-up, not generation) and through
`expert serve` itself: a version is never a path or a header, files are read only from inside
the folder (no links out), deep or huge manifests and grammars are reported without taking
the server down, adapters with NaN or float64 weights are refused, keys that add up to
nothing stop the server from starting, and log lines cannot be forged."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from fake_engine import FakeEngine
from safetensors.numpy import save_file

from server.settings import Settings
from trainer.synthetic import manifest, write_expert

pytestmark = pytest.mark.service

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
EXPERT_BIN = Path(sys.executable).parent / "expert"
Q = [{"role": "user", "content": "Hi"}]
ADAPTER = {"type": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj"]}


def write_lora(folder: Path, *, value: float = 0.01, dtype: str = "float32") -> None:
    """A small LoRA adapter in PEFT's file layout (the fake engine accepts any adapter)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "lora_dropout": 0.0}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    a = np.full((2, 576), value, dtype=dtype)
    b = np.full((576, 2), value, dtype=dtype)
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b,
        },
        str(folder / "adapter_model.safetensors"),
    )


def lora_expert(root: Path, name: str, **kw) -> Path:
    folder = write_expert(root, manifest(name, adapter=ADAPTER, decoding={"max_tokens": 4}))
    write_lora(folder, **kw)
    return folder


async def _with_app(settings: Settings, engine: FakeEngine, body):
    from server.api.app import create_app

    app = create_app(settings, engine_factory=lambda model, name, args: engine)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60):
        gw = app.state.service
        await asyncio.wait_for(gw.started(), 120)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=120) as client:
            return await body(client, gw)


def call(experts: Path, body, tmp_path: Path, engine: FakeEngine | None = None, **settings_kw):
    engine = engine or FakeEngine()
    settings = Settings(experts_dir=experts, max_model_len=256, **settings_kw)
    return asyncio.run(_with_app(settings, engine, body)), engine


def reasons(listing: dict, name: str) -> str:
    for entry in listing["not_loaded"]:
        if entry["name"] == name:
            return " ".join(entry["reasons"])
    raise AssertionError(f"{name} is not reported as not loaded: {listing}")


# ----------------------------------------------------------------------------- version


def test_a_version_is_never_a_path_or_a_header(tmp_path: Path) -> None:
    root = tmp_path / "experts"
    lora_expert(root, "good")
    escape = tmp_path / "escaped"
    lora_expert(root, "traversal")
    lora_expert(root, "crlf")
    lora_expert(root, "latin")

    def set_version(name: str, version: str) -> None:
        file = root / name / "manifest.json"
        data = json.loads(file.read_text())
        data["version"] = version
        file.write_text(json.dumps(data))

    set_version("traversal", "1/../../../../../../" + str(escape).lstrip("/"))
    lora_expert(root, "traversal-short")
    set_version("traversal-short", "1/../../../escaped")
    set_version("crlf", "1.0.0\r\nX-Injected: yes")
    set_version("latin", "1.0.0-ü")

    async def go(client, gw):
        listing = (await client.get("/experts")).json()
        chat = await client.post("/v1/chat/completions", json={"model": "good", "messages": Q})
        reload_bad = await client.post("/experts/traversal/reload")
        set_version("good", "2.0.0-rc.1+build.7")
        reload_good = await client.post("/experts/good/reload")
        return listing, chat, reload_bad, reload_good

    (listing, chat, reload_bad, reload_good), _ = call(root, go, tmp_path)
    assert [e["name"] for e in listing["experts"]] == ["good"]
    assert "version: String should have at most 64 characters" in reasons(listing, "traversal")
    for name in ("traversal-short", "crlf", "latin"):
        assert "version: version must be x.y.z" in reasons(listing, name)
    assert chat.status_code == 200 and chat.headers["x-expert-version"] == "1.0.0"
    assert reload_bad.status_code == 422, reload_bad.text
    assert reload_good.status_code == 200 and reload_good.json()["new_version"] == "2.0.0-rc.1+build.7"
    assert not escape.exists()
    from server.manifest.embedded import default_cache_dir

    assert not list(default_cache_dir().glob("escaped*"))  # where "1/../../../escaped" would have led


# ----------------------------------------------------------------------------- links out


def test_no_file_is_read_through_a_link_out_of_the_expert_folder(tmp_path: Path) -> None:
    root = tmp_path / "experts"
    outside = tmp_path / "outside"
    write_lora(outside)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret-line-outside\n")

    weights = lora_expert(root, "weights-link")
    (weights / "adapter_model.safetensors").unlink()
    (weights / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")

    config = lora_expert(root, "config-link")
    (config / "adapter_config.json").unlink()
    (config / "adapter_config.json").symlink_to(outside / "adapter_config.json")

    grammar = write_expert(root, manifest("grammar-link", decoding={"use_grammar": True, "grammar_type": "gbnf"}))
    (grammar / "grammar.gbnf").symlink_to(secret)

    named = write_expert(root, manifest("named-grammar-link", decoding={"use_grammar": True, "grammar_file": "g.gbnf"}))
    (named / "g.gbnf").symlink_to(secret)

    (tmp_path / "elsewhere.json").write_text(json.dumps(manifest("manifest-link")))
    (root / "manifest-link").mkdir()
    (root / "manifest-link" / "manifest.json").symlink_to(tmp_path / "elsewhere.json")

    inner = lora_expert(root, "inner-link")  # a link that stays inside the folder is fine
    (inner / "weights").mkdir()
    (inner / "adapter_model.safetensors").rename(inner / "weights" / "adapter_model.safetensors")
    (inner / "adapter_model.safetensors").symlink_to(Path("weights") / "adapter_model.safetensors")

    async def go(client, gw):
        return (await client.get("/experts")).json()

    listing, engine = call(root, go, tmp_path)
    assert [e["name"] for e in listing["experts"]] == ["inner-link"]
    for name in ("weights-link", "config-link", "grammar-link", "named-grammar-link"):
        text = reasons(listing, name)
        assert "links out of it are refused" in text, text
        assert "secret-line-outside" not in text
    assert "manifest.json links out of the expert folder" in reasons(listing, "manifest-link")
    # the engine got only the adapter that lives inside its folder
    assert [h.name.split("@")[0] for h in engine.loras.values()] == ["inner-link"]


def test_file_names_longer_than_the_file_system_allows_are_refused_not_a_crash(tmp_path: Path) -> None:
    """A manifest may name a file no file system can hold (5,000 characters): the field is refused
    with its reason, at start-up and on reload, and the other experts are served."""
    root = tmp_path / "experts"
    lora_expert(root, "healthy")
    long = "p" * 5000
    write_expert(
        root, manifest("long-soft-prompt", soft_prompts=[{"name": "x", "path": f"{long}.safetensors", "tokens": 4}])
    )
    write_expert(root, manifest("long-grammar", decoding={"use_grammar": True, "grammar_file": f"{long}.gbnf"}))
    write_expert(root, manifest("long-adapter", adapter={**ADAPTER, "path": long}))
    fields = {
        "long-soft-prompt": "soft_prompts[0].path",
        "long-grammar": "training.decoding.grammar_file",
        "long-adapter": "base_models[0].adapters[0].path",
    }
    names = tuple(fields)

    async def go(client, gw):
        listing = (await client.get("/experts")).json()
        reloads = {n: await client.post(f"/experts/{n}/reload") for n in names}
        chat = await client.post("/v1/chat/completions", json={"model": "healthy", "messages": Q})
        return listing, reloads, chat

    (listing, reloads, chat), engine = call(root, go, tmp_path)
    assert [e["name"] for e in listing["experts"]] == ["healthy"]
    assert chat.status_code == 200
    for name in names:
        reason = reasons(listing, name)
        assert fields[name] in reason and "names the file system can hold" in reason, listing
        assert reloads[name].status_code == 422, (name, reloads[name].text)
        assert reloads[name].json()["error"]["type"] == "invalid_expert"
        assert long not in reloads[name].text  # the name is data, not echoed back whole
    assert [h.name.split("@")[0] for h in engine.loras.values()] == ["healthy"]


# ----------------------------------------------------------------------------- deep and big


def test_deep_manifests_and_grammars_are_reported_and_the_rest_served(tmp_path: Path) -> None:
    root = tmp_path / "experts"
    lora_expert(root, "healthy")
    deep = root / "deep-manifest"
    deep.mkdir()
    (deep / "manifest.json").write_text('{"name": "deep-manifest", "_x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    huge = root / "huge-manifest"
    huge.mkdir()
    (huge / "manifest.json").write_text('{"name": "huge-manifest", "_x": "' + "a" * 2_000_000 + '"}')
    write_expert(
        root,
        manifest("deep-grammar", decoding={"use_grammar": True, "grammar_type": "gbnf"}),
        files={"grammar.gbnf": "root ::= " + "(" * 3000 + '"a"' + ")" * 3000 + "\n"},
    )
    rules = "\n".join(["root ::= r0"] + [f'r{i} ::= r{i + 1} "a" | "b"' for i in range(3000)] + ['r3000 ::= "z"'])
    write_expert(
        root,
        manifest("many-rules", decoding={"use_grammar": True, "grammar_type": "gbnf"}),
        files={"grammar.gbnf": rules},
    )

    async def go(client, gw):
        listing = (await client.get("/experts")).json()
        ready = await client.get("/ready")
        chat = await client.post("/v1/chat/completions", json={"model": "healthy", "messages": Q})
        reloads = {n: await client.post(f"/experts/{n}/reload") for n in ("deep-manifest", "deep-grammar")}
        return listing, ready, chat, reloads

    started = time.monotonic()
    (listing, ready, chat, reloads), _ = call(root, go, tmp_path)
    assert time.monotonic() - started < 100
    assert ready.status_code == 200
    assert [e["name"] for e in listing["experts"]] == ["healthy"]
    assert chat.status_code == 200
    assert "nested deeper than" in reasons(listing, "deep-manifest")
    assert "over 1000000 bytes" in reasons(listing, "huge-manifest")
    assert "nests groups 3000 deep" in reasons(listing, "deep-grammar")
    assert "3002 rules, over the limit" in reasons(listing, "many-rules")
    for name, r in reloads.items():
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"]["type"] == "invalid_expert"


# ----------------------------------------------------------------------------- weights


def test_adapters_with_nan_or_float64_weights_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "experts"
    lora_expert(root, "finite")
    lora_expert(root, "nan", value=float("nan"))
    lora_expert(root, "inf", value=float("inf"))
    lora_expert(root, "f64", dtype="float64")
    stray = lora_expert(root, "stray-bin")
    marker = tmp_path / "unpickled"
    # a pickle that would create `marker` if anything ever unpickled it
    (stray / "adapter_model.bin").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")

    async def go(client, gw):
        staged = [sorted(p.name for p in Path(h.path).iterdir()) for h in engine.loras.values()]
        return (await client.get("/experts")).json(), staged

    engine = FakeEngine()
    (listing, staged), _ = call(root, go, tmp_path, engine=engine)
    assert sorted(e["name"] for e in listing["experts"]) == ["finite", "stray-bin"]
    assert "holds NaN or infinite values" in reasons(listing, "nan")
    assert "holds NaN or infinite values" in reasons(listing, "inf")
    assert "is F64; adapter weights must be F16, BF16 or F32" in reasons(listing, "f64")
    # the staged copy the engine reads holds the safetensors and the config, never the .bin
    assert staged == [["adapter_config.json", "adapter_model.safetensors"]] * 2
    assert not marker.exists()


# ----------------------------------------------------------------------------- keys


def _serve(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPERT_")}
    env.update(env_extra)
    return subprocess.run(
        [str(EXPERT_BIN), "serve", "--experts-dir", str(tmp_path), "--host", "0.0.0.0", "--port", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({"EXPERT_API_KEYS": '[""]'}, "EXPERT_API_KEYS holds an empty key"),
        ({"EXPERT_ADMIN_KEYS": '["  "]'}, "EXPERT_ADMIN_KEYS holds an empty key"),
        ({"EXPERT_KEYS_FILE": "{file}"}, "holds no key hashes"),
    ],
)
def test_keys_that_add_up_to_nothing_stop_the_server(tmp_path: Path, env: dict[str, str], message: str) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"client": [], "admin": []}')
    env = {k: v.replace("{file}", str(keys_file)) for k, v in env.items()}
    done = _serve(env, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert "Uvicorn running" not in done.stderr


# ----------------------------------------------------------------------------- logs


def test_a_log_line_cannot_be_forged() -> None:
    from server.commands.serve import SafeFormatter

    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "model=%s", ("a\r\nERROR forged: line\x1b[31m",), None)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line == "INFO x: model=a\\x0d\\nERROR forged: line\\x1b[31m"


# ----------------------------------------------------------------------------- slow clients


def _read_until_closed(sock, limit: float) -> tuple[float, bytes]:
    start = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return time.monotonic() - start, data


def test_headers_and_bodies_that_never_arrive_are_cut_off(tmp_path: Path) -> None:
    """uvicorn with the server's HTTP protocol (as `expert serve` runs it) over the app."""
    import socket
    import threading

    import uvicorn

    from server.api.app import create_app
    from server.commands.http_limits import protocol_with_deadline

    write_expert(tmp_path, manifest("plain"))
    settings = Settings(experts_dir=tmp_path, max_model_len=256, read_timeout=2)
    app = create_app(settings, engine_factory=lambda *a: FakeEngine())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=protocol_with_deadline(2))
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        # a body that never arrives (Content-Length larger than what is sent): 408, then closed
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"model": '
            )
            took, data = _read_until_closed(sock, 30)
        assert data.startswith(b"HTTP/1.1 408"), data[:300]
        assert b'"type":"invalid_request_error"' in data
        assert 1.5 < took < 10
        # headers that never end: the connection is closed
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            took, data = _read_until_closed(sock, 30)
        assert data == b"" and 1.5 < took < 10
        # a route that does not read its body: closed at the latest at the body's deadline
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
            took, data = _read_until_closed(sock, 30)
        assert data.startswith(b"HTTP/1.1 200") and took < 10
        # the server still answers
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        server.should_exit = True
        thread.join(60)


def test_a_dead_engine_fails_health_and_asks_to_exit(tmp_path: Path) -> None:
    """The app's side of engine death (the real engine is killed in tests/api/test_hostile_server.py)."""
    write_expert(tmp_path, manifest("plain"))
    engine = FakeEngine()
    fatal_calls: list[str] = []

    async def go(client, service):
        service.on_fatal.append(lambda: fatal_calls.append(service.fatal))
        before = await client.get("/health")
        engine.dead = True  # what vLLM reports once its engine core process has exited
        await asyncio.sleep(2.5)
        return (
            before,
            await client.get("/health"),
            await client.get("/ready"),
            await client.post("/v1/chat/completions", json={"model": "plain", "messages": Q}),
        )

    (before, health, ready, chat), _ = call(tmp_path, go, tmp_path, engine=engine)
    assert before.status_code == 200
    for r in (health, ready, chat):
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable", r.text
    assert fatal_calls == ["the engine died"]


def test_a_default_soft_prompt_longer_than_the_context_is_refused(tmp_path: Path) -> None:
    for name, tokens in (("fits", 8), ("too-long", 300)):
        entry = {"name": "sp", "path": "sp.safetensors", "tokens": tokens}
        folder = write_expert(tmp_path, manifest(name, soft_prompts=[entry]))
        embeddings = np.random.default_rng(0).normal(size=(tokens, 576)).astype("float32")
        save_file({"prompt_embeddings": embeddings}, str(folder / "sp.safetensors"))

    async def go(client, service):
        return (await client.get("/experts")).json()

    listing, _ = call(tmp_path, go, tmp_path)  # engine context: 256 tokens
    assert [e["name"] for e in listing["experts"]] == ["fits"]
    assert "the default soft prompt has 300 tokens, not less than the context of 256 tokens" in reasons(
        listing, "too-long"
    )


def test_a_reload_does_not_stall_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.manifest.grammar as grammar

    write_expert(tmp_path, manifest("plain"))
    rules = "\n".join(["root ::= r0"] + [f'r{i} ::= r{i + 1} "a" | "b"' for i in range(990)] + ['r990 ::= "z"'])
    write_expert(
        tmp_path,
        manifest("slow-grammar", decoding={"use_grammar": True, "grammar_type": "gbnf"}),
        files={"grammar.gbnf": rules},
    )
    real_compile = grammar._compile

    def slow_compile(text, tokenizer_dir):
        # xgrammar caches what it compiled at start-up, so the reload's own compile can be quick:
        # a blocking second makes the reload slow on any machine; on the loop, it would stall /health
        time.sleep(1.5)
        return real_compile(text, tokenizer_dir)

    async def go(client, service):
        monkeypatch.setattr(grammar, "_compile", slow_compile)
        reload = asyncio.create_task(client.post("/experts/slow-grammar/reload"))
        gaps = []
        while not reload.done():
            start = time.monotonic()
            assert (await client.get("/health")).status_code == 200
            gaps.append(time.monotonic() - start)
            await asyncio.sleep(0.05)
        return await reload, gaps

    (reload, gaps), _ = call(tmp_path, go, tmp_path)
    assert reload.status_code == 200, reload.text
    assert len(gaps) >= 10  # the reload took over 1.5 s, and /health answered all along
    assert max(gaps) < 1.0, max(gaps)
