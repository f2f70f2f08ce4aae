"""`expert validate --prove`: validate, then start the engine on the served base model, load
the expert (adapter, soft prompts, grammar) and run the probes of server/experts/probes.py;
their results become the fields' `evidence`, and a failed probe makes the field refused (and,
for the adapter, a soft prompt or the grammar, the expert not servable)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from server.experts.probes import probe_expert, subject_of
from server.manifest.artifacts import ArtifactReport
from server.manifest.validate import ValidationResult
from server.settings import Settings

log = logging.getLogger("expert_gateway.prove")


def prove(result: ValidationResult, settings: Settings, model_path: str) -> ValidationResult:
    """Run the probes for a valid expert and fold their evidence into `result`."""
    if not result.valid or result.manifest is None or not result.parts:
        return result
    report: ArtifactReport = result.parts["artifacts"]
    if any("base model not served here" in r for r in report.blockers):
        return result  # nothing to probe on this base model
    evidence, blockers, seconds = asyncio.run(_probe(result, settings, model_path))
    result.add_evidence(evidence, blockers)
    result.probed = True
    result.probe_seconds = seconds
    return result


async def _probe(
    result: ValidationResult, settings: Settings, model_path: str
) -> tuple[dict[str, Any], list[str], float]:
    from server.engine.prompts import PromptBuilder
    from server.engine.vllm_engine import LoRAHandle, VLLMEngine, configure_cpu_environment
    from server.manifest.artifacts import grammar_location, manifest_location
    from server.settings import detect_platform

    m = result.manifest
    assert m is not None
    report: ArtifactReport = result.parts["artifacts"]
    if detect_platform(settings) == "cpu":
        configure_cpu_environment()
    hints = result.parts["hints"]
    args: dict[str, Any] = {
        "dtype": settings.engine_dtype(detect_platform(settings)),
        "max_model_len": settings.max_model_len,
        "enable_lora": True,
        "max_loras": 1,
        "max_cpu_loras": 1,
        "max_lora_rank": settings.max_lora_rank,
        "enable_prompt_embeds": True,
        "enforce_eager": settings.enforce_eager,
        "max_num_seqs": 8,
    }
    for h in hints:
        if h.honoured:
            args[h.engine_arg] = (
                max(int(h.effective), args["max_model_len"]) if h.engine_arg == "max_model_len" else h.effective
            )
    engine = await asyncio.to_thread(VLLMEngine.start, model_path, settings.served_model_name, args)
    try:
        prompts = await asyncio.to_thread(PromptBuilder, model_path)
        root, manifest_file = manifest_location(Path(result.path))
        lora = None
        if report.adapter is not None and report.adapter_dir is not None and report.adapter.type == "lora":
            lora = LoRAHandle(f"{m.name}@{m.version}#prove", 1, str(report.adapter_dir))
            await engine.add_lora(lora)
        soft = report.soft_prompts  # read and checked once, by the artifact check
        kind, _ = grammar_location(root, manifest_file, m)
        subject = subject_of(
            m,
            adapter=report.adapter,
            lora=lora,
            soft_prompts=soft,
            grammar_kind=kind,
            grammar_text=report.grammar_text,
            tokenizer_dir=Path(model_path),
            hints=list(hints),
        )
        probes = await probe_expert(engine, prompts, subject)
        log.info("probes of %s took %.2f s", m.name, probes.seconds)
        return probes.evidence, probes.blockers, probes.seconds
    finally:
        engine.shutdown()
