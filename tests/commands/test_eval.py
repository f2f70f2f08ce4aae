"""`expert eval` on the example experts, through the real gateway and engine (a few cases each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from xgrammar.testing import _is_grammar_accept_string

from server.manifest.input_spans import bind

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
EXPERT = Path(sys.executable).parent / "expert"


def eval_json(expert: Path, limit: int = 6, *extra: str) -> dict:
    """`expert eval EXPERT --json --limit N [extra]`, which must succeed; its report."""
    out = subprocess.run(
        [str(EXPERT), "eval", str(expert), "--json", "--limit", str(limit), *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # the engine stops quietly: vLLM's output handler, left running while the engine's processes
    # stop, logged their end as a dead engine with a traceback (server/engine/vllm_engine.py)
    assert "Traceback" not in out.stderr and "EngineDeadError" not in out.stderr, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_eval_reports_every_variant_of_the_example_expert(tmp_path):
    # 16 cases: the adapter gets 13 of them right, the base model none
    failures = tmp_path / "failures.jsonl"
    report = eval_json(REPO / "experts" / "contact-extract", 16, "--failures", str(failures))
    assert report["expert"] == "contact-extract" and report["cases"] == 16
    assert report["metric"] == "exact_match"
    variants = report["variants"]
    assert list(variants) == ["base", "base+grammar", "lora", "lora+soft_prompt", "lora+soft_prompt+grammar"]
    for name, r in variants.items():
        assert set(r) == {"n", "valid", "correct", "score", "ci95"}, name
        assert r["n"] == 16 and 0 <= r["correct"] <= r["valid"] <= 16, (name, r)
        assert r["score"] == r["correct"] / 16
        lo, hi = r["ci95"]
        assert 0 <= lo <= r["score"] <= hi <= 1, (name, r)
    # the grammar admits only the task's JSON object, its name, city and job copied from the case's
    # text (input-span): each wrong answer under it is such an object, or the start of one cut by max_tokens
    grammar = (REPO / "experts" / "contact-extract" / "grammar.gbnf").read_text()
    wrong = [json.loads(line) for line in failures.read_text().splitlines()]
    constrained = [w for w in wrong if w["variant"] == "lora+soft_prompt+grammar"]
    for w in constrained:
        assert _is_grammar_accept_string(bind(grammar, w["input"]), w["output"], require_termination=False), w
        if w["output"].endswith("}"):
            answer = json.loads(w["output"])
            assert all(answer[k] in w["input"] for k in ("name", "city", "job")), w
    unconstrained = [w for w in wrong if w["variant"] == "base"]
    assert not all(
        _is_grammar_accept_string(bind(grammar, w["input"]), w["output"], require_termination=False)
        for w in unconstrained
    )
    # the trained adapter does the task; the base model does not
    assert variants["lora"]["correct"] > variants["base"]["correct"]
    pairs = {(c["a"], c["b"]): c for c in report["comparisons"]}
    assert len(pairs) == 10  # every pair of the five variants
    base_lora = pairs[("base", "lora")]
    assert base_lora["difference"] == pytest.approx(variants["lora"]["score"] - variants["base"]["score"])
    assert 0 <= base_lora["p_value"] <= 1 and base_lora["ci95"][0] <= base_lora["difference"] <= base_lora["ci95"][1]


def test_eval_scores_sql_by_execution_and_never_writes_the_database(tmp_path):
    """The trained SQL example expert: every variant's answers run on the expert's database,
    read-only; the database is byte for byte the same afterwards."""
    import hashlib
    import shutil

    expert = tmp_path / "shop-sql"
    shutil.copytree(REPO / "experts" / "shop-sql", expert)
    database = expert / "shop.sqlite"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    report = eval_json(expert)
    assert report["metric"] == "sql_execution" and report["cases"] == 6
    variants = report["variants"]
    assert list(variants) == ["base", "base+grammar", "lora", "lora+soft_prompt", "lora+soft_prompt+grammar"]
    for r in variants.values():
        assert 0 <= r["correct"] <= r["valid"] <= 6
    # the adapter writes queries that run and answer; the base model's do not
    assert variants["lora+soft_prompt+grammar"]["valid"] >= 5
    assert variants["lora"]["correct"] > variants["base"]["correct"]
    assert len(report["comparisons"]) == 10
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_eval_of_a_soft_prompt_only_expert(tmp_path):
    failures = tmp_path / "failures.jsonl"
    # 24 cases: the soft prompt alone gets about a third of the test split right (7 of its first
    # 24; the base model none)
    report = eval_json(REPO / "experts" / "contact-extract-prompt", 24, "--failures", str(failures))
    variants = report["variants"]
    # --failures: one line per case a variant got wrong, with what it answered and the target
    wrong = [json.loads(line) for line in failures.read_text().splitlines()]
    for name, r in variants.items():
        mine = [w for w in wrong if w["variant"] == name]
        assert len(mine) == r["n"] - r["correct"], name
        assert all(1 <= w["case"] <= 24 and w["output"] != w["target"] and w["input"] for w in mine)
    assert "failures" not in report
    assert list(variants) == ["base", "base+grammar", "soft_prompt", "soft_prompt+grammar"]
    # the grammar admits only the task's JSON object, its name, city and job copied from the case's
    # text (input-span): each answer under it is that object, or the start of one cut by max_tokens
    grammar = (REPO / "experts" / "contact-extract-prompt" / "grammar.gbnf").read_text()
    constrained = [w for w in wrong if w["variant"] == "soft_prompt+grammar"]
    for w in constrained:
        assert _is_grammar_accept_string(bind(grammar, w["input"]), w["output"], require_termination=False), w
    assert variants["soft_prompt+grammar"]["valid"] >= 20
    assert variants["soft_prompt"]["correct"] > variants["base"]["correct"]
    assert [(c["a"], c["b"]) for c in report["comparisons"]][:3] == [
        ("base", "base+grammar"),
        ("base", "soft_prompt"),
        ("base", "soft_prompt+grammar"),
    ]


def test_eval_without_test_cases_is_a_clear_error(tmp_path):
    from trainer.synthetic import manifest, write_expert

    write_expert(tmp_path, manifest("no-cases"))
    out = subprocess.run([str(EXPERT), "eval", str(tmp_path / "no-cases")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "no test cases" in out.stderr and "Traceback" not in out.stderr


def _children(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def test_sigterm_stops_the_evaluation_and_its_engine():
    """A supervisor's SIGTERM ends `expert eval` as Ctrl-C does: its engine processes do not outlive it."""
    import signal
    import time

    run = subprocess.Popen(
        [str(EXPERT), "eval", str(REPO / "experts" / "contact-extract"), "--variants", "lora", "--limit", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine: list[int] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        engine = _children(run.pid)
        if engine:
            time.sleep(20)  # let the engine get going
            engine = _children(run.pid)
            break
        time.sleep(1)
    assert engine, "the evaluation started no engine process"
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "eval: interrupted" in err, err[-2000:]
    time.sleep(2)
    alive = [p for p in engine if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]
    assert not alive, f"engine processes left running: {alive}"


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"
