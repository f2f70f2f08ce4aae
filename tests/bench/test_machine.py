"""bench/machine.py's list of other busy processes."""

from __future__ import annotations

import os
import subprocess

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
