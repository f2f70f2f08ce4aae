"""`expert eval` options checked before the engine starts: `--variants` (a subset of the variants
an expert's files allow) and `--failures`."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.commands.evaluate import run_eval, select, variants

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_select_keeps_the_reports_order_and_refuses_unknown_names():
    rows = variants(adapter=True, soft_prompt=True, grammar=True)
    assert select(rows, None) == rows
    assert [r.name for r in select(rows, ["lora+soft_prompt", "lora"])] == ["lora", "lora+soft_prompt"]
    with pytest.raises(ValueError, match=r"unknown variant\(s\) 'soft_prompt'; this expert has: base, base\+grammar"):
        select(rows, ["lora", "soft_prompt"])  # an adapter expert has no soft-prompt-only variant


def test_an_unknown_variant_is_a_clear_error_before_the_engine_starts(capsys):
    assert run_eval(REPO / "experts" / "contact-extract", only=["lora", "nope"]) == 1
    assert "unknown variant(s) 'nope'" in capsys.readouterr().err


def test_failures_into_a_missing_folder_is_a_clear_error_before_the_engine_starts(tmp_path, capsys):
    target = tmp_path / "missing" / "failures.jsonl"
    assert run_eval(REPO / "experts" / "contact-extract", failures=target) == 1
    assert "--failures: no folder" in capsys.readouterr().err
    assert not target.parent.exists()
