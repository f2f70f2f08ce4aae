"""`expert convert` on the embedded model: a PEFT DoRA adapter trained for tens of steps,
converted to LoRA, with the fidelity report measured against PEFT's DoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.synthetic import make_dora, manifest, write_expert

pytestmark = pytest.mark.trainer

EXPERT_BIN = Path(sys.executable).parent / "expert"


def _convert(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(EXPERT_BIN), "convert", *args], capture_output=True, text=True, env=env, check=False)


def test_convert_embedded_dora(tmp_path: Path, base_path: Path):
    entry = make_dora(base_path, tmp_path / "dora-x", seed=3, steps=30)
    write_expert(tmp_path, manifest("dora-x", adapter=entry, decoding={"temperature": 0, "max_tokens": 8}))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["Name a fruit.", "What is 2 + 2?", "Write a haiku about rain."]))

    refused = _convert(str(tmp_path / "dora-x"), str(tmp_path / "too-big"), "--rank", "32")
    assert refused.returncode == 1 and "above the engine's max_lora_rank (16)" in refused.stderr
    assert not (tmp_path / "too-big").exists()

    out = tmp_path / "lora-x"
    done = _convert(str(tmp_path / "dora-x"), str(out), "--rank", "16", "--prompts", str(prompts), "--tokens", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "conversion.json").read_text())
    assert report["rank"] == 16 and report["dora_rank"] == 8 and report["prompts"] == 3
    assert len(report["modules"]) == 30 * 4  # 30 layers x q/k/v/o
    assert all(0 < e < 1 for e in report["modules"].values())
    assert report["token_agreement"] >= 0.9, report
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["use_dora"] is False and cfg["r"] == 16 and cfg["lora_alpha"] == 16
    m = json.loads((out / "manifest.json").read_text())
    adapter = m["base_models"][0]["adapters"][0]
    assert adapter["type"] == "lora" and adapter["r"] == 16
    # the converted expert validates and is servable on the embedded model
    valid = subprocess.run([str(EXPERT_BIN), "validate", str(out)], capture_output=True, text=True, check=False)
    assert valid.returncode == 0, valid.stdout[-3000:]

    # the DoRA reference and the converted LoRA, greedy, in process
    from trainer.reference import greedy_tokens, load_expert

    msgs = [{"role": "user", "content": "Name a fruit."}]
    dora = greedy_tokens(load_expert(tmp_path / "dora-x", None), msgs, 8)
    lora = greedy_tokens(load_expert(out, None), msgs, 8)
    base = greedy_tokens(load_expert(out, None, use_adapter=False), msgs, 8)
    assert dora != base, "the trained DoRA adapter must change the answer for the comparison to mean anything"
    assert lora == dora
