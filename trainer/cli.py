"""`expert train EXPERT_DIR [--max-steps N] [--device cpu|cuda] [--seed S]` (also `python -m trainer`).

run_train, top to bottom:
1. read the manifest and make the plan (what to train, hyperparameters);
2. read and check every dataset row, render and tokenise them: any problem is reported
   (file, line, what) and nothing is trained or written;
3. phase 1: LoRA adapter (if the manifest has one);
4. phase 2: the first soft prompt, on top of the trained LoRA (if the manifest has one);
5. move the trained files into the expert folder and record their sha256 in the manifest.

Exit codes: 0 trained, 1 training failed, 2 bad manifest / dataset / arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("expert_dir", type=Path, metavar="EXPERT_DIR", help="expert folder (holds manifest.json)")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="optimizer steps of each phase (overrides training.config.max_steps and epochs)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default cpu)")
    parser.add_argument(
        "--seed", type=int, default=None, metavar="S", help="random seed (default: training.config.seed, else 42)"
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="base model folder or id to train on (default: the manifest's base_models[0].name); "
        "for a manifest that names its base by another path, such as hivellm's",
    )


def run_from_args(args: argparse.Namespace) -> int:
    return run_train(args.expert_dir, args.max_steps, args.device, seed=args.seed, model=args.model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train an expert's LoRA adapter and soft prompt from its manifest.json.",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_train(
    expert_dir: Path,
    max_steps: int | None = None,
    device: str = "cpu",
    *,
    seed: int | None = None,
    model: str | None = None,
) -> int:
    """Train the expert in `expert_dir`; returns a process exit code (errors are printed, not raised)."""
    if "torch" not in sys.modules:
        # OpenMP threads that spin while waiting make training crawl when other processes
        # share the cores (measured 10x slower); passive waiting costs nothing when idle.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from server.manifest.schema import ManifestError
    from trainer.base_model import BaseModelError
    from trainer.data import DatasetError
    from trainer.inputs import read_inputs
    from trainer.plan import PlanError

    # -- 1. manifest and plan, 2. data: everything checked before any model is loaded
    try:
        inputs = read_inputs(
            Path(expert_dir),
            max_steps=max_steps,
            device=device,
            seed=seed,
            model=model,
            on_note=lambda note: _say(f"note: {note}"),
        )
    except ManifestError as exc:
        for issue in exc.issues:
            _err(f"manifest: {issue.field + ': ' if issue.field else ''}{issue.message}")
        return EXIT_USAGE
    except DatasetError as exc:
        _err(f"dataset: {len(exc.problems)} problem(s), nothing trained:\n{exc}")
        return EXIT_USAGE
    except (PlanError, BaseModelError) as exc:
        _err(str(exc))
        return EXIT_USAGE

    plan, train_set, val_set = inputs.plan, inputs.train_set, inputs.val_set
    _quiet_libraries()
    phases = ([f"lora {plan.steps(len(train_set))}"] if plan.lora else []) + (
        [f"soft prompt {plan.steps(len(train_set), 'prompt')}"] if plan.soft_prompt else []
    )
    _say(
        f"training {inputs.manifest.name} on {plan.base_name}: {len(train_set)} rows"
        f"{f', {len(val_set)} validation rows' if val_set else ''}; steps: {', '.join(phases)}; "
        f"batch {plan.batch_size}x{plan.grad_accum}, seed {plan.seed}, device {plan.device}"
    )
    return _train_and_write(plan, inputs.base_source, inputs.tokenizer, train_set, val_set)


def _train_and_write(plan, base_source, tokenizer, train_set, val_set) -> int:
    from server.manifest.soft_prompt import save_soft_prompt
    from trainer.artifacts import Staging, describe, update_manifest
    from trainer.base_model import BaseModelError, pad_id
    from trainer.loop import TrainError
    from trainer.lora import ADAPTER_FILES, train_lora
    from trainer.prompt_tuning import train_soft_prompt

    start = time.monotonic()
    pad = pad_id(tokenizer)
    placed: list[Path] = []
    # SIGTERM (a supervisor, `timeout`) ends the training as Ctrl-C does: the staging folder is
    # removed on the way out and the expert folder keeps its previous files
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Staging(plan.expert_dir) as staging:
            # -- 3. phase 1: LoRA
            lora_dir = None
            if plan.lora is not None:
                lora_dir = staging.dir / "adapter"
                r1 = train_lora(plan, base_source, train_set, val_set, pad, lora_dir)
                _say(_phase_summary("phase 1 lora", r1))
                for name in ADAPTER_FILES:
                    staging.add(lora_dir / name, f"{plan.lora.path}/{name}")
            # -- 4. phase 2: soft prompt on top of the trained LoRA
            if plan.soft_prompt is not None:
                embeddings, r2 = train_soft_prompt(plan, base_source, lora_dir, train_set, val_set, pad)
                _say(_phase_summary("phase 2 soft prompt", r2))
                staged = staging.dir / "soft_prompt.safetensors"
                save_soft_prompt(
                    embeddings,
                    staged,
                    {
                        "base_model": plan.base_name,
                        "soft_prompt": plan.soft_prompt.name,
                        "trained_on_lora": str(lora_dir is not None),
                    },
                )
                staging.add(staged, plan.soft_prompt.path)
            # -- 5. files into place, sha256 into the manifest
            placed = staging.commit()
            for path in placed:
                _say(f"wrote {path}")
        adapter = (
            (
                plan.lora.base_index,
                plan.lora.adapter_index,
                describe(plan.expert_dir, f"{plan.lora.path}/adapter_model.safetensors"),
            )
            if plan.lora
            else None
        )
        soft = (plan.soft_prompt.index, describe(plan.expert_dir, plan.soft_prompt.path)) if plan.soft_prompt else None
        for note in update_manifest(plan.expert_dir, adapter=adapter, soft_prompt=soft):
            _say(f"note: {note}")
    except KeyboardInterrupt:
        _err("interrupted: " + _written(placed))
        return EXIT_INTERRUPTED
    except (TrainError, BaseModelError) as exc:
        _err(f"{exc}; {_written(placed)}")
        return EXIT_FAILED
    except OSError as exc:  # disk full, read-only expert folder...
        _err(f"cannot write the trained files: {exc}; {_written(placed)}")
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    _say(f"updated {plan.expert_dir / 'manifest.json'} (sha256); total {time.monotonic() - start:.0f}s")
    return EXIT_OK


def _written(placed: list[Path]) -> str:
    if not placed:
        return "nothing written"
    return "written but not recorded in the manifest: " + ", ".join(map(str, placed))


def _phase_summary(name: str, result) -> str:
    text = (
        f"{name}: {result.steps} steps in {result.seconds:.0f}s, loss {result.first_loss:.4f} -> "
        f"{result.final_loss:.4f} (mean of the last 10 steps)"
    )
    if result.validation_loss is not None:
        text += f", validation loss {result.validation_loss:.4f}"
    return text


def _quiet_libraries() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="peft")
