"""After an interrupted `expert eval`, no child process is left running (one would keep the
command from exiting)."""

from __future__ import annotations

import multiprocessing
import signal
import time

import pytest

from server.commands.evaluate import stop_child_processes

pytestmark = pytest.mark.unit


def _stubborn() -> None:  # a child that ignores SIGTERM, as a busy engine process may
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def _obliging() -> None:
    time.sleep(60)


def test_stop_child_processes_ends_every_child_even_one_that_ignores_sigterm():
    children = [multiprocessing.Process(target=f) for f in (_stubborn, _obliging)]
    for child in children:
        child.start()
    time.sleep(0.5)  # let the stubborn one install its handler
    started = time.monotonic()
    stop_child_processes(grace_s=1.0)
    assert not any(child.is_alive() for child in children)
    assert children[0].exitcode == -signal.SIGKILL and children[1].exitcode == -signal.SIGTERM
    assert time.monotonic() - started < 5
    assert multiprocessing.active_children() == []
