"""`expert eval` options checked before the engine starts: `--variants` (a subset of the variants
an expert's files allow), `--failures` and `--cases` (test cases from another file inside the
expert folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from server.commands.evaluate import cases_source, load_cases, render_table, run_eval, select, variants
from server.manifest.schema import load_manifest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_select_keeps_the_reports_order_and_refuses_unknown_names():
    rows = variants(adapter=True, soft_prompt=True, grammar=True)
    # lora+grammar (the grammar without the soft prompt) only when asked for
    assert [r.name for r in select(rows, None)] == [
        "base",
        "base+grammar",
        "lora",
        "lora+soft_prompt",
        "lora+soft_prompt+grammar",
    ]
    assert [r.name for r in select(rows, ["lora+grammar", "lora"])] == ["lora", "lora+grammar"]
    assert [r.name for r in select(rows, ["lora+soft_prompt", "lora"])] == ["lora", "lora+soft_prompt"]
    no_soft_prompt = variants(adapter=True, soft_prompt=False, grammar=True)
    assert select(no_soft_prompt, None) == no_soft_prompt and no_soft_prompt[-1].name == "lora+grammar"
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


def test_cases_replaces_the_manifests_test_cases_with_a_file_inside_the_expert_folder():
    expert = REPO / "experts" / "contact-extract"
    manifest = load_manifest(expert)
    test = load_cases(expert, cases_source(manifest))
    dev = load_cases(expert, cases_source(manifest, "datasets/dev.jsonl"))
    assert cases_source(manifest) == "datasets/test.jsonl" and len(test) == 300
    assert cases_source(manifest, "datasets/dev.jsonl") == "datasets/dev.jsonl" and len(dev) == 1050
    assert dev[0] != test[0]


@pytest.mark.parametrize(
    "name", ["../outside.jsonl", "/etc/passwd", "datasets/nope.jsonl", "link.jsonl", "x" * 5000, "datasets"]
)
def test_cases_outside_the_expert_folder_or_missing_is_a_clear_error_before_the_engine_starts(tmp_path, capsys, name):
    expert = tmp_path / "contact-extract"
    shutil.copytree(REPO / "experts" / "contact-extract", expert)
    outside = tmp_path / "outside.jsonl"
    outside.write_text((expert / "datasets" / "test.jsonl").read_text())
    (expert / "link.jsonl").symlink_to(outside)  # a link that leads out of the folder
    with pytest.raises(ValueError, match="not found inside the expert folder"):
        load_cases(expert, cases_source(load_manifest(expert), name))
    assert run_eval(expert, cases_file=name) == 1
    assert "not found inside the expert folder" in capsys.readouterr().err


def test_the_table_of_one_variant_has_no_comparisons_table():
    row = {"n": 4, "valid": 4, "correct": 3, "score": 0.75, "ci95": [0.25, 1.0]}
    report = {"expert": "x", "version": "1", "cases": 4, "metric": "exact_match", "variants": {"lora": row}}
    one = render_table({**report, "comparisons": []})
    assert "| lora | 4/4 | 3/4 | 75.0 (25.0–100.0) |" in one and "McNemar" not in one
    pair = {"a": "lora", "b": "lora+grammar", "difference": 0.25, "ci95": [0.0, 0.5], "p_value": 1.0}
    two = render_table({**report, "variants": {"lora": row, "lora+grammar": row}, "comparisons": [pair]})
    assert "| a → b | difference, points (95% CI) | McNemar p |" in two
    assert "| lora → lora+grammar | 25.0 (0.0 to 50.0) | 1 |" in two
