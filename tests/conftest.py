"""Shared fixtures. The real server (`expert serve`, real vLLM engine, embedded model) starts
once per test session, on loopback, over a folder of test experts built here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from trainer.synthetic import make_lora, manifest, write_expert, write_soft_prompt_expert

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "hivellm"
EXPERT_BIN = Path(sys.executable).parent / "expert"

JSON_GRAMMAR_GBNF = r"""
root ::= "{" ws "\"answer\"" ws ":" ws string ws "}"
string ::= "\"" [a-zA-Z0-9 ,.]{1,40} "\""
ws ::= [ ]?
"""


TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "templates"


def with_tools_template(model: Path, out: Path) -> Path:
    """A copy of the model folder `model` (weights linked, not copied) whose chat template
    renders `tools` in the Hermes style (tests/fixtures/templates/hermes_tools.jinja)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.suffix == ".safetensors":
            (out / f.name).symlink_to(f.resolve())
        elif f.name != "chat_template.jinja" and f.is_file():
            shutil.copy2(f, out / f.name)
    shutil.copy2(TEMPLATES / "hermes_tools.jinja", out / "chat_template.jinja")
    return out


@pytest.fixture(scope="session")
def tools_model(tmp_path_factory: pytest.TempPathFactory, base_path: Path) -> Path:
    """The embedded model with a chat template that renders tools."""
    return with_tools_template(base_path, tmp_path_factory.mktemp("tools-model"))


@pytest.fixture(scope="session")
def base_path() -> Path:
    from server.manifest.embedded import prepare

    return prepare()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference manifests not found at {REFERENCE}")
    return REFERENCE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    base_model: str
    experts_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def experts_dir(tmp_path_factory: pytest.TempPathFactory, base_path: Path) -> Path:
    root = tmp_path_factory.mktemp("experts")
    lora_a = make_lora(base_path, root / "lora-a", seed=1)
    write_expert(
        root, manifest("lora-a", version="1.0.0", adapter=lora_a, decoding={"temperature": 0.1, "max_tokens": 12})
    )
    write_expert(root, manifest("stopper", decoding={"stop_sequences": ["Paris"], "temperature": 0.0}))
    write_expert(
        root,
        manifest(
            "jsoner",
            decoding={
                "use_grammar": True,
                "grammar_type": "json",
                "validation": "json",
                "temperature": 0.7,
                "max_tokens": 200,
            },
        ),
    )
    write_expert(
        root,
        manifest(
            "gbnf-expert",
            decoding={"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "grammar.gbnf", "max_tokens": 40},
        ),
        files={"grammar.gbnf": JSON_GRAMMAR_GBNF},
    )
    # its grammar copies the answer from the request's text (input-span, defined per request)
    write_expert(
        root,
        manifest(
            "copier",
            decoding={"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "grammar.gbnf", "max_tokens": 64},
        ),
        files={"grammar.gbnf": 'root ::= "{\\"answer\\": \\"" input-span "\\"}"\n'},
    )
    write_expert(root, manifest("short-ctx", runtime={"max_model_len": 128, "attention_kernel": "flash-v2"}))
    # used only by tests/api/test_metrics.py, so its counts are exactly what that test sends
    write_expert(
        root,
        manifest(
            "metrics-probe",
            decoding={
                "temperature": 0,
                "max_tokens": 4,
                "validation": "json",
                "use_grammar": True,
                "grammar_type": "json",
            },
        ),
    )
    # reloaded by tests/experts/test_reload.py between two adapters; the second waits outside the folder
    swap_a = make_lora(base_path, root / "swap", seed=2)
    write_expert(root, manifest("swap", version="1.0.0", adapter=swap_a, decoding={"temperature": 0, "max_tokens": 8}))
    make_lora(base_path, root.parent / f"{root.name}-swap-b", seed=3)
    # soft prompts made from the embeddings of real instructions, so their effect is visible
    write_soft_prompt_expert(root, base_path)
    # valid manifest, not servable: DoRA
    write_expert(root, manifest("dora-expert", adapter={"type": "dora", "r": 8, "alpha": 16}))
    return root


def pytest_configure(config: pytest.Config) -> None:
    # a supervisor's SIGTERM (`timeout`, a cancelled CI job) ends the run as Ctrl-C does, so the
    # session's teardown still stops the servers it started
    test_process = os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() == test_process:
            raise KeyboardInterrupt
        # a child forked by a test (multiprocessing) inherits this handler: it ends, as by default
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def _prctl():
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


_PRCTL = _prctl()
PR_SET_PDEATHSIG = 1


def ends_with_this_process() -> None:
    """Popen's preexec_fn for a server a test starts in its own session: on Linux, the server is sent
    SIGTERM (and stops its engine) when the test process ends, even by SIGKILL. The signal follows
    the thread that started the server, so start servers from the main thread."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_server(experts: Path, log_path: Path, env_extra: dict[str, str] | None = None) -> RunningServer:
    port = free_port()
    env = {**os.environ, "EXPERT_DTYPE": "float32", "EXPERT_MAX_MODEL_LEN": "1024", **(env_extra or {})}
    with log_path.open("w") as log_file:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [str(EXPERT_BIN), "serve", "--experts-dir", str(experts), "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=ends_with_this_process,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        return _wait_ready(proc, url, experts, log_path)
    except BaseException:  # not ready in time, or the run interrupted while waiting
        _stop(proc)
        raise


def _wait_ready(proc: subprocess.Popen, url: str, experts: Path, log_path: Path) -> RunningServer:
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            r = httpx.get(url + "/ready", timeout=2)
            if r.status_code == 200:
                return RunningServer(url, "HuggingFaceTB/SmolLM2-135M-Instruct", experts, log_path, proc)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("server not ready after 300 s:\n" + log_path.read_text()[-4000:])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def server(experts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    running = _start_server(experts_dir, log_path)
    try:
        yield running
    finally:
        _stop(running.process)


@pytest.fixture(scope="session")
def openai_client(server: RunningServer):
    import openai

    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def sampling_header(raw_response) -> dict:
    return json.loads(raw_response.headers["x-expert-sampling"])
