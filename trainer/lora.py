"""Phase 1: train the LoRA adapter with PEFT and save it the way vLLM loads it.

The saved folder is PEFT's own `save_pretrained` output (adapter_config.json +
adapter_model.safetensors, float32), with `base_model_name_or_path` set to the manifest's
base model name instead of the local folder the base was loaded from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.data import Example
from trainer.loop import PhaseResult, run_phase
from trainer.plan import LoraPlan, TrainPlan

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def lora_config(lora: LoraPlan):
    from peft import LoraConfig

    alpha = int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; it scales by any number
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )


def lora_model(plan: TrainPlan, base_source: str):
    """The base model with the plan's fresh LoRA adapter (A drawn from the plan's seed), on its device."""
    from peft import get_peft_model

    from trainer.base_model import load_model

    assert plan.lora is not None
    model = load_model(base_source, plan.device)
    torch.manual_seed(plan.seed)  # LoRA A matrices
    try:
        return get_peft_model(model, lora_config(plan.lora))
    except ValueError as exc:  # e.g. target modules not found in the base model
        from trainer.loop import TrainError

        raise TrainError(f"cannot apply the LoRA adapter to {plan.base_name}: {exc}") from None


def train_lora(
    plan: TrainPlan,
    base_source: str,
    examples: list[Example],
    validation: list[Example] | None,
    pad_id: int,
    out_dir: Path,
) -> PhaseResult:
    """Train on `examples` and save the adapter into `out_dir`."""
    model = lora_model(plan, base_source)
    result = run_phase(
        model, examples, validation, plan, pad_id=pad_id, learning_rate=plan.lora_lr, desc="phase 1 lora"
    )
    save_adapter(model, out_dir, plan.base_name)
    return result


def save_adapter(model, out_dir: Path, base_name: str) -> None:
    model.peft_config["default"].base_model_name_or_path = base_name
    model.peft_config["default"].inference_mode = True
    model.save_pretrained(str(out_dir), safe_serialization=True)
    missing = [name for name in ADAPTER_FILES if not (out_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"PEFT did not write {', '.join(missing)} into {out_dir}")
