"""What one training run reads, checked before any model is loaded: the manifest, the plan made from
it, the base model's source and tokenizer, and every dataset row rendered and tokenised.

`read_inputs` raises ManifestError, DatasetError, PlanError or BaseModelError; `expert train`
(trainer.cli) reports them, and bench.train_step reads its rows the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.manifest.schema import Manifest, load_manifest
from trainer.base_model import load_tokenizer, resolve_base
from trainer.data import Conversation, Example, load_conversations, tokenize
from trainer.plan import PlanError, TrainPlan, make_plan


@dataclass(frozen=True)
class TrainingInputs:
    manifest: Manifest
    plan: TrainPlan
    base_source: str
    tokenizer: Any
    train_set: list[Example]
    val_set: list[Example] | None


def read_inputs(
    expert_dir: Path,
    *,
    max_steps: int | None = None,
    device: str = "cpu",
    seed: int | None = None,
    model: str | None = None,
    train_rows: int | None = None,
    on_note: Callable[[str], None] = lambda note: None,
) -> TrainingInputs:
    """Read and check everything `expert train` needs; `train_rows` keeps only the first N training
    rows (a benchmark's few batches), `model` replaces the manifest's base model source, and
    `on_note` hears the plan's notes as soon as the plan is made, before the rows are read."""
    if not expert_dir.is_dir():
        raise PlanError(f"{expert_dir} is not a folder")
    manifest = load_manifest(expert_dir)
    plan = make_plan(expert_dir, manifest, max_steps=max_steps, device=device, seed=seed)
    for note in plan.notes:
        on_note(note)
    train_conversations = load_conversations(plan.train_path, plan.field_mapping)[:train_rows]
    val_conversations = load_conversations(plan.validation_path, plan.field_mapping) if plan.validation_path else None
    base_source = resolve_base(model or plan.base_name)
    tokenizer = load_tokenizer(base_source)

    def render(rows: list[Conversation]) -> list[Example]:
        return tokenize(
            tokenizer, rows, plan.max_seq_length, template=plan.prompt_template, capabilities=manifest.capabilities
        )

    return TrainingInputs(
        manifest=manifest,
        plan=plan,
        base_source=base_source,
        tokenizer=tokenizer,
        train_set=render(train_conversations),
        val_set=render(val_conversations) if val_conversations else None,
    )
