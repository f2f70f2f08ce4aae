"""`expert eval` on the example expert, through the real gateway and engine (a few cases)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[1]
EXPERT = Path(sys.executable).parent / "expert"


def test_eval_reports_every_variant_of_the_example_expert():
    out = subprocess.run(
        [str(EXPERT), "eval", str(REPO / "experts" / "contact-extract"), "--json", "--limit", "4"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["expert"] == "contact-extract" and report["cases"] == 4
    variants = report["variants"]
    assert list(variants) == ["base", "lora", "lora+soft_prompt", "lora+soft_prompt+grammar"]
    for name, r in variants.items():
        assert r["n"] == 4 and 0 <= r["exact"] <= r["valid"] <= 4, (name, r)
    # the grammar admits only the task's JSON object: every answer parses
    assert variants["lora+soft_prompt+grammar"]["valid"] == 4
    # the trained adapter does the task; the base model does not
    assert variants["lora"]["exact"] > variants["base"]["exact"]


def test_eval_without_test_cases_is_a_clear_error(tmp_path):
    from trainer.synthetic import manifest, write_expert

    write_expert(tmp_path, manifest("no-cases"))
    out = subprocess.run([str(EXPERT), "eval", str(tmp_path / "no-cases")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "no test cases" in out.stderr and "Traceback" not in out.stderr
