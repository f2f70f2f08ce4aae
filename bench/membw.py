"""The machine's memory bandwidth, and the decode ceiling it sets for one stream.

Decoding one token of one stream reads every weight once (the tied embedding matrix is read
once, as the LM head; the input embedding reads one row), so a single stream cannot decode
faster than bandwidth / weight bytes. KV-cache reads for short prompts are negligible (<2%).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bandwidth(size_mib: int = 512, repeats: int = 7) -> dict[str, Any]:
    """GB/s (10^9 bytes) of large copies (STREAM 'copy' convention: read + write bytes) and of a
    read-only reduction, with numpy (one thread) and torch (all threads); best of `repeats`."""
    import numpy as np
    import torch

    n = size_mib * 2**20
    out: dict[str, Any] = {"array_mib": size_mib, "repeats": repeats, "torch_threads": torch.get_num_threads()}
    src = np.ones(n // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    out["numpy_copy_gbs"] = round(2 * n / _best(lambda: np.copyto(dst, src), repeats) / 1e9, 2)
    del src, dst
    a = torch.ones(n // 4, dtype=torch.float32)
    b = torch.empty_like(a)
    b.copy_(a)
    out["torch_copy_gbs"] = round(2 * n / _best(lambda: b.copy_(a), repeats) / 1e9, 2)
    a.sum()
    out["torch_read_gbs"] = round(n / _best(lambda: a.sum(), repeats) / 1e9, 2)
    del a, b
    out["copy_gbs"] = max(out["numpy_copy_gbs"], out["torch_copy_gbs"])
    return out


def weight_params(model_dir: Path) -> int:
    """Parameters stored in the model's safetensors files (a tied embedding is stored once)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
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


if __name__ == "__main__":
    import json

    from server.manifest.embedded import prepare

    bw = bandwidth()
    print(json.dumps({**bw, **ceiling(bw, weight_params(prepare()), "bfloat16")}, indent=2))
