"""`expert train` becomes the trainer: a signal sent to it stops the training, not only a wrapper."""

from __future__ import annotations

import os
import sys

import pytest

from server import cli

pytestmark = pytest.mark.unit


def test_expert_train_execs_the_trainer_with_its_arguments(monkeypatch, tmp_path):
    calls = []
    missing = str(tmp_path / "missing")  # were the trainer run for real, it would stop at once

    def fake_execv(path, args):
        calls.append((path, args))
        raise SystemExit(0)  # execv never returns

    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(SystemExit):
        cli.main(["train", missing, "--max-steps", "3", "--device", "cpu"])
    assert calls == [
        (sys.executable, [sys.executable, "-m", "trainer", missing, "--max-steps", "3", "--device", "cpu"])
    ]
