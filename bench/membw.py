"""The machine's memory bandwidth, and the decode ceiling it sets for one stream.

Decoding one token of one stream reads every weight once (the tied embedding matrix is read
once, as the LM head; the input embedding reads one row), so a single stream cannot decode
faster than bandwidth / weight bytes. KV-cache reads for short prompts are negligible (<2%).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bandwidth(size_mib: int = 512, repeats: int = 7) -> dict[str, Any]:
    """GB/s (10^9 bytes) of large copies (STREAM 'copy' convention: read + write bytes) and of a
    read-only reduction, with numpy (one thread) and torch (all threads); best of `repeats`."""
    import torch

    n = size_mib * 2**20
    out: dict[str, Any] = {"array_mib": size_mib, "repeats": repeats, "torch_threads": torch.get_num_threads()}
    out["numpy_copy_gbs"] = _numpy_copy_gbs(n, repeats)
    out.update(_torch_gbs(n, repeats))
    out["copy_gbs"] = max(out["numpy_copy_gbs"], out["torch_copy_gbs"])
    return out


def _numpy_copy_gbs(n: int, repeats: int) -> float:
    """Copy GB/s of `n`-byte arrays with numpy; the arrays are freed on return."""
    import numpy as np

    src = np.ones(n // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return round(2 * n / _best(lambda: np.copyto(dst, src), repeats) / 1e9, 2)


def _torch_gbs(n: int, repeats: int) -> dict[str, float]:
    """Copy and read-only GB/s of `n`-byte tensors with torch; the tensors are freed on return."""
    import torch

    a = torch.ones(n // 4, dtype=torch.float32)
    b = torch.empty_like(a)
    b.copy_(a)
    a.sum()
    return {
        "torch_copy_gbs": round(2 * n / _best(lambda: b.copy_(a), repeats) / 1e9, 2),
        "torch_read_gbs": round(n / _best(lambda: a.sum(), repeats) / 1e9, 2),
    }


def weight_params(model_dir: Path) -> int:
    """Parameters stored in the model's safetensors files (a tied embedding is stored once)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118  safe_open has keys() but is not iterable
                shape = st.get_slice(key).get_shape()
                size = 1
                for d in shape:
                    size *= d
                total += size
    return total


def ceiling(bw: dict[str, Any], params: int, dtype: str) -> dict[str, Any]:
    per_token = params * BYTES_PER_PARAM[dtype]
    return {
        "params": params,
        "dtype": dtype,
        "bytes_per_token": per_token,
        "bandwidth_gbs": bw["copy_gbs"],
        "ceiling_tokens_per_s": round(bw["copy_gbs"] * 1e9 / per_token, 1),
        "ceiling_tokens_per_s_read_bw": round(bw["torch_read_gbs"] * 1e9 / per_token, 1),
    }


def limit(bw: dict[str, Any], params: int, dtype: str, single: dict[str, Any] | None) -> dict[str, Any]:
    """The ceiling, and how close one streaming client on the gateway came to it (`single`: the
    one-client gateway-vs-vLLM comparison, when it ran)."""
    c = ceiling(bw, params, dtype)
    out = {"memory_bandwidth": bw, **c}
    if single:
        decode = single["gateway"]["decode_tokens_per_s_from_itl"]
        out["achieved_decode_tokens_per_s"] = decode
        out["achieved_stream_tokens_per_s"] = single["gateway"]["tokens_per_s"]
        out["achieved_decode_tokens_per_s_vllm"] = single["vllm"]["decode_tokens_per_s_from_itl"]
        best = single["gateway"]["decode_tokens_per_s_best_run"]
        out["achieved_decode_tokens_per_s_best_run"] = best
        out["fraction_of_ceiling"] = round(decode / c["ceiling_tokens_per_s"], 3) if decode else None
        out["fraction_of_ceiling_best_run"] = round(best / c["ceiling_tokens_per_s"], 3) if best else None
        out["what"] = (
            "achieved = 1 / inter-token latency p50 of one streaming client on the gateway (decode only), "
            "over all runs and in the least disturbed run; stream tokens/s also counts prefill and "
            "request turn-around"
        )
    return out


if __name__ == "__main__":
    import json

    from server.manifest.embedded import prepare

    bw = bandwidth()
    print(json.dumps({**bw, **ceiling(bw, weight_params(prepare()), "bfloat16")}, indent=2))
