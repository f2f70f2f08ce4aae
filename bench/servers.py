"""Starting and stopping the servers under test, each in its own process group.

Both servers get the same engine settings (dtype, context, LoRA, prompt embeddings, eager
mode, batch size, prefix caching) and the same vLLM CPU environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from server.settings import cpu_auto_dtype

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
VENV_BIN = Path(sys.executable).parent
CPU_ENV = {"VLLM_CPU_OMP_THREADS_BIND": f"0-{max((os.cpu_count() or 1) - 1, 0)}", "VLLM_CPU_KVCACHE_SPACE": "1"}


@dataclass
class EngineConfig:
    dtype: str = field(default_factory=cpu_auto_dtype)  # the gateway's `auto` on a CPU
    max_model_len: int = 2048
    max_loras: int = 5  # a slot for each of the benchmark's 5 adapters: mixed traffic never swaps
    max_cpu_loras: int = 16
    max_lora_rank: int = 16
    max_num_seqs: int = 64
    kv_block_size: int | None = None  # None: vLLM's platform default (128 on a CPU)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without EXPERT_* / VLLM_* settings (keys, ports, ...), plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERT_", "VLLM_"))}
    env.update(CPU_ENV)
    env.update(extra)
    return env


@dataclass
class Server:
    name: str
    kind: str  # "gateway" | "vllm"
    cmd: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    started_s: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        log.close()
        self._t0 = time.perf_counter()

    def wait_ready(self, timeout: float = 600) -> None:
        assert self.proc is not None
        path = "/ready" if self.kind == "gateway" else "/v1/models"
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode}; last log lines:\n" + self.tail()
                )
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    self.started_s = time.perf_counter() - self._t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; last log lines:\n" + self.tail())

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) so far of the API process (HTTP, tokenising, detokenising, SSE) and of
        its descendants (vLLM's engine core and worker), from /proc; children that exited are not counted."""
        return _tree_cpu(self, _scan_proc())

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        # the engine core runs in a child process of the same group: make sure it is gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def _scan_proc() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds user + system) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        procs[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return procs


def _tree_cpu(server: Server, procs: dict[int, tuple[int, float]]) -> dict[str, float]:
    if server.proc is None:
        return {"api": 0.0, "engine": 0.0}
    root = server.proc.pid
    tree, frontier = {root}, [root]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    api = procs.get(root, (0, 0.0))[1]
    return {"api": api, "engine": sum(procs[p][1] for p in tree if p != root and p in procs)}


def machine_busy_seconds() -> float:
    """CPU seconds the machine's CPUs were busy (steal included: a shared VM's other tenants), /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# vLLM's counters of the engine's prompt work (tokens), read from a server's /metrics: of the prompt
# positions it took in, those it served from the prefix cache; counts, whatever the machine's speed
ENGINE_COUNTERS = ("vllm:prompt_tokens_total", "vllm:prompt_tokens_cached_total")


def metric_sums(server: Server, names: tuple[str, ...]) -> dict[str, float] | None:
    """The series of `names` on the server's /metrics, each summed over its label sets; a name the
    server does not export is absent; None when /metrics does not answer."""
    try:
        text = httpx.get(server.url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            with contextlib.suppress(ValueError):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def engine_counters(server: Server) -> dict[str, float]:
    """ENGINE_COUNTERS summed over their label sets (0 where not exported); {} when /metrics does not answer."""
    sums = metric_sums(server, ENGINE_COUNTERS)
    return {} if sums is None else {k: sums.get(k, 0.0) for k in ENGINE_COUNTERS}


def snapshot(server: Server, everyone: list[Server]) -> dict[str, float]:
    """CPU so far of `server` (api, engine), of all our processes (`ours`: every server and this process),
    and of the whole machine (`machine`), with the time: deltas between two snapshots give the CPU that
    other jobs took meanwhile (`machine - ours`); and the server's engine counters (ENGINE_COUNTERS)."""
    procs = _scan_proc()
    mine = _tree_cpu(server, procs)
    ours = sum(sum(_tree_cpu(s, procs).values()) for s in everyone) + sum(os.times()[:2])
    return {
        **mine,
        "ours": ours,
        "machine": machine_busy_seconds(),
        "t": time.perf_counter(),
        **engine_counters(server),
    }


def gateway(
    name: str,
    experts_dir: Path,
    logs: Path,
    cfg: EngineConfig,
    *,
    embeds_for_all: bool = False,
    lora_ops: str = "project",
) -> Server:
    port = free_port()
    env = clean_env(
        {
            "EXPERT_DTYPE": cfg.dtype,
            "EXPERT_MAX_MODEL_LEN": str(cfg.max_model_len),
            "EXPERT_MAX_LORAS": str(cfg.max_loras),
            "EXPERT_MAX_CPU_LORAS": str(cfg.max_cpu_loras),
            "EXPERT_MAX_LORA_RANK": str(cfg.max_lora_rank),
            "EXPERT_MAX_NUM_SEQS": str(cfg.max_num_seqs),
            "EXPERT_EMBEDS_FOR_ALL_PROMPTS": "true" if embeds_for_all else "false",
            "EXPERT_LORA_OPS": lora_ops,
        }
    )
    if cfg.kv_block_size is not None:
        env["EXPERT_KV_BLOCK_SIZE"] = str(cfg.kv_block_size)
    cmd = [str(VENV_BIN / "expert"), "serve", "--experts-dir", str(experts_dir), "--port", str(port)]
    return Server(name, "gateway", cmd, env, port, logs / f"{name}.log")


def vllm_server(
    name: str, model_path: Path, logs: Path, cfg: EngineConfig, lora_modules: dict[str, Path] | None = None
) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--served-model-name",
        BASE_ID,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        cfg.dtype,
        "--max-model-len",
        str(cfg.max_model_len),
        "--enable-lora",
        "--max-loras",
        str(cfg.max_loras),
        "--max-cpu-loras",
        str(cfg.max_cpu_loras),
        "--max-lora-rank",
        str(cfg.max_lora_rank),
        "--enable-prompt-embeds",
        "--enforce-eager",
        "--max-num-seqs",
        str(cfg.max_num_seqs),
        "--enable-prefix-caching",
    ]
    if cfg.kv_block_size is not None:
        cmd += ["--block-size", str(cfg.kv_block_size)]
    if lora_modules:
        cmd += ["--lora-modules", *[f"{k}={v}" for k, v in lora_modules.items()]]
    return Server(name, "vllm", cmd, clean_env({}), port, logs / f"{name}.log")


def start_all(servers: list[Server], timeout: float = 600) -> None:
    """Start one after the other (two engines loading at once on 2 cores only slow each other)."""
    for s in servers:
        print(f"  starting {s.name} on port {s.port} ...", flush=True)
        s.start()
        s.wait_ready(timeout)
        print(f"  {s.name} ready in {s.started_s:.0f} s", flush=True)
