"""The training loop shared by both phases: AdamW, warmup then linear/cosine decay, grad clipping.

Weights and optimizer state are float32 (on CUDA the forward runs under bfloat16 autocast).
Read top to bottom: each optimizer step sets the learning rate, runs `grad_accum`
micro-batches forward and backward, clips the gradient norm to 1 and steps. The loss is the
mean cross-entropy of the answer tokens (`answer_loss`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import deque
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from trainer.data import IGNORE_INDEX, Example, batches, collate

MAX_GRAD_NORM = 1.0


class TrainError(Exception):
    """Training went wrong (e.g. the loss became NaN)."""


@dataclass(frozen=True)
class PhaseResult:
    steps: int
    final_loss: float  # mean loss of the last (up to) 10 steps
    first_loss: float
    seconds: float
    validation_loss: float | None = None


def _autocast(device: str):
    """Weights stay float32; on CUDA the matmuls run in bfloat16 autocast."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens: the value of `model(**batch).loss`, with the
    vocabulary projection computed only from the batch's first position that predicts an answer
    token on. The prompt's logits would be thrown away; on the embedded model (vocabulary 49,152)
    projecting them costs 8 % of a LoRA step on 2 CPU cores (bench/train_step.py).

    Logits are kept from the end (`logits_to_keep`), so a PEFT soft prompt, which prepends its
    virtual tokens, lines up the same way."""
    labels = batch["labels"]
    answer = labels != IGNORE_INDEX
    # position of each row's first answer token (rows are right-padded, prompts differ in length)
    first = max(1, int(torch.where(answer.any(dim=1), answer.int().argmax(dim=1), labels.shape[1]).min()))
    keep = labels.shape[1] - first + 1  # the positions first-1 .. last, each predicting the next token
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    logits = out.logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels[:, first:].reshape(-1), ignore_index=IGNORE_INDEX
    )


def lr_at(step: int, steps: int, warmup: int, peak: float, scheduler: str) -> float:
    """Learning rate of optimizer step `step` (0-based)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if scheduler in ("constant", "constant_with_warmup"):
        return peak
    progress = (step - warmup) / max(1, steps - warmup)
    if scheduler == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def train(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    examples: list[Example],
    *,
    steps: int,
    batch_size: int,
    grad_accum: int,
    learning_rate: float,
    warmup: int,
    scheduler: str,
    pad_id: int,
    seed: int,
    device: str,
    desc: str,
    logging_steps: int | None = None,
) -> PhaseResult:
    torch.manual_seed(seed)  # dropout
    stream = batches(examples, batch_size, pad_id, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    model.train()
    recent: deque[float] = deque(maxlen=10)
    first_loss = math.nan
    start = time.monotonic()
    bar = tqdm(range(steps), desc=desc, unit="step", dynamic_ncols=True)
    for step in bar:
        lr = lr_at(step, steps, warmup, learning_rate, scheduler)
        for group in optimizer.param_groups:
            group["lr"] = lr

        loss_sum = 0.0
        for _ in range(grad_accum):
            batch = {k: v.to(device) for k, v in next(stream).items()}
            with _autocast(device):
                loss = answer_loss(model, batch) / grad_accum
            loss.backward()
            loss_sum += loss.item()
        if not math.isfinite(loss_sum):
            bar.close()
            raise TrainError(f"{desc}: the loss is {loss_sum} at step {step + 1}; try a lower learning rate")
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        if step == 0:
            first_loss = loss_sum
        recent.append(loss_sum)
        bar.set_postfix(loss=f"{loss_sum:.4f}", avg10=f"{sum(recent) / len(recent):.4f}", lr=f"{lr:.2e}")
        if logging_steps and (step + 1) % logging_steps == 0:
            bar.write(
                f"{desc} step {step + 1}/{steps}: loss {sum(recent) / len(recent):.4f} lr {lr:.2e}", file=sys.stderr
            )
    bar.close()
    model.eval()
    return PhaseResult(steps, sum(recent) / len(recent), first_loss, time.monotonic() - start)


@torch.no_grad()
def evaluate(model: torch.nn.Module, examples: list[Example], batch_size: int, pad_id: int, device: str) -> float:
    """Mean loss per answer token over `examples`."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        with _autocast(device):
            total += answer_loss(model, batch).item() * n
        count += n
    return total / max(1, count)


def run_phase(
    model: torch.nn.Module,
    examples: list[Example],
    validation: list[Example] | None,
    plan,
    *,
    pad_id: int,
    learning_rate: float,
    desc: str,
    phase: str = "lora",
) -> PhaseResult:
    """Train the parameters of `model` that require gradients, as the plan says; then the
    validation loss, when there is a validation set."""
    params = [p for p in model.parameters() if p.requires_grad]
    steps = plan.steps(len(examples), phase)
    result = train(
        model,
        params,
        examples,
        steps=steps,
        batch_size=plan.batch_size,
        grad_accum=plan.grad_accum,
        learning_rate=learning_rate,
        warmup=plan.warmup(steps),
        scheduler=plan.scheduler,
        pad_id=pad_id,
        seed=plan.seed,
        device=plan.device,
        desc=desc,
        logging_steps=plan.logging_steps,
    )
    if validation:
        loss = evaluate(model, validation, plan.batch_size, pad_id, plan.device)
        result = PhaseResult(result.steps, result.final_loss, result.first_loss, result.seconds, loss)
    return result
