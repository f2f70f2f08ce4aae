"""The training plan: what to train and how, read from the manifest (plus command-line overrides).

Everything that can be wrong with a manifest for training is found here, before any data
or model is loaded: `PlanError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from server.manifest import prompt_formats
from server.manifest.schema import Manifest, TrainingConfig

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
INIT_METHODS = {"text": "TEXT", "random": "RANDOM", "vocab_sample": "SAMPLE_VOCAB"}


class PlanError(Exception):
    """The manifest asks for something the trainer cannot do."""


@dataclass(frozen=True)
class LoraPlan:
    base_index: int
    adapter_index: int
    r: int
    alpha: float
    dropout: float
    target_modules: list[str]
    path: str  # folder of adapter_config.json, relative to the expert folder ("." by default)


@dataclass(frozen=True)
class SoftPromptPlan:
    index: int
    name: str
    tokens: int
    init: str  # PEFT PromptTuningInit name: TEXT, RANDOM, SAMPLE_VOCAB
    init_text: str | None
    path: str  # relative to the expert folder


@dataclass(frozen=True)
class PhasePlan:
    name: str
    learning_rate: float


@dataclass(frozen=True)
class TrainPlan:
    expert_dir: Path
    manifest: Manifest
    base_name: str
    prompt_template: str | None  # base_models[].prompt_template (server.manifest.prompt_formats)
    lora: LoraPlan | None
    soft_prompt: SoftPromptPlan | None
    train_path: Path
    validation_path: Path | None
    field_mapping: dict[str, str] | None
    batch_size: int
    grad_accum: int
    max_seq_length: int
    max_steps: int | None
    epochs: float
    prompt_max_steps: int | None
    prompt_epochs: float
    warmup_steps: int | None
    warmup_ratio: float
    scheduler: str
    lora_lr: float
    prompt_lr: float
    seed: int
    device: str
    logging_steps: int | None
    notes: list[str] = field(default_factory=list)

    def steps(self, n_examples: int, phase: str = "lora") -> int:
        """Optimizer steps of one phase ("lora" or "prompt")."""
        max_steps, epochs = (
            (self.prompt_max_steps, self.prompt_epochs) if phase == "prompt" else (self.max_steps, self.epochs)
        )
        if max_steps is not None:
            return max_steps
        per_epoch = math.ceil(n_examples / (self.batch_size * self.grad_accum))
        return max(1, math.ceil(epochs * per_epoch))

    def warmup(self, steps: int) -> int:
        if self.warmup_steps:
            return min(self.warmup_steps, steps)
        return int(self.warmup_ratio * steps)


def make_plan(
    expert_dir: Path,
    manifest: Manifest,
    *,
    max_steps: int | None = None,
    device: str = "cpu",
    seed: int | None = None,
) -> TrainPlan:
    training = manifest.training
    dataset = None if training is None else training.dataset
    if training is None or dataset is None or not dataset.path:
        raise PlanError("the manifest has no training.dataset.path: nothing to train on")
    if dataset.format not in (None, "jsonl"):
        raise PlanError(f"training.dataset.format is '{dataset.format}'; the trainer reads 'jsonl' files")
    cfg = training.config or TrainingConfig()
    notes = ignored_keys(set(cfg.model_fields_set))
    if cfg.method not in (None, "sft"):
        raise PlanError(f"training.config.method is '{cfg.method}'; the trainer does supervised fine-tuning ('sft')")
    if cfg.adapter_type not in (None, "lora"):
        raise PlanError(f"training.config.adapter_type is '{cfg.adapter_type}'; only 'lora' can be trained and served")

    bases = manifest.bases()
    base, adapters = bases[0]
    if len(bases) > 1:
        notes.append(f"the manifest lists {len(bases)} base models; training for the first, {base.name}")
    template_problem = prompt_formats.problem(base.prompt_template)
    if template_problem is not None:
        raise PlanError(f"prompt_template: {template_problem}")
    lora = _lora_plan(adapters, cfg)
    if lora is not None:
        for key, cfg_key in (("r", "rank"), ("alpha", "alpha"), ("dropout", "dropout")):
            value = getattr(cfg, cfg_key)
            if value is not None and float(value) != float(lora[key]):
                notes.append(
                    f"training.config.{cfg_key} is {value} but the adapter says {lora[key]}: the adapter's value is used"
                )
    soft_prompt = _soft_prompt_plan(manifest)
    if lora is None and soft_prompt is None:
        raise PlanError("nothing to train: the manifest has neither a lora adapter nor a soft prompt")
    if len(manifest.soft_prompts) > 1:
        rest = ", ".join(sp.name for sp in manifest.soft_prompts[1:])
        notes.append(
            f"only the first soft prompt ({manifest.soft_prompts[0].name}) is trained; {rest} left as they are"
        )

    scheduler = cfg.lr_scheduler or "cosine"
    if scheduler not in SCHEDULERS:
        raise PlanError(f"training.config.lr_scheduler '{scheduler}' is not one of {', '.join(SCHEDULERS)}")
    if max_steps is not None and max_steps < 1:
        raise PlanError("--max-steps must be at least 1")
    if device not in ("cpu", "cuda"):
        raise PlanError(f"device '{device}' is not cpu or cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PlanError("--device cuda, but torch sees no CUDA device")

    return TrainPlan(
        expert_dir=expert_dir,
        manifest=manifest,
        base_name=base.name,
        prompt_template=base.prompt_template,
        lora=None if lora is None else LoraPlan(base_index=0, **lora),
        soft_prompt=soft_prompt,
        train_path=expert_dir / dataset.path,
        validation_path=None if dataset.validation_path is None else expert_dir / dataset.validation_path,
        field_mapping=dataset.field_mapping,
        batch_size=cfg.batch_size or 8,
        grad_accum=cfg.gradient_accumulation_steps or 1,
        max_seq_length=cfg.max_seq_length or 1024,
        max_steps=max_steps if max_steps is not None else cfg.max_steps,
        epochs=cfg.epochs or 1.0,
        # --max-steps on the command line sets both phases; in the manifest, each has its own
        prompt_max_steps=max_steps if max_steps is not None else (cfg.prompt_max_steps or cfg.max_steps),
        prompt_epochs=cfg.prompt_epochs or cfg.epochs or 1.0,
        warmup_steps=cfg.warmup_steps,
        warmup_ratio=cfg.warmup_ratio if cfg.warmup_ratio is not None else 0.05,
        scheduler=scheduler,
        lora_lr=cfg.learning_rate or 2e-4,
        prompt_lr=cfg.prompt_learning_rate or 3e-2,
        seed=seed if seed is not None else (cfg.seed if cfg.seed is not None else 42),
        device=device,
        logging_steps=cfg.logging_steps,
        notes=notes,
    )


def ignored_keys(config_keys: set[str]) -> list[str]:
    """Notes for the training.config keys a manifest sets that the trainer does not honour.

    The table of which keys the trainer honours is server/fates.py (TRAINER_KEYS and
    TRAINER_REFUSALS), shared with the server's field-fates report.
    """
    try:
        from server.manifest.fates import TRAINER_REFUSALS
    except ImportError:  # the table is informative only: never block training on it
        return []
    return [
        f"training.config.{k} has no effect: {TRAINER_REFUSALS[k]}"
        for k in sorted(config_keys)
        if k in TRAINER_REFUSALS
    ]


def _lora_plan(adapters: list, cfg: TrainingConfig) -> dict | None:
    if not adapters:
        return None
    if len(adapters) > 1:
        raise PlanError(f"the base model has {len(adapters)} adapters; the trainer trains exactly one")
    adapter = adapters[0]
    if adapter.type != "lora":
        raise PlanError(
            f"adapter type '{adapter.type}' cannot be trained: only 'lora' adapters are trainable (and servable) here"
        )
    r = adapter.r or cfg.rank
    alpha = adapter.alpha or cfg.alpha
    if r is None or alpha is None:
        raise PlanError("the lora adapter needs r and alpha")
    return {
        "adapter_index": 0,
        "r": r,
        "alpha": alpha,
        "dropout": adapter.dropout if adapter.dropout is not None else (cfg.dropout or 0.0),
        "target_modules": list(adapter.target_modules or cfg.target_modules or DEFAULT_TARGET_MODULES),
        "path": _inside("adapter path", adapter.path or "."),
    }


def _soft_prompt_plan(manifest: Manifest) -> SoftPromptPlan | None:
    if not manifest.soft_prompts:
        return None
    sp = manifest.soft_prompts[0]
    if not sp.path.endswith(".safetensors"):
        raise PlanError(f"soft_prompts[0].path '{sp.path}': the trainer writes .safetensors files")
    method = sp.init_method or ("text" if sp.init_text else "random")
    return SoftPromptPlan(
        index=0,
        name=sp.name,
        tokens=sp.tokens,
        init=INIT_METHODS[method],
        init_text=sp.init_text,
        path=_inside("soft_prompts[0].path", sp.path),
    )


def _inside(what: str, rel: str) -> str:
    """A path relative to the expert folder that stays inside it."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise PlanError(f"{what} '{rel}' must be a relative path inside the expert folder")
    return str(p)
