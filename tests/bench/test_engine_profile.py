"""bench/engine_profile.py: py-spy's raw stacks charged to parts of the engine."""

from __future__ import annotations

import pytest

from bench.engine_profile import OTHER, bucket_of, summarise

pytestmark = pytest.mark.unit

LOOP = "WorkerProc.worker_busy_loop (vllm/v1/executor/multiproc_executor.py:1041)"
RUNNER = "GPUModelRunner.execute_model (vllm/v1/worker/gpu_model_runner.py:4242)"
LORA_LAYER = "MergedQKVParallelLinearWithLoRA.apply (vllm/lora/layers/column_parallel_linear.py:361)"
BASE = "UnquantizedLinearMethod.apply (vllm/model_executor/layers/linear.py:240)"
OURS = "lora_linear (server/engine/lora_ops.py:380)"


def test_a_sample_goes_to_the_innermost_part_on_its_stack():
    assert bucket_of([LOOP, RUNNER, LORA_LAYER, OURS]) == "LoRA ops (project)"
    assert bucket_of([LOOP, RUNNER, LORA_LAYER, BASE]) == "base linear GEMMs"
    assert bucket_of([LOOP, RUNNER, LORA_LAYER]) == "LoRA layer wrappers"
    assert bucket_of([LOOP, RUNNER, "tolist (torch/_tensor.py:1)"]) == "model runner (inputs, outputs)"
    assert bucket_of(["<module> (<string>:1)", "select (selectors.py:468)"]) == OTHER


def test_only_the_model_running_thread_is_counted(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "\n".join(
            [
                f"process;{LOOP};{RUNNER};{LORA_LAYER};{OURS} 7",
                f"process;{LOOP};{RUNNER};{LORA_LAYER};{BASE} 20",
                f"process;{LOOP};{RUNNER};{LORA_LAYER};{OURS} 3",
                "process;Thread.run (threading.py:982);send_multipart (zmq/sugar/socket.py:700) 9",
                "",
            ]
        )
    )
    got = summarise(raw)
    assert got["buckets"] == {"LoRA ops (project)": 10, "base linear GEMMs": 20}
    assert sum(got["samples_by_thread"].values()) == 39
