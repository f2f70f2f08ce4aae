"""`expert validate --prove` on the real engine: each behavioural claim of a field's fate gets a
probe, and its result is the field's `evidence` (server/experts/probes.py).

One expert exercises every probe (adapter, two soft prompts, a GBNF grammar, stop sequences,
max_tokens, runtime hints); a second carries an adapter whose weights are non-zero but too small
to move anything, which only the engine probe can see: it is refused with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_field_reference import adapter_files, base_manifest, soft_prompt_file

pytestmark = pytest.mark.engine

EXPERT_BIN = Path(sys.executable).parent / "expert"
GRAMMAR = 'root ::= "{" [a-z]{1,8} "}"\n'


def prove(folder: Path) -> tuple[int, dict[str, Any], float, str]:
    start = time.perf_counter()
    out = subprocess.run(
        [str(EXPERT_BIN), "validate", "--prove", "--json", str(folder)], capture_output=True, text=True, timeout=600
    )
    return out.returncode, json.loads(out.stdout), time.perf_counter() - start, out.stderr


def fields(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["field"]: f for f in report["fields"]}


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, base_path: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probes")
    live = root / "live"
    data = base_manifest("live")
    data["base_models"][0]["adapters"] = [adapter_files(live, seed=3)]
    soft_prompt_file(live / "sp" / "a.safetensors", 4, seed=1)
    soft_prompt_file(live / "sp" / "b.safetensors", 6, seed=2)
    data["soft_prompts"] = [
        {"name": "a", "path": "sp/a.safetensors", "tokens": 4},
        {"name": "b", "path": "sp/b.safetensors", "tokens": 6},
    ]
    (live / "g.gbnf").write_text(GRAMMAR)
    data["training"] = {
        "decoding": {
            "temperature": 0,
            "max_tokens": 6,
            "stop_sequences": ["\n\n", "END"],
            "use_grammar": True,
            "grammar_file": "g.gbnf",
        }
    }
    data["runtime"] = {"attention_kernel": "cpu", "prefix_caching": True, "max_model_len": 1024}
    (live / "manifest.json").write_text(json.dumps(data))

    faint = root / "faint"
    data = base_manifest("faint")
    data["base_models"][0]["adapters"] = [adapter_files(faint, seed=4)]
    # lora_B at 1e-12: non-zero (the file check passes it), far too small to move a log-probability
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(faint / "adapter_model.safetensors"))
    for key in tensors:
        if "lora_B" in key:
            tensors[key] = tensors[key] * 0 + 1e-12
    save_file(tensors, str(faint / "adapter_model.safetensors"))
    (faint / "manifest.json").write_text(json.dumps(data))
    return {"live": live, "faint": faint}


def test_every_claim_of_a_servable_expert_is_shown_on_the_engine(experts: dict[str, Path]) -> None:
    code, report, seconds, stderr = prove(experts["live"])
    assert code == 0, (report, stderr[-3000:])
    assert report["probed"] is True and report["servable"] is True
    by = fields(report)
    assert "evidence" not in by["base_models[0].adapters[0].r"]  # checked, not a behavioural claim
    adapter = by["base_models[0].adapters[0].type"]["evidence"]
    assert adapter["ok"] is True and "log-probabilities" in adapter["probe"]
    for i in (0, 1):
        ev = by[f"soft_prompts[{i}].name"]["evidence"]
        assert ev["ok"] is True, ev
    grammar = by["training.decoding.grammar_file"]["evidence"]
    assert grammar["ok"] is True and grammar["sample"].startswith("{"), grammar
    assert grammar["unconstrained_parses"] is False, grammar  # the constraint is what made it parse
    stops = by["training.decoding.stop_sequences"]["evidence"]
    assert stops["ok"] is True and [r["output"] for r in stops["results"]] == ["Z", "Z"], stops
    assert {r["finish_reason"] for r in stops["results"]} == {"stop"}
    cut = by["training.decoding.max_tokens"]["evidence"]
    assert (cut["ok"], cut["tokens"], cut["finish_reason"]) == (True, 6, "length"), cut
    for hint, arg, value in (
        ("runtime.attention_kernel", "attention_backend", "CPU_ATTN"),
        ("runtime.prefix_caching", "enable_prefix_caching", True),
    ):
        ev = by[hint]["evidence"]
        assert ev["ok"] is True and ev["engine"] == {arg: value}, ev
    assert by["runtime.max_model_len"]["evidence"]["engine"]["max_model_len"] >= 1024
    print(f"probes: {report['probe_seconds']:.2f} s; validate --prove in all: {seconds:.1f} s")
    assert report["probe_seconds"] < 15.0


def test_an_adapter_that_changes_nothing_on_the_engine_is_refused(experts: dict[str, Path]) -> None:
    code, report, _, stderr = prove(experts["faint"])
    assert code == 2, (report, stderr[-3000:])
    assert report["servable"] is False
    assert any("the adapter changes nothing on the engine" in r for r in report["not_servable_because"])
    t = fields(report)["base_models[0].adapters[0].type"]
    assert t["fate"] == "refused" and t["evidence"]["ok"] is False
    assert "probe on the engine failed" in t["detail"]
