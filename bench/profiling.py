"""Optional py-spy profile of a server's API process under load, summarised to the event loop's
busiest functions."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .measure import measure
from .plan import Plan
from .servers import Server


def profile_api_process(server: Server, plan: Plan, seconds: float, out_dir: Path) -> dict[str, Any]:
    """py-spy samples of the server's API process (HTTP, detokenised outputs, SSE; the engine core runs
    in a child process) during an 8-client load; the top functions by own and total samples."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    assert server.proc is not None
    raw = out_dir / f"profile-{server.name}.txt"
    spy_proc = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(server.proc.pid),
            "-d",
            str(int(seconds)),
            "-r",
            "100",
            "--format",
            "raw",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        measure(server, plan, 8, window_s=seconds)
        spy_proc.wait(timeout=seconds + 30)
    finally:
        if spy_proc.poll() is None:
            os.killpg(spy_proc.pid, signal.SIGKILL)
    if not raw.exists():
        return {"error": (spy_proc.stderr.read().decode(errors="replace") if spy_proc.stderr else "")[:500]}
    return summarise_stacks(raw)


def summarise_stacks(raw: Path, top: int = 15) -> dict[str, Any]:
    """Event-loop thread only (the stacks under asyncio's Runner.run): the share of samples in which it
    was busy, and the functions it spent them in (own = leaf frame; total = anywhere on the stack;
    the gateway's own code aggregated as server/*)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    loop_samples = 0
    loop_native = 0
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        if not any(f.startswith("Runner.run (asyncio/runners.py") for f in frames):
            continue
        loop_samples += n
        leaf = frames[-1]
        if leaf.startswith("Runner.run (asyncio/runners.py"):
            loop_native += n  # uvloop's C code: polling, socket writes
        own[leaf] = own.get(leaf, 0) + n
        for f in set(frames):
            total[f] = total.get(f, 0) + n
        if any("(server/" in f for f in frames):
            total["[gateway code: server/*]"] = total.get("[gateway code: server/*]", 0) + n

    def pick(d: dict[str, int]) -> list[dict[str, Any]]:
        rows = sorted(d.items(), key=lambda kv: -kv[1])
        return (
            [{"frame": k, "share_of_loop": round(v / loop_samples, 3)} for k, v in rows[:top]] if loop_samples else []
        )

    return {
        "samples_all_threads": samples,
        "event_loop_samples": loop_samples,
        "event_loop_in_native_share": round(loop_native / loop_samples, 3) if loop_samples else None,
        "top_own": pick(own),
        "top_total": pick({k: v for k, v in total.items() if v < loop_samples}),
        "raw": str(raw),
    }
