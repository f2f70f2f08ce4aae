"""bench/machine.py's list of other busy processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import machine

pytestmark = pytest.mark.unit


def test_other_processes_leaves_out_the_benchmark_and_its_own_ps(monkeypatch):
    me = os.getpid()
    listing = "\n".join(
        [
            "    PID    PPID %CPU   RSS     ELAPSED COMMAND",
            f"  90001 {me:7d}  100  4556       00:00 ps -eo pid,ppid,pcpu,rss,etime,args --sort=-pcpu",
            "  90002       1 55.0  9000    01:00:00 some-other-job --busy",
            f"  {me}       1 40.0  9000       10:00 python -m bench.run",
            "  90003       1  2.0  9000       10:00 an-idle-daemon",
        ]
    )
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=listing + "\n", stderr="")
    )
    assert machine.other_processes({me}) == ["pid 90002 cpu 55.0% (since start) some-other-job --busy"]


def test_engine_counters_sum_label_sets_and_only_the_named_series(monkeypatch):
    from bench import servers

    text = "\n".join(
        [
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            'vllm:prompt_tokens_total{engine="0",model_name="m"} 100.0',
            'vllm:prompt_tokens_total{engine="1",model_name="m"} 20.0',
            'vllm:prompt_tokens_by_source_total{engine="0",source="local_compute"} 999.0',
            'vllm:prompt_tokens_cached_total{engine="0",model_name="m"} 30.0',
            'vllm:prompt_tokens_cached_created{engine="0",model_name="m"} 1.7e9',
        ]
    )

    class Reply:
        def __init__(self, body: str) -> None:
            self.text = body

    monkeypatch.setattr(servers.httpx, "get", lambda *a, **k: Reply(text))
    server = servers.Server(name="s", kind="gateway", cmd=[], env={}, port=1, log_path=Path("/dev/null"))
    assert servers.engine_counters(server) == {
        "vllm:prompt_tokens_total": 120.0,
        "vllm:prompt_tokens_cached_total": 30.0,
    }
