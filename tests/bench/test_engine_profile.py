"""bench/engine_profile.py: py-spy's raw stacks charged to parts of the engine."""

from __future__ import annotations

import pytest

from bench.engine_profile import CORE_BUCKETS, OTHER, bucket_of, summarise, write_markdown

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


def _workload(lora_ms: float, total: float) -> dict:
    return {
        "tokens_per_s": 30.0,
        "itl_p50_ms": 150.0,
        "engine_busy_share": 0.9,
        "engine_ms_per_token": total,
        "ms_per_token": {"base linear GEMMs": 20.0, "LoRA ops (project)": lora_ms},
        "failures": 0,
    }


def _render(tmp_path, workloads: dict) -> str:
    """profile.md for these workloads (the other fields as a run writes them)."""
    res = {
        "command": "python -m bench.engine_profile --workloads sp-on,sp-none",
        "date": "today",
        "machine": {"cpu_model": "cpu", "cores": 2},
        "dtype": "float32",
        "lora_ops": "project",
        "reps": 2,
        "window_s": 20.0,
        "workloads": workloads,
    }
    out = tmp_path / "profile.md"
    write_markdown(res, out)
    return out.read_text()


def test_the_table_has_a_difference_column_for_each_pair_of_workloads_run(tmp_path):
    text = _render(tmp_path, {"sp-none": _workload(2.0, 30.0), "sp-on": _workload(2.5, 31.5)})
    assert "| part | sp-on | sp-none | sp-on − sp-none |" in text
    assert "| LoRA ops (project) | 2.50 | 2.00 | +0.50 |" in text
    assert "| **engine, all parts** | **31.50** | **30.00** | **+1.50** |" in text
    assert "mixed − base" not in text
    assert "engine-core process" not in text  # not sampled: no table for it


def test_the_engine_core_gets_its_own_table_when_it_was_sampled(tmp_path):
    on, none = _workload(2.5, 31.5), _workload(2.0, 30.0)
    on["engine_core_ms_per_token"], none["engine_core_ms_per_token"] = 6.0, 4.0
    on["engine_core_ms_per_token_by_part"] = {"scheduler": 4.0, "serialisation": 2.0}
    none["engine_core_ms_per_token_by_part"] = {"scheduler": 3.5, "serialisation": 0.5}
    text = _render(tmp_path, {"sp-none": none, "sp-on": on})
    assert "The engine-core process (vLLM's scheduler, beside the worker)" in text
    assert "| serialisation | 2.00 | 0.50 | +1.50 |" in text
    assert "| **engine core, all** | 6.00 | 4.00 | +2.00 |" in text


def test_engine_core_samples_go_to_the_core_buckets(tmp_path):
    raw = tmp_path / "core.txt"
    loop = "EngineCoreProc.run_busy_loop (vllm/v1/engine/core.py:900)"
    sched = "Scheduler.schedule (vllm/v1/core/sched/scheduler.py:300)"
    enc = "MsgpackEncoder.encode (vllm/v1/serial_utils.py:120)"
    raw.write_text(f"process;{loop};{sched} 5\nprocess;{loop};{enc} 3\nprocess;{loop} 2\n")
    got = summarise(raw, CORE_BUCKETS)["buckets"]
    assert got == {"scheduler": 5, "serialisation": 3, "engine-core loop, outputs": 2}
