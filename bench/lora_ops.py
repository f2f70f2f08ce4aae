"""Microbenchmark of the CPU LoRA ops alone (no engine, no server): one engine step's LoRA work
for the embedded model's LoRA-wrapped layers, through vLLM's `PunicaWrapperCPU.add_lora_linear`,
with vLLM's PyTorch-native ops and with server/engine/lora_ops.py (installed as the plugin does).

`python -m bench.lora_ops [--layers 30] [--repeats 5] [--threads 2]` prints one JSON line per
case: best and median milliseconds per step for each side, and the speed-up (vLLM / project).
The adapters target q, k, v and o (rank 8 in rank-16 slots), as the example expert's; the MLP
layers are wrapped too and hold zeros, as in the engine."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

HIDDEN, INTER = 576, 1536
# module -> (input size, output slices, targeted by the adapters)
MODULES = {
    "qkv": (HIDDEN, (576, 192, 192), True),
    "o": (HIDDEN, (576,), True),
    "gate_up": (HIDDEN, (INTER, INTER), False),
    "down": (INTER, (HIDDEN,), False),
}
SLOTS, RANK, ADAPTER_RANK = 8, 16, 8
REQUESTS = 8


def build(layers: int, dtype: torch.dtype, adapters: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(layers):
        mods = {}
        for name, (fan_in, outs, targeted) in MODULES.items():
            a = tuple(torch.zeros(SLOTS, 1, RANK, fan_in, dtype=dtype) for _ in outs)
            b = tuple(torch.zeros(SLOTS, 1, o, RANK, dtype=dtype) for o in outs)
            if targeted:
                for s in range(adapters):
                    for t in a:
                        t[s, 0, :ADAPTER_RANK] = (torch.randn(ADAPTER_RANK, fan_in, generator=g) * 0.05).to(dtype)
                    for t, o in zip(b, outs, strict=True):
                        t[s, 0, :, :ADAPTER_RANK] = (torch.randn(o, ADAPTER_RANK, generator=g) * 0.05).to(dtype)
            mods[name] = (a, b, outs)
        out.append(mods)
    return out


def step_ms(wrapper: Any, layers: list[dict[str, Any]], tokens: int, dtype: torch.dtype, repeats: int) -> tuple:
    xs = {HIDDEN: torch.randn(tokens, HIDDEN).to(dtype), INTER: torch.randn(tokens, INTER).to(dtype)}

    def one_step() -> None:
        for mods in layers:
            for a, b, outs in mods.values():
                y = torch.zeros(tokens, sum(outs), dtype=dtype)
                wrapper.add_lora_linear(y, xs[a[0].shape[-1]], a, b, 1.0, outs)

    one_step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - t)
    return round(min(times) * 1e3, 2), round(statistics.median(times) * 1e3, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lora_ops", description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=30, help="decoder layers (the embedded model has 30)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vllm.lora.layers import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from server.engine import plugin

    stock = {k: v for k, v in PunicaWrapperCPU.__dict__.items() if not k.startswith("__")}

    def use(ops: str) -> None:
        for k, v in stock.items():
            setattr(PunicaWrapperCPU, k, v)
        if "_expert_gateway_lora_ops" in PunicaWrapperCPU.__dict__:
            delattr(PunicaWrapperCPU, "_expert_gateway_lora_ops")
        if ops == "project":
            os.environ[plugin.LORA_OPS_ENV] = "project"
            plugin._install_lora_ops()

    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        for adapters, base_request in ((1, False), (5, True)):
            layers = build(args.layers, dtype, adapters)
            ids = list(range(1, adapters + 1))
            for tokens, prefill in ((8, False), (512, True)):
                # 8 requests, each with its tokens in a row; request r uses adapter r mod `adapters`,
                # the last one none when `base_request`
                per_request = tokens // REQUESTS
                lora_of = [0 if base_request and r == REQUESTS - 1 else ids[r % adapters] for r in range(REQUESTS)]
                index = [lora for lora in lora_of for _ in range(per_request)]
                mapping = LoRAMapping(tuple(index), tuple(lora_of), is_prefill=prefill)
                row: dict[str, Any] = {
                    "dtype": str(dtype).removeprefix("torch."),
                    "adapters": adapters,
                    "a_request_without_adapter": base_request,
                    "tokens": tokens,
                    "prefill": prefill,
                    "layers": args.layers,
                }
                for ops in ("vllm", "project"):
                    use(ops)
                    wrapper = PunicaWrapperCPU(4096, 256, "cpu")
                    wrapper.update_metadata(mapping, ids + [None] * (SLOTS - adapters), SLOTS, 49152)
                    row[f"{ops}_ms"], row[f"{ops}_median_ms"] = step_ms(wrapper, layers, tokens, dtype, args.repeats)
                row["speedup"] = round(row["vllm_ms"] / row["project_ms"], 2)
                print(json.dumps(row), flush=True)
    use("vllm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
