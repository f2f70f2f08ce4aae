"""bench/run.py's command line."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_an_unknown_section_is_refused_before_anything_starts(capsys):
    from bench.run import main

    with pytest.raises(SystemExit) as exc:
        main(["--only", "soft_prompt_path,nonsense", "--out", "/nonexistent-folder"])
    assert exc.value.code == 2
    assert "unknown section nonsense" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["16", "48", "0", "512"])
def test_a_block_size_the_gateway_would_refuse_is_refused_before_anything_starts(bad, capsys):
    from bench.run import main

    with pytest.raises(SystemExit) as exc:
        main(["--kv-block-size", bad, "--out", "/nonexistent-folder"])
    assert exc.value.code == 2
    assert "--kv-block-size" in capsys.readouterr().err


def test_the_block_size_reaches_both_kinds_of_server_only_when_set(tmp_path):
    from bench.servers import EngineConfig, gateway, vllm_server

    default = EngineConfig()
    assert "EXPERT_KV_BLOCK_SIZE" not in gateway("g", tmp_path, tmp_path, default).env
    assert "--block-size" not in vllm_server("v", tmp_path, tmp_path, default).cmd
    cfg = EngineConfig(kv_block_size=32)
    assert gateway("g", tmp_path, tmp_path, cfg).env["EXPERT_KV_BLOCK_SIZE"] == "32"
    cmd = vllm_server("v", tmp_path, tmp_path, cfg).cmd
    assert cmd[cmd.index("--block-size") + 1] == "32"
