"""The engine core ends when the gateway process that started it is gone.

vLLM's engine core runs in a process of its own (`VLLM::EngineCore`), and its workers end when it
ends; but nothing ends the engine core when its parent dies without stopping it: a SIGKILL, the
OOM killer, a supervisor's forced stop. It then runs on, holding the model's memory (on a GPU,
what the next start needs), reparented to whoever launched the gateway.

`watch_parent` (called by the plugin, server/engine/plugin.py, in the engine core process only)
starts a daemon thread that compares the process's parent with the one it started with, once a
second. When the parent changes, the gateway is gone: the thread sends the process SIGTERM, which
vLLM's engine core handles as a shutdown (its workers follow), and SIGKILL if it is still alive
`grace_s` later.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

log = logging.getLogger("expert_gateway.parent_watch")

ENGINE_CORE_PREFIX = "EngineCore"  # vLLM's name for the engine core process: EngineCore, EngineCore_DP<i>
_started = False


def in_engine_core() -> bool:
    return multiprocessing.current_process().name.startswith(ENGINE_CORE_PREFIX)


def watch_parent(interval_s: float = 1.0, grace_s: float = 30.0) -> None:
    """Start the watch in this process (once)."""
    global _started
    if _started:
        return
    _started = True
    started_by = multiprocessing.parent_process()  # the gateway process, even if it is already gone
    parent = started_by.pid if started_by is not None and started_by.pid is not None else os.getppid()
    threading.Thread(
        target=_watch, args=(parent, interval_s, grace_s), name="expert-gateway-parent-watch", daemon=True
    ).start()


def _watch(parent: int, interval_s: float, grace_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    log.warning("the gateway process (pid %d) is gone: stopping the engine core", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)
