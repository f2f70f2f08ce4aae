"""Phase 2: train the first soft prompt with PEFT prompt tuning, on top of the trained LoRA.

The base model gets the LoRA adapter just written by phase 1 (loaded from its saved files,
so phase 2 sees exactly what is served), merged into the float32 weights and frozen; PEFT
then prepends `tokens` trainable virtual token embeddings before the embeddings of the
whole rendered prompt (system prompt of the template included), which is what the server
does with the saved tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.data import Example
from trainer.loop import PhaseResult, run_phase
from trainer.plan import TrainPlan


def prompt_tuning_config(plan: TrainPlan, tokenizer_source: str):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    sp = plan.soft_prompt
    assert sp is not None
    text = sp.init == "TEXT"
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=sp.tokens,
        prompt_tuning_init=PromptTuningInit[sp.init],
        prompt_tuning_init_text=sp.init_text if text else None,
        tokenizer_name_or_path=tokenizer_source if text else None,
    )


def train_soft_prompt(
    plan: TrainPlan,
    base_source: str,
    lora_dir: Path | None,
    examples: list[Example],
    validation: list[Example] | None,
    pad_id: int,
) -> tuple[torch.Tensor, PhaseResult]:
    """Returns the trained prompt embeddings [tokens, hidden] (float32) and the phase result."""
    from peft import PeftModel, get_peft_model

    from trainer.base_model import load_model

    model = load_model(base_source, plan.device)
    if lora_dir is not None:
        model = PeftModel.from_pretrained(model, str(lora_dir)).merge_and_unload()
    torch.manual_seed(plan.seed)  # RANDOM / SAMPLE_VOCAB initialisation
    model = get_peft_model(model, prompt_tuning_config(plan, base_source))
    result = run_phase(
        model,
        examples,
        validation,
        plan,
        pad_id=pad_id,
        learning_rate=plan.prompt_lr,
        desc="phase 2 soft prompt",
        phase="prompt",
    )
    embeddings = model.get_prompt_embedding_to_save("default").detach().to("cpu", torch.float32)
    return embeddings, result
