"""bench/train_step.py: the trainer's answer-only loss timed against the model's own loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.train_step import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.trainer
def test_one_pair_writes_both_sides_and_the_losses_agree(tmp_path, capsys):
    assert main([str(ROOT / "experts" / "contact-extract"), "--pairs", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["expert"] == "contact-extract" and result["pairs"] == 1
    assert set(result["seconds_per_step"]) == {"all_positions", "answer_positions"}
    assert all(v > 0 for v in result["seconds_per_step"].values())
    assert result["max_loss_difference"] < 1e-4
    assert "answer_loss" in (tmp_path / "results.md").read_text()


@pytest.mark.unit
def test_pairs_below_one_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--pairs", "0"])
    assert exc.value.code == 2 and "--pairs must be at least 1" in capsys.readouterr().err
