"""After an interrupted `expert eval`, no child process is left running (one would keep the
command from exiting)."""

from __future__ import annotations

import multiprocessing
import signal
import time

import pytest

from server.commands.evaluate import stop_child_processes

pytestmark = pytest.mark.unit


def _stubborn(ready) -> None:  # a child that ignores SIGTERM, as a busy engine process may
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def _obliging(ready) -> None:
    ready.set()
    time.sleep(60)


def test_stop_child_processes_ends_every_child_even_one_that_ignores_sigterm():
    ready = [multiprocessing.Event(), multiprocessing.Event()]
    children = [
        multiprocessing.Process(target=f, args=(e,)) for f, e in zip((_stubborn, _obliging), ready, strict=True)
    ]
    for child in children:
        child.start()
    assert all(e.wait(30) for e in ready)  # the stubborn one ignores SIGTERM from here on
    started = time.monotonic()
    stop_child_processes(grace_s=1.0)
    assert not any(child.is_alive() for child in children)
    assert children[0].exitcode == -signal.SIGKILL and children[1].exitcode == -signal.SIGTERM
    assert time.monotonic() - started < 5
    assert multiprocessing.active_children() == []
