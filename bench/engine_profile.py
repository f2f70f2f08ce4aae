"""Where the engine's time goes: `python -m bench.engine_profile`.

Starts one gateway with the benchmark's experts (bench/experts.py) and drives it with 8 clients in
workloads, alternating: by default the base model, one LoRA expert, and the 5 experts mixed (as
bench/lora.py's `experts_mixed`); `--workloads` also offers bench/mixed.py's soft prompt on and
`none` (`sp-on`, `sp-none`). During each measurement window py-spy samples the engine's
model-running process (vLLM's worker: the model runner and the model run in its main thread) and,
in a table of its own, the engine-core process beside it (the scheduler); every sample is put in
one bucket by the innermost frame that names a part of the engine (the LoRA ops, the LoRA
mapping, attention, the base model's GEMMs, ...). Time torch spends in C++ is charged to
the Python frame that called it. Each bucket is reported as engine milliseconds per generated
token, so workloads of different throughput compare directly: the difference between the mixed and
the base column is where the mixed run's extra time goes. Writes bench/profile.json and
bench/profile.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import experts as ex
from .load import LoadResult, pct, run_load
from .machine import descendants, machine_facts
from .measure import SERVERS, wait_idle
from .plan import Plan
from .servers import BASE_ID, EngineConfig, Server, _scan_proc, gateway, start_all

BENCH = Path(__file__).resolve().parent
RATE_HZ = 100

# (bucket, substrings of a py-spy frame "function (file:line)"): a sample goes to the bucket of the
# innermost frame that matches any bucket; the order only breaks ties within one frame.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("LoRA ops (project)", ("server/engine/lora_ops.py",)),
    ("LoRA ops (vLLM)", ("vllm/lora/ops/",)),
    ("LoRA mapping (per step)", ("vllm/lora/punica_wrapper/",)),
    ("LoRA adapter management", ("vllm/lora/worker_manager.py", "vllm/lora/model_manager.py", "vllm/lora/models.py")),
    ("LoRA layer wrappers", ("vllm/lora/layers/",)),
    ("attention", ("vllm/v1/attention/", "vllm/attention/", "cpu_attn")),
    ("base linear GEMMs", ("vllm/model_executor/layers/linear.py",)),
    ("logits (lm head)", ("vllm/model_executor/layers/logits_processor.py",)),
    ("embedding", ("vllm/model_executor/layers/vocab_parallel_embedding.py",)),
    (
        "norms, rotary, activation",
        (
            "vllm/model_executor/layers/layernorm.py",
            "vllm/model_executor/layers/rotary_embedding",
            "vllm/model_executor/layers/activation.py",
        ),
    ),
    ("model (other)", ("vllm/model_executor/models/",)),
    ("sampling", ("vllm/v1/sample/",)),
    ("structured output", ("vllm/v1/structured_output/",)),
    ("model runner (inputs, outputs)", ("vllm/v1/worker/",)),
    ("worker loop (receiving steps)", ("vllm/v1/executor/", "vllm/executor/", "vllm/v1/engine/")),
]
OTHER = "other"


def bucket_of(frames: list[str], buckets: list[tuple[str, tuple[str, ...]]] | None = None) -> str:
    """The bucket of the innermost frame (last in py-spy's order) that matches one."""
    for frame in reversed(frames):
        for name, needles in buckets or BUCKETS:
            if any(n in frame for n in needles):
                return name
    return OTHER


def model_process_pid(server: Server) -> int:
    """The gateway's model-running process (vLLM's worker): the descendant that has used the most CPU."""
    assert server.proc is not None
    cpu = _scan_proc()
    found = [(cpu[pid][1], pid) for pid in descendants(server.proc.pid) - {server.proc.pid} if pid in cpu]
    best = max(found)[1] if found else None
    if best is None:
        raise RuntimeError("the gateway has no engine process")
    return best


# the engine-core process (vLLM's scheduler, beside the worker): its main thread's samples, by the
# innermost frame that matches (same rule as BUCKETS)
CORE_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("serialisation", ("serial_utils.py", "msgspec", "pickle")),
    (
        "KV cache manager, block hashes",
        ("vllm/v1/core/kv_cache", "vllm/v1/core/block_pool", "vllm/v1/core/single_type"),
    ),
    ("scheduler", ("vllm/v1/core/sched/",)),
    ("requests (token lists, stop checks)", ("vllm/v1/request.py", "vllm/v1/core/")),
    ("LoRA (scheduler side)", ("vllm/lora/",)),
    ("engine-core loop, outputs", ("vllm/v1/engine/", "vllm/v1/executor/", "vllm/v1/outputs")),
]


def engine_core_pid(server: Server) -> int | None:
    """vLLM's engine-core process under the gateway (its process title starts VLLM::EngineCore)."""
    assert server.proc is not None
    for pid in sorted(descendants(server.proc.pid)):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("VLLM::EngineCor"):
            return pid
    return None


def summarise(raw: Path, buckets: list[tuple[str, tuple[str, ...]]] | None = None) -> dict[str, Any]:
    """Active samples of the main thread (py-spy leaves idle stacks out), per bucket of `buckets`
    (default BUCKETS, the worker's parts)."""
    counts: dict[str, int] = {}
    threads: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        frames = stack.split(";")
        threads[frames[0]] = threads.get(frames[0], 0) + int(count)
        if not any("worker_busy_loop" in f or "run_busy_loop" in f for f in frames):
            continue  # the I/O threads (sockets, serialisation) are not the step
        b = bucket_of(frames, buckets)
        counts[b] = counts.get(b, 0) + int(count)
    return {"buckets": counts, "samples_by_thread": threads}


async def _profiled_load(
    server: Server, pids: dict[str, int], plan: Plan, window_s: float, pick, raws: dict[str, Path]
) -> LoadResult:
    async def record(pid: int, raw: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--nonblocking",
            "-p",
            str(pid),
            "-d",
            str(int(window_s)),
            "-r",
            str(RATE_HZ),
            "--format",
            "raw",
            "-o",
            str(raw),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[:500]}")

    async def spy() -> None:
        await asyncio.gather(*(record(pids[k], raws[k]) for k in pids))

    return await run_load(
        server.url,
        clients=8,
        warmup_s=plan.warmup_s + 7 * plan.stagger_s,
        window_s=window_s,
        max_tokens=plan.max_tokens,
        pick=pick,
        model=BASE_ID,
        stagger_s=plan.stagger_s,
        on_window=spy,
    )


def workloads() -> dict[str, Any]:
    """Every workload by name: how a client picks the model (and extra fields) of its k-th request."""
    lora = ex.LORA_EXPERTS[0]
    mixed = [*ex.LORA_EXPERTS, ex.SOFT_PROMPT_EXPERT]
    sp = ex.SOFT_PROMPT_EXPERT
    return {
        "base": None,
        "lora": lambda c, k: (lora, None),
        "mixed": lambda c, k: (mixed[(c + k) % len(mixed)], None),
        # bench/mixed.py's soft prompt on vs `none`: the same LoRA expert, prompt embeddings or token ids
        "sp-on": lambda c, k: (sp, {"soft_prompt": "alpha"}),
        "sp-none": lambda c, k: (sp, {"soft_prompt": "none"}),
    }


DEFAULT_WORKLOADS = ("base", "lora", "mixed")
DIFFERENCES = (("mixed", "base"), ("sp-on", "sp-none"))  # columns A − B, where both were run


def run(plan: Plan, server: Server, reps: int, window_s: float, out_dir: Path, names: list[str]) -> dict[str, Any]:
    pids = {"worker": model_process_pid(server)}
    core = engine_core_pid(server)
    if core is not None:
        pids["core"] = core
    per: dict[str, dict[str, Any]] = {}
    chosen = {n: p for n, p in workloads().items() if n in names}
    for rep in range(reps):
        order = list(chosen.items())
        if rep % 2:
            order.reverse()
        for name, pick in order:
            raws = {k: out_dir / f"profile-{k}-{name}-{rep}.txt" for k in pids}
            print(f"  {name} (rep {rep + 1}/{reps}) ...", flush=True)
            r = asyncio.run(_profiled_load(server, pids, plan, window_s, pick, raws))
            wait_idle(server)
            s = summarise(raws["worker"])
            acc = per.setdefault(
                name, {"tokens": 0.0, "window_s": 0.0, "itl": [], "buckets": {}, "core": {}, "failures": 0}
            )
            if "core" in raws:
                for b, n in summarise(raws["core"], CORE_BUCKETS)["buckets"].items():
                    acc["core"][b] = acc["core"].get(b, 0) + n
            acc["tokens"] += r.tokens
            acc["window_s"] += r.window_s
            acc["itl"] += r.itl
            acc["failures"] += len(r.failures)
            for b, n in s["buckets"].items():
                acc["buckets"][b] = acc["buckets"].get(b, 0) + n
    out: dict[str, Any] = {}
    for name, acc in per.items():
        busy = sum(acc["buckets"].values()) / RATE_HZ  # the worker's main-thread seconds, sampled
        tokens = acc["tokens"] or 1.0
        out[name] = {
            "tokens_per_s": round(acc["tokens"] / acc["window_s"], 2),
            "itl_p50_ms": round((pct(acc["itl"], 50) or 0) * 1000, 1),
            "engine_busy_share": round(busy / acc["window_s"], 3),
            "engine_ms_per_token": round(busy * 1000 / tokens, 2),
            "ms_per_token": {
                b: round(n / RATE_HZ * 1000 / tokens, 2)
                for b, n in sorted(acc["buckets"].items(), key=lambda kv: -kv[1])
            },
            "engine_core_ms_per_token": round(sum(acc["core"].values()) * 1000 / RATE_HZ / tokens, 2),
            "engine_core_ms_per_token_by_part": {
                b: round(n / RATE_HZ * 1000 / tokens, 2) for b, n in sorted(acc["core"].items(), key=lambda kv: -kv[1])
            },
            "failures": acc["failures"],
        }
    return out


def write_markdown(res: dict[str, Any], path: Path) -> None:
    w = res["workloads"]
    names = [n for n in workloads() if n in w]
    diffs = [(a, b) for a, b in DIFFERENCES if a in w and b in w]
    lines = [
        "# Engine profile: where a generated token's time goes",
        "",
        f"`{res['command']}` — {res['date']}, {res['machine'].get('cpu_model', '?')}, "
        f"{res['machine'].get('cores', '?')} cores, dtype {res['dtype']}, LoRA ops {res['lora_ops']}, "
        f"8 clients, {res['reps']} x {res['window_s']:.0f} s per workload, py-spy at {RATE_HZ} Hz on the engine's model-running process.",
        *(["", f"Note: {res['note']}.", ""] if res.get("note") else [""]),
        "Milliseconds of the model-running thread per generated token, by the innermost part of the engine "
        "on the stack (time in torch's C++ code is charged to the Python frame that called it).",
        "",
    ]

    def table(by_part: str, total: str, total_label: str, bold_total: bool) -> list[str]:
        """A row per part (largest first) and a total row; a column per workload, then per difference."""

        def value(n: str, part: str | None) -> float:
            return float(w[n].get(total, 0) if part is None else w[n].get(by_part, {}).get(part, 0))

        parts = sorted(
            {p for n in names for p in w[n].get(by_part, {})}, key=lambda p: -max(value(n, p) for n in names)
        )
        rows = [
            "| part | " + " | ".join(names) + "".join(f" | {a} − {b}" for a, b in diffs) + " |",
            "|---|" + "---:|" * (len(names) + len(diffs)),
        ]
        for part in [*parts, None]:
            cells = [f"{value(n, part):.2f}" for n in names] + [
                f"{value(a, part) - value(b, part):+.2f}" for a, b in diffs
            ]
            if part is None and bold_total:
                cells = [f"**{c}**" for c in cells]
            rows.append(f"| {part or total_label} | " + " | ".join(cells) + " |")
        return rows

    lines += table("ms_per_token", "engine_ms_per_token", "**engine, all parts**", bold_total=True)
    if any(w[n].get("engine_core_ms_per_token_by_part") for n in names):
        lines += [
            "",
            "The engine-core process (vLLM's scheduler, beside the worker), its main thread, ms per generated token:",
            "",
            *table("engine_core_ms_per_token_by_part", "engine_core_ms_per_token", "**engine core, all**", False),
        ]
    lines += [
        "",
        "| workload | tokens/s | ITL p50 ms | engine busy |",
        "|---|---:|---:|---:|",
    ]
    for n in names:
        lines.append(
            f"| {n} | {w[n]['tokens_per_s']} | {w[n]['itl_p50_ms']} | {w[n]['engine_busy_share'] * 100:.0f}% |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.engine_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2, help="rounds of the workloads (default 2)")
    ap.add_argument(
        "--workloads",
        default=",".join(DEFAULT_WORKLOADS),
        help=f"comma-separated, of {', '.join(workloads())} (default {','.join(DEFAULT_WORKLOADS)})",
    )
    ap.add_argument("--window", type=float, default=20.0, help="seconds sampled per workload and round (default 20)")
    ap.add_argument(
        "--lora-ops", choices=("project", "vllm"), default="project", help="EXPERT_LORA_OPS (default project)"
    )
    ap.add_argument("--out", type=Path, default=BENCH, help="folder for profile.json / profile.md (default bench/)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (py-spy's raw stacks, logs)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in workloads()]
    if unknown or not names:
        ap.error(f"--workloads: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(workloads())}")
    if not (Path(sys.executable).parent / "py-spy").exists():
        print(
            "bench.engine_profile: py-spy is not installed (scripts/bootstrap.sh installs the dev extras)",
            file=sys.stderr,
        )
        return 2
    plan = Plan.make(quick=False, profile=True)
    cfg = EngineConfig()
    work = Path(tempfile.mkdtemp(prefix="expert-profile-"))
    server: Server | None = None
    res: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "-m", "bench.engine_profile", *argv]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_facts(),
        "dtype": cfg.dtype,
        "lora_ops": args.lora_ops,
        "reps": args.reps,
        "window_s": args.window,
        "workload_names": names,
        "buckets": [b for b, _ in BUCKETS] + [OTHER],
    }
    t0 = time.perf_counter()
    try:
        from server.manifest.embedded import prepare

        model = prepare()
        es = ex.build(work, model)
        server = gateway("gateway", es.root, work / "logs", cfg, lora_ops=args.lora_ops)
        SERVERS[:] = [server]
        print("bench.engine_profile: starting the gateway ...", flush=True)
        start_all([server])
        for name, pick in workloads().items():  # warm each chosen workload once (adapters loaded, first steps)
            if name not in names:
                continue
            asyncio.run(
                run_load(server.url, clients=8, warmup_s=0, window_s=4, max_tokens=16, pick=pick, model=BASE_ID)
            )
            wait_idle(server)
        args.out.mkdir(parents=True, exist_ok=True)
        res["workloads"] = run(plan, server, args.reps, args.window, work, names)
    finally:
        if server is not None:
            server.stop()
        if args.keep_work:
            print(f"bench.engine_profile: scratch folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    res["duration_s"] = round(time.perf_counter() - t0, 1)
    (args.out / "profile.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, args.out / "profile.md")
    print((args.out / "profile.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
