"""The gateway's benchmark: one command, `python -m bench.run [--quick]`.

Starts the servers it compares (the gateway, vLLM's own OpenAI server with the same engine
args, and for the prompt-embeddings comparison a second gateway), drives them with the
load generator in bench/load.py, and writes bench/results.json and bench/results.md.

Both sides of every comparison run in the same run, alternating (A B, B A, A B, ...), on a
machine that may be shared: ratios of paired runs are the numbers to read, absolute values
move with the machine's other load (recorded in the results).

The parts: plan.py (how long, how often), servers.py (starting them; CPU snapshots), load.py
(the load generator), measure.py (one measurement; A/B pairs), comparisons.py (gateway vs vLLM),
lora.py (a LoRA expert and mixed experts vs the base model, with vLLM's CPU LoRA ops and the
project's), mixed.py (the soft-prompt path), membw.py (the bandwidth ceiling), reload.py
(reload under load), profiling.py (py-spy, optional), machine.py and report.py (results.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.settings import CPU_KV_BLOCK_MULTIPLE, KV_BLOCK_SIZES

from . import experts as ex
from . import membw
from .comparisons import gateway_vs_vllm
from .grammar_copy import grammar_copy
from .load import run_load
from .lora import experts_mixed, lora_vs_base
from .machine import descendants, machine_facts, other_processes
from .measure import SERVERS, wait_idle
from .mixed import soft_prompt_path
from .plan import Plan
from .profiling import profile_api_process
from .reload import reload_under_load
from .report import write_markdown
from .servers import BASE_ID, EngineConfig, Server, gateway, start_all, vllm_server

BENCH = Path(__file__).resolve().parent
# each section, and the servers it measures besides `gateway` (started only when a chosen section needs them)
SECTION_SERVERS: dict[str, set[str]] = {
    "gateway_vs_vllm": {"vllm"},
    "lora_vs_base": {"gateway-vllm-lora-ops"},
    "experts_mixed": {"gateway-vllm-lora-ops"},
    "soft_prompt_path": {"gateway-embeds"},
    "grammar_copy": set(),
    "reload": set(),
    "profile": {"vllm"},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repetition per cell, shorter windows (about 10 min)")
    ap.add_argument("--profile", action="store_true", help="also sample both API processes with py-spy")
    ap.add_argument("--out", type=Path, default=BENCH, help="folder for results.json / results.md (default bench/)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (experts, server logs)")
    ap.add_argument(
        "--only",
        help="comma-separated sections to run (gateway_vs_vllm, lora_vs_base, experts_mixed, soft_prompt_path, grammar_copy, "
        "reload, profile; default: all), e.g. for a short check; only the servers they use are started",
    )
    ap.add_argument(
        "--kv-block-size",
        type=int,
        metavar="N",
        help="tokens per KV-cache block on every server (EXPERT_KV_BLOCK_SIZE / --block-size; default: "
        "vLLM's platform default, 128 on a CPU, where prompts shorter than a block never hit the prefix cache)",
    )
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()} if args.only else None
    if only is not None:
        unknown = sorted(only - set(SECTION_SERVERS))
        if unknown or not only:
            ap.error(
                f"--only: unknown section {', '.join(unknown) or '(none given)'}; known: {', '.join(SECTION_SERVERS)}"
            )
    n = args.kv_block_size
    if n is not None and not (0 < n <= KV_BLOCK_SIZES[1] and n % CPU_KV_BLOCK_MULTIPLE == 0):
        ap.error(
            f"--kv-block-size: a multiple of {CPU_KV_BLOCK_MULTIPLE}, at most {KV_BLOCK_SIZES[1]} "
            "(EXPERT_KV_BLOCK_SIZE's bounds on a CPU)"
        )
    plan = Plan.make(args.quick, args.profile)
    cfg = EngineConfig(kv_block_size=args.kv_block_size)
    t_start = time.perf_counter()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    res: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "-m", "bench.run", *argv]),
        "quick": plan.quick,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_facts(),
        "settings": {
            "dtype": cfg.dtype,
            "max_tokens": plan.max_tokens,
            "warmup_s": plan.warmup_s,
            "window_s": plan.window_s,
            "window_s_32": plan.window_s_32,
            "window_s_whole": plan.window_s_whole,
            "stagger_s": plan.stagger_s,
            "engine_args": f"max_model_len {cfg.max_model_len}, LoRA on (max_loras {cfg.max_loras}, "
            f"max_cpu_loras {cfg.max_cpu_loras}, max_lora_rank {cfg.max_lora_rank}), "
            f"prompt embeds on, enforce_eager, max_num_seqs {cfg.max_num_seqs}, "
            "prefix caching on, VLLM_CPU_KVCACHE_SPACE=1, KV block size "
            f"{cfg.kv_block_size if cfg.kv_block_size is not None else 'vLLM default (128 on a CPU)'}",
        },
    }
    work = Path(tempfile.mkdtemp(prefix="expert-bench-"))
    logs = work / "logs"
    servers: list[Server] = []
    print(f"bench: {'quick' if plan.quick else 'default'} run; scratch folder {work}", flush=True)
    try:
        from server.manifest.embedded import prepare

        model = prepare()
        print("bench: memory bandwidth ...", flush=True)
        bw = membw.bandwidth()
        params = membw.weight_params(model)
        print(f"  copy {bw['copy_gbs']} GB/s; {params / 1e6:.1f} M params", flush=True)
        print("bench: building experts (5 LoRA adapters + soft prompts) ...", flush=True)
        es = ex.build(work, model)

        gw = gateway("gateway", es.root, logs, cfg)
        peer = vllm_server("vllm", model, logs, cfg, lora_modules=es.lora_dirs)
        # the same gateway with vLLM's stock CPU LoRA ops, for lora_vs_base and experts_mixed
        gw_stock = gateway("gateway-vllm-lora-ops", es.root, logs, cfg, lora_ops="vllm")
        candidates = [gw, peer, gw_stock]
        gw_embeds = None
        if plan.embeds_server:
            gw_embeds = gateway("gateway-embeds", es.root, logs, cfg, embeds_for_all=True)
            candidates.append(gw_embeds)
        # only the servers the chosen sections use are started
        wanted = {"gateway"}.union(*(SECTION_SERVERS[k] for k in (only or SECTION_SERVERS)))
        servers += [s for s in candidates if s.name in wanted]
        SERVERS[:] = servers
        print("bench: starting servers ...", flush=True)
        start_all(servers)
        res["servers"] = {s.name: {"ready_s": round(s.started_s, 1), "cmd": " ".join(s.cmd)} for s in servers}
        # every server warms up once (first requests pay one-time costs) before anything is measured
        for s in servers:
            asyncio.run(run_load(s.url, clients=4, warmup_s=0, window_s=4, max_tokens=16, model=BASE_ID, stagger_s=0.2))
            wait_idle(s)

        def section(key: str, fn: Callable[[], dict[str, Any]]) -> None:
            if only is not None and key not in only:
                return
            t = time.perf_counter()
            print(f"bench: {key} ...", flush=True)
            try:
                res[key] = fn()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                res[key] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  {key} failed: {exc}", flush=True)
            res.setdefault("section_s", {})[key] = round(time.perf_counter() - t, 1)

        section("gateway_vs_vllm", lambda: gateway_vs_vllm(plan, gw, peer))
        single = (res.get("gateway_vs_vllm", {}).get("by_clients") or {}).get("1")
        bw_end = membw.bandwidth()  # the machine is shared: the better of two measurements
        if bw_end["copy_gbs"] > bw["copy_gbs"]:
            bw = bw_end
        res["limit"] = membw.limit(bw, params, cfg.dtype, single)
        by_ops = {"project": gw, "vllm": gw_stock}
        section("lora_vs_base", lambda: lora_vs_base(plan, by_ops))
        section("experts_mixed", lambda: experts_mixed(plan, by_ops))
        section("soft_prompt_path", lambda: soft_prompt_path(plan, gw, gw_embeds))
        section("grammar_copy", lambda: grammar_copy(plan, gw))
        section("reload", lambda: reload_under_load(plan, gw, es))
        if plan.profile:
            section("profile", lambda: {s.name: profile_api_process(s, plan, 15, BENCH) for s in (gw, peer)})
        ours = set().union(*(descendants(s.proc.pid) for s in servers if s.proc)) | {os.getpid()}
        res["machine"]["other_processes"] = other_processes(ours)
        for s in servers:
            if not s.alive():
                res.setdefault("server_exits", {})[s.name] = s.tail()
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the servers", flush=True)
        res["interrupted"] = True
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench: failed: {exc}", flush=True)
    finally:
        for s in servers:
            s.stop()
        res["machine"]["load_avg_end"] = os.getloadavg()
        res["duration_s"] = round(time.perf_counter() - t_start, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        write_markdown(res, args.out / "results.md")
        if args.keep_work or res.get("error"):
            print(f"bench: scratch folder kept: {work} (server logs in {logs})", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"bench: wrote {args.out / 'results.json'} and {args.out / 'results.md'} in {res['duration_s'] / 60:.1f} min",
        flush=True,
    )
    print((args.out / "results.md").read_text(), flush=True)
    return 1 if res.get("error") or res.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
