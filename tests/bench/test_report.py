"""bench/report.py: a run's results (a fixture cut from a real run: the header and section 3) render,
and section 3 shows the single-request probe."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench.report import write_markdown

pytestmark = pytest.mark.unit

RESULTS = Path(__file__).resolve().parents[1] / "fixtures" / "bench" / "results-soft-prompt.json"


def test_section_3_shows_what_a_soft_prompt_adds_to_one_request(tmp_path):
    res = copy.deepcopy(json.loads(RESULTS.read_text()))
    res["soft_prompt_path"]["soft_prompt_on_vs_none"]["ttft_interleaved_1_client"] = {
        "requests_per_side": 24,
        "on_ttft_p50_ms": 285.2,
        "none_ttft_p50_ms": 272.5,
        "on_ttft_p90_ms": 312.0,
        "none_ttft_p90_ms": 295.0,
        "ttft_p50_ratio": 1.047,
        "paired_difference_p50_ms": 12.7,
        "other_jobs_cores": 0.02,
        "failures": [],
    }
    res["soft_prompt_path"]["soft_prompt_only_vs_base"]["ttft_interleaved_1_client"] = {"error": "RuntimeError: x"}
    out = tmp_path / "results.md"
    write_markdown(res, out)
    text = out.read_text()
    assert "### 3. The soft-prompt path (gateway)" in text
    assert "3b, one request at a time (24 per side interleaved" in text
    assert "TTFT p50 on 285.2 ms / none 272.5 ms (ratio **1.047**; median paired difference 12.7 ms)" in text
    assert "3c, one request at a time" not in text  # a failed probe is not shown as a result


def test_section_3_shows_the_prompt_work_counted_where_the_run_has_it(tmp_path):
    res = copy.deepcopy(json.loads(RESULTS.read_text()))
    r = res["soft_prompt_path"]["soft_prompt_on_vs_none"]
    r["on"] |= {"mean_prompt_tokens": 52.5, "prompt_cached_share": 0.0}
    r["none"] |= {"mean_prompt_tokens": 46.5, "prompt_cached_share": 0.0}
    out = tmp_path / "results.md"
    write_markdown(res, out)
    line = next(x for x in out.read_text().splitlines() if x.startswith("The prompt work, counted"))
    assert line.endswith(
        "prefix cache in the windows (its counters): 3b 52.5 / 46.5 (from the prefix cache 0.0% / 0.0%)."
    )
    # the fixture's 3a and 3c runs predate the counts: no line for them


def test_section_3d_shows_what_a_copying_grammar_adds_to_one_request(tmp_path):
    res = copy.deepcopy(json.loads(RESULTS.read_text()))
    probe = {
        "requests_per_side": 24,
        "copy_ttft_p50_ms": 120.5,
        "fixed_ttft_p50_ms": 100.0,
        "copy_ttft_p90_ms": 140.0,
        "fixed_ttft_p90_ms": 110.0,
        "ttft_p50_ratio": 1.205,
        "paired_difference_p50_ms": 20.1,
        "other_jobs_cores": 0.03,
        "failures": [],
    }
    res["grammar_copy"] = {"bench_prompts": probe, "text_1000_words": {"error": "RuntimeError: x"}, "what": "W"}
    out = tmp_path / "results.md"
    write_markdown(res, out)
    text = out.read_text()
    assert "### 3d. A grammar that copies from the request vs a fixed grammar" in text
    assert "| bench prompts | 120.5 / 100.0 | 140.0 / 110.0 | **1.205** | 20.1 | 24 | 0.03 |" in text
    assert "text 1000 words" not in text  # a failed probe is not shown as a result
