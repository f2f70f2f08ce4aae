"""The training plan: step counts per phase, from the manifest and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.manifest.schema import load_manifest
from trainer.plan import make_plan

pytestmark = pytest.mark.unit


def expert(tmp_path: Path, config: dict, *, adapter: bool = True) -> Path:
    folder = tmp_path / "e"
    (folder / "datasets").mkdir(parents=True)
    (folder / "datasets" / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    adapters = [{"type": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj"]}] if adapter else []
    manifest = {
        "schema_version": "2.0",
        "name": "e",
        "version": "0.0.1",
        "base_models": [{"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapters": adapters}],
        "soft_prompts": [{"name": "sp", "path": "soft_prompts/sp.safetensors", "tokens": 4}],
        "training": {"dataset": {"path": "datasets/train.jsonl"}, "config": {"batch_size": 10, **config}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def plan_for(folder: Path, **kw):
    return make_plan(folder, load_manifest(folder), **kw)


def test_each_phase_has_its_own_step_count(tmp_path):
    plan = plan_for(expert(tmp_path, {"max_steps": 80, "prompt_max_steps": 300}))
    assert plan.steps(1000) == 80
    assert plan.steps(1000, "prompt") == 300


def test_the_prompt_phase_defaults_to_the_lora_phase(tmp_path):
    plan = plan_for(expert(tmp_path, {"max_steps": 50}))
    assert plan.steps(1000, "prompt") == 50
    by_epochs = plan_for(expert(tmp_path / "b", {"epochs": 2}))
    assert by_epochs.steps(1000) == by_epochs.steps(1000, "prompt") == 200


def test_prompt_epochs(tmp_path):
    plan = plan_for(expert(tmp_path, {"epochs": 1, "prompt_epochs": 3}))
    assert (plan.steps(100), plan.steps(100, "prompt")) == (10, 30)


def test_the_command_line_sets_both_phases(tmp_path):
    plan = plan_for(expert(tmp_path, {"max_steps": 80, "prompt_max_steps": 300}), max_steps=2)
    assert (plan.steps(1000), plan.steps(1000, "prompt")) == (2, 2)


def test_a_soft_prompt_only_expert_trains_no_adapter(tmp_path):
    plan = plan_for(expert(tmp_path, {"prompt_max_steps": 40}, adapter=False))
    assert plan.lora is None and plan.soft_prompt is not None
    assert plan.steps(1000, "prompt") == 40
