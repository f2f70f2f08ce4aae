"""What a LoRA training step costs with the vocabulary projection of every position against only
the answer's (trainer.loop.answer_loss, the trainer's loss).

The same expert, model, adapter and batches on both sides: each pair runs one batch forward and
backward twice, once with `model(**batch).loss` (logits of every prompt and answer position)
and once with `answer_loss` (logits from the batch's first answer position on), in alternating
order; the loss of both sides is printed beside the times, and must agree. Gradients are
cleared between sides and no optimizer step is taken, so every pair sees the same weights.
Other jobs' CPU time during the run is measured from /proc/stat (the machine's busy time less
this process's), because on a shared machine a figure is only as good as the quiet it was taken in.

    .venv/bin/python -m bench.train_step [EXPERT_DIR] [--pairs N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .measure import median_interval
from .servers import machine_busy_seconds


def _setup(expert_dir: Path, rows: int):
    from trainer.base_model import pad_id
    from trainer.data import batches
    from trainer.inputs import read_inputs
    from trainer.lora import lora_model

    inputs = read_inputs(expert_dir, seed=0, train_rows=rows)  # as the trainer reads them
    if inputs.plan.lora is None:
        raise SystemExit(f"{expert_dir}: the expert has no LoRA adapter to train")
    model = lora_model(inputs.plan, inputs.base_source)  # as the trainer builds it
    model.train()
    stream = batches(
        inputs.train_set, inputs.plan.batch_size, pad_id(inputs.tokenizer), torch.Generator().manual_seed(0)
    )
    return inputs.manifest, inputs.plan, model, stream


def _timed(model, batch, loss_of) -> tuple[float, float]:
    start = time.perf_counter()
    loss = loss_of(model, batch)
    loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds, float(loss.item())


def run(expert_dir: Path, pairs: int) -> dict[str, Any]:
    from trainer.loop import answer_loss

    manifest, plan, model, stream = _setup(expert_dir, rows=max(64, pairs * 8 + 16))
    sides = {"all_positions": lambda m, b: m(**b).loss, "answer_positions": answer_loss}
    times: dict[str, list[float]] = {name: [] for name in sides}
    ratios, loss_gaps = [], []
    for _ in range(2):  # warm-up: first calls allocate
        batch = next(stream)
        for loss_of in sides.values():
            _timed(model, batch, loss_of)
    busy0, own0, wall0 = machine_busy_seconds(), time.process_time(), time.monotonic()
    for i in range(pairs):
        batch = next(stream)
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        got = {}
        for name in order:
            torch.manual_seed(i)  # the same dropout masks on both sides
            got[name] = _timed(model, batch, sides[name])
            times[name].append(got[name][0])
        ratios.append(got["answer_positions"][0] / got["all_positions"][0])
        loss_gaps.append(abs(got["answer_positions"][1] - got["all_positions"][1]))
        print(
            f"  pair {i + 1}/{pairs}: all {got['all_positions'][0]:.3f} s, answer {got['answer_positions'][0]:.3f} s, "
            f"loss {got['all_positions'][1]:.5f} / {got['answer_positions'][1]:.5f}",
            flush=True,
        )
    wall = time.monotonic() - wall0
    others = (machine_busy_seconds() - busy0 - (time.process_time() - own0)) / wall
    return {
        "expert": manifest.name,
        "model": plan.base_name,
        "batch_size": plan.batch_size,
        "lora": {"r": plan.lora.r, "target_modules": list(plan.lora.target_modules)},
        "torch_threads": torch.get_num_threads(),
        "pairs": pairs,
        "seconds_per_step": {name: round(statistics.median(v), 3) for name, v in times.items()},
        "ratio_answer_to_all": {"median": round(statistics.median(ratios), 3), "interval": median_interval(ratios)},
        "max_loss_difference": max(loss_gaps),
        "other_jobs_cores": round(max(0.0, others), 2),
        "taken": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(r: dict[str, Any]) -> str:
    s = r["seconds_per_step"]
    ci = r["ratio_answer_to_all"]["interval"]
    return "\n".join(
        [
            f"# Training step: logits of every position against the answer's ({r['taken']})",
            "",
            f"{r['expert']} on {r['model']}, LoRA r={r['lora']['r']} on {', '.join(r['lora']['target_modules'])}, "
            f"batch {r['batch_size']}, float32, {r['torch_threads']} torch threads; {r['pairs']} pairs, one batch "
            f"forward and backward per side, alternating order; other jobs: {r['other_jobs_cores']} cores.",
            "",
            "| loss | seconds per step (median) |",
            "|---|---|",
            f"| `model(**batch).loss` (every position) | {s['all_positions']} |",
            f"| `answer_loss` (answer positions) | {s['answer_positions']} |",
            "",
            f"Ratio answer / every position, median of the pairs: **{r['ratio_answer_to_all']['median']}** "
            f"(interval of the median {ci['lo']}–{ci['hi']}, coverage {ci['coverage']}); largest difference between the two losses of a pair: "
            f"{r['max_loss_difference']:.2e}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("expert_dir", nargs="?", default="experts/contact-extract", type=Path)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(args.expert_dir, args.pairs)
    text = markdown(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
