"""Builds expert folders for tests: manifests, and real PEFT LoRA adapters.

The adapters are made with PEFT on the embedded base model; their `lora_B` weights are
drawn at random (PEFT starts them at zero, which would leave the model unchanged), so an
expert's greedy answers differ from the base model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def manifest(name: str, *, version: str = "1.0.0", adapter: dict[str, Any] | None = None,
             decoding: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
             soft_prompts: list[dict[str, Any]] | None = None, load_order: int = 0) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "schema_version": "2.0",
        "description": f"test expert {name}",
        "_comment": "made by tests/experts_factory.py",
        "base_models": [{"name": BASE_ID, "prompt_template": "chatml", "adapters": [adapter] if adapter else []}],
        "soft_prompts": soft_prompts or [],
        "constraints": {"load_order": load_order},
    }
    if decoding:
        data["training"] = {"decoding": decoding}
    if runtime:
        data["runtime"] = runtime
    return data


def write_expert(root: Path, data: dict[str, Any], files: dict[str, str] | None = None) -> Path:
    folder = root / data["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(data, indent=2))
    for rel, text in (files or {}).items():
        (folder / rel).write_text(text)
    return folder


def make_lora(base_path: Path, out: Path, *, seed: int, r: int = 8, alpha: int = 16, scale: float = 0.02) -> dict[str, Any]:
    """A real PEFT LoRA adapter with random (non-zero) weights; returns its manifest entry."""
    import hashlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS))
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname:
                param.normal_(0.0, scale)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    weights = out / "adapter_model.safetensors"
    return {
        "type": "lora",
        "r": r,
        "alpha": alpha,
        "dropout": 0.0,
        "target_modules": TARGETS,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
    }
