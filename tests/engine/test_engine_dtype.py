"""The engine's dtype (server/settings.py `engine_dtype`): `auto` on a CPU is bfloat16 only where
the CPU computes bfloat16 natively, else float32; an explicit setting is kept."""

from __future__ import annotations

import pytest

from server import settings as settings_module
from server.api.service import Service
from server.manifest.hints import EnginePlan
from server.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_on_a_cpu_follows_its_bfloat16_instructions(monkeypatch, native, expected):
    monkeypatch.delenv("EXPERT_DTYPE", raising=False)
    monkeypatch.setattr(settings_module, "cpu_has_bfloat16", lambda: native)
    s = Settings(device="cpu")
    assert s.engine_dtype("cpu") == expected
    assert Service(s).engine_args(EnginePlan())["dtype"] == expected


def test_an_explicit_dtype_and_a_gpu_keep_the_setting(monkeypatch):
    monkeypatch.delenv("EXPERT_DTYPE", raising=False)
    monkeypatch.setattr(settings_module, "cpu_has_bfloat16", lambda: False)
    assert Settings(dtype="bfloat16").engine_dtype("cpu") == "bfloat16"
    assert Settings(dtype="float16").engine_dtype("cpu") == "float16"
    assert Settings().engine_dtype("cuda") == "auto"  # vLLM chooses on a GPU


def test_the_kv_block_size_reaches_the_engine_only_when_set(monkeypatch):
    monkeypatch.delenv("EXPERT_KV_BLOCK_SIZE", raising=False)
    assert "block_size" not in Service(Settings()).engine_args(EnginePlan())  # vLLM's platform default
    assert Service(Settings(kv_block_size=32)).engine_args(EnginePlan())["block_size"] == 32
    for bad in (8, 24, 512):
        with pytest.raises(ValueError, match="kv_block_size"):
            Settings(kv_block_size=bad)


def test_a_kv_block_size_the_cpu_attention_kernels_refuse_is_refused_at_start(monkeypatch):
    monkeypatch.delenv("EXPERT_KV_BLOCK_SIZE", raising=False)
    for size in (16, 48):
        with pytest.raises(ValueError, match="multiple of 32"):
            Settings(device="cpu", kv_block_size=size)
        assert Settings(device="cuda", kv_block_size=size).kv_block_size == size
    assert Settings(device="cpu", kv_block_size=64).kv_block_size == 64
