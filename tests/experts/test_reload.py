"""Hot reload with the real engine: under load, between two adapters, nothing fails or mixes."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from trainer.synthetic import ADAPTER_FILES, install_adapter

pytestmark = pytest.mark.engine

PROMPT = [{"role": "user", "content": "Name a color."}]


def adapters(experts_dir: Path) -> dict[str, Path]:
    return {
        "A": experts_dir / ".." / f"{experts_dir.name}-swap-a",
        "B": experts_dir.parent / f"{experts_dir.name}-swap-b",
    }


@pytest.fixture(scope="module")
def swap(experts_dir: Path) -> dict[str, Path]:
    folder = experts_dir / "swap"
    a = experts_dir.parent / f"{experts_dir.name}-swap-a"
    if not a.exists():
        a.mkdir()
        for f in ADAPTER_FILES:
            shutil.copyfile(folder / f, a / f)
    return {"folder": folder, "A": a, "B": experts_dir.parent / f"{experts_dir.name}-swap-b"}


def reload(server, name="swap") -> httpx.Response:
    return httpx.post(f"{server.url}/experts/{name}/reload", timeout=120)


def ask(server, stream=False) -> tuple[str, str]:
    body = {"model": "swap", "messages": PROMPT, "temperature": 0, "max_tokens": 8, "stream": stream}
    if not stream:
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
        r.raise_for_status()
        return r.headers["x-expert-version"], r.json()["choices"][0]["message"]["content"]
    text = ""
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        r.raise_for_status()
        version = r.headers["x-expert-version"]
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                assert "error" not in event, event
                for c in event["choices"]:
                    text += c["delta"].get("content") or ""
    return version, text


def test_reload_under_load_never_fails_nor_mixes_versions(server, swap):
    folder = swap["folder"]
    install_adapter(folder, swap["A"], "1.0.0")
    assert reload(server).status_code == 200
    version, text_a = ask(server)
    assert version == "1.0.0"
    install_adapter(folder, swap["B"], "2.0.0")
    r = reload(server)
    assert r.status_code == 200, r.text
    assert r.json()["old_version"] == "1.0.0" and r.json()["new_version"] == "2.0.0"
    version, text_b = ask(server)
    assert version == "2.0.0"
    assert text_a != text_b, "the two adapters must answer differently for this test to mean anything"
    expected = {"1.0.0": text_a, "2.0.0": text_b}

    stop = threading.Event()
    results: list[tuple[str, str] | Exception] = []

    def client(i: int) -> None:
        k = 0
        while not stop.is_set():
            try:
                results.append(ask(server, stream=(i + k) % 2 == 0))
            except Exception as exc:  # recorded: the test fails on any
                results.append(exc)
            k += 1

    reloads = []
    with ThreadPoolExecutor(8) as pool:
        for i in range(8):
            pool.submit(client, i)
        time.sleep(2)
        for n, which in enumerate("ABAB", start=3):
            version = f"{n}.0.0"
            install_adapter(folder, swap[which], version)
            expected[version] = text_a if which == "A" else text_b
            r = reload(server)
            assert r.status_code == 200, r.text
            reloads.append(r.json())
            deadline = time.time() + 60  # let the new version serve a few requests under load
            while time.time() < deadline and sum(1 for x in results if isinstance(x, tuple) and x[0] == version) < 3:
                time.sleep(0.2)
        stop.set()

    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, failures[:3]
    seen = {v for v, _ in results}
    assert {"3.0.0", "4.0.0", "5.0.0", "6.0.0"} <= seen, seen
    wrong = [(v, t) for v, t in results if t != expected[v]]
    assert not wrong, wrong[:5]
    # each reload replaced the previous version, and every old adapter left the engine
    for prev, cur in itertools.pairwise(reloads):
        assert cur["old_adapter"] == prev["adapter"]
    time.sleep(1)
    log = server.log()
    for r in reloads:
        assert f"adapter {r['old_adapter']} removed from the engine" in log


def test_corrupted_adapter_or_manifest_is_422_and_the_old_version_keeps_answering(server, swap):
    folder = swap["folder"]
    install_adapter(folder, swap["A"], "10.0.0")
    assert reload(server).status_code == 200
    before = ask(server)

    good_weights = (folder / "adapter_model.safetensors").read_bytes()
    good_manifest = (folder / "manifest.json").read_text()
    try:
        # 1. weights that do not match the manifest's sha256
        (folder / "adapter_model.safetensors").write_bytes(b"\0garbage" * 100)
        r = reload(server)
        assert r.status_code == 422, r.text
        assert any("sha256" in d for d in r.json()["error"]["details"])
        assert ask(server) == before
        # 2. corrupt weights and no hash to catch it: the engine itself refuses them
        install_adapter(folder, swap["A"], "11.0.0", sha=False)
        (folder / "adapter_model.safetensors").write_bytes(b"\0garbage" * 100)
        r = reload(server)
        assert r.status_code == 422, r.text
        assert ask(server) == before
        # 3. a manifest that is not JSON
        (folder / "manifest.json").write_text("{ not json")
        r = reload(server)
        assert r.status_code == 422
        assert "invalid JSON" in " ".join(r.json()["error"]["details"])
        assert ask(server) == before
        # 4. an engine-wide hint changed: 409 with the difference
        data = json.loads(good_manifest)
        data["runtime"] = {"kv_cache_dtype": "fp8"}
        (folder / "manifest.json").write_text(json.dumps(data))
        (folder / "adapter_model.safetensors").write_bytes(good_weights)
        r = reload(server)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["details"]["kv_cache_dtype"] == {"old": None, "new": "fp8"}
        assert ask(server) == before
    finally:
        (folder / "adapter_model.safetensors").write_bytes(good_weights)
        (folder / "manifest.json").write_text(good_manifest)
    detail = httpx.get(f"{server.url}/experts/swap").json()
    assert detail["version"] == "10.0.0"


def test_concurrent_reloads_of_one_expert_do_not_interleave(server, swap):
    install_adapter(swap["folder"], swap["B"], "20.0.0")
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: reload(server), range(4)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    chain = sorted((r.json() for r in responses), key=lambda r: int(r["adapter"].rsplit("#", 1)[1]))
    for prev, cur in itertools.pairwise(chain):
        assert cur["old_adapter"] == prev["adapter"]


def test_unknown_and_traversal_names(server):
    assert reload(server, "no-such-expert").status_code == 404
    for name in ("%2E%2E", "..%5C..", "a..b"):
        r = httpx.post(f"{server.url}/experts/{name}/reload")
        assert r.status_code == 400, (name, r.text)


def test_delete_unloads_then_reload_loads_again(server, swap):
    install_adapter(swap["folder"], swap["A"], "30.0.0")
    assert reload(server).status_code == 200
    r = httpx.delete(f"{server.url}/experts/swap", timeout=60)
    assert r.status_code == 200 and r.json()["drained"] is True
    gone = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "swap", "messages": PROMPT})
    assert gone.status_code == 404
    r = reload(server)
    assert r.status_code == 200 and r.json()["old_version"] is None
    assert ask(server)[0] == "30.0.0"
