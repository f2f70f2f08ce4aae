"""Probes on the running engine: each behavioural claim of an expert's field fates, shown.

Run when an expert loads (start-up, reload, the folder watcher; off with
`EXPERT_PROBE_ON_LOAD=false`) and by `expert validate --prove`. Each probe is a short greedy
generation on a fixed prompt; its result is the `evidence` of the fields it covers, keyed by
field path (an entry path such as `base_models[0].adapters[0]` covers all its fields):

- adapter: the first token's top log-probabilities with the adapter against the base model;
  an adapter that changes nothing is refused (the expert is not served);
- each soft prompt: the same, prepended against `none` (with the adapter in both);
- grammar: a short constrained sample is accepted by the grammar (xgrammar's matcher), and
  an unconstrained sample is shown beside it;
- each stop sequence (up to MAX_STOP_PROBES): a generation forced by a grammar to write
  `X<stop>Y` ends with `X` and finish reason `stop`;
- `max_tokens` (up to MAX_TOKENS_PROBE): a generation that cannot end sooner stops after
  exactly that many tokens;
- runtime hints: the value the running engine was configured with (its `vllm_config`),
  compared with what the hint's outcome says.

`ok` is True (shown), False (the claim is false: the field is refused and, where it changes
what users get, the expert not served) or None (not probed, with the reason). Budget: about
15 s per expert on 2 CPU cores (see README: measured).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.engine.vllm_engine import LoRAHandle
from server.manifest.grammar import copies_input
from server.manifest.hints import HintOutcome
from server.manifest.sampling import Grammar
from server.manifest.schema import Manifest

log = logging.getLogger("expert_gateway.probes")

PROBE_MESSAGES = [{"role": "user", "content": "Name three colours."}]


def _probe_text() -> str:
    return "\n".join(m["content"] for m in PROBE_MESSAGES if m["role"] == "user")


TOP_LOGPROBS = 20
MIN_CHANGE = 1e-3  # largest log-probability change below which nothing changed
GRAMMAR_SAMPLE_TOKENS = 12
MAX_STOP_PROBES = 4
MAX_TOKENS_PROBE = 64
_ids = itertools.count(1)


@dataclass
class ProbeSubject:
    """What is probed: one expert version, as loaded."""

    manifest: Manifest
    adapter_path: str | None  # field path of the served adapter entry, e.g. base_models[0].adapters[0]
    lora: LoRAHandle | None
    soft_prompts: Mapping[str, Any]  # name -> tensor, in manifest order
    grammar_field: str | None = None  # training.decoding.grammar_file / grammar_type
    grammar: str | None = None  # GBNF text, or None
    json_object: bool = False
    tokenizer_dir: Path | None = None
    hints: list[HintOutcome] = field(default_factory=list)


@dataclass
class ProbeReport:
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    blockers: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _change(a: dict[int, float], b: dict[int, float]) -> tuple[float, bool]:
    """Largest log-probability change over the tokens both top lists hold (tokens in only one
    list count as changed by more than MIN_CHANGE), and whether the top token differs."""
    shared = set(a) & set(b)
    delta = max((abs(a[t] - b[t]) for t in shared), default=0.0)
    if set(a) != set(b):
        delta = max(delta, math.inf if not shared else MIN_CHANGE * 10)
    top_a = max(a, key=a.get) if a else None  # type: ignore[arg-type]
    top_b = max(b, key=b.get) if b else None  # type: ignore[arg-type]
    return delta, top_a != top_b


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


async def probe_expert(engine: Any, prompts: Any, subject: ProbeSubject) -> ProbeReport:
    """Run every probe that applies to `subject` on `engine` (a VLLMEngine); never raises for
    a failed claim, only reports it."""
    start = time.perf_counter()
    m = subject.manifest
    report = ProbeReport()
    template = m.bases()[0][0].prompt_template if m.bases() else None
    ids = prompts.render(PROBE_MESSAGES, template, m.capabilities)

    async def run(**kwargs: Any) -> dict[str, Any]:
        return await engine.probe(f"probe-{m.name}-{next(_ids)}", **kwargs)

    base = await run(prompt_token_ids=ids, logprobs=TOP_LOGPROBS)
    lora = subject.lora
    with_adapter: dict[str, Any] = base
    if lora is not None and subject.adapter_path is not None:
        with_adapter = await run(prompt_token_ids=ids, logprobs=TOP_LOGPROBS, lora=lora)
        delta, top = _change(base["logprobs"], with_adapter["logprobs"])
        ok = delta > MIN_CHANGE
        report.evidence[subject.adapter_path] = {
            "probe": "next-token log-probabilities, adapter vs base model, fixed prompt",
            "ok": ok,
            "max_logprob_change": round(delta, 6) if math.isfinite(delta) else "top tokens differ",
            "top_token_changed": top,
            "summary": f"the adapter moves the next-token log-probabilities by up to {delta:.4g}"
            if ok
            else "the adapter leaves the next-token log-probabilities unchanged",
        }
        if not ok:
            report.blockers.append(
                f"{subject.adapter_path}: the adapter changes nothing on the engine (next-token log-probabilities "
                "equal to the base model's)"
            )
    reference = base  # soft prompts are compared with `none`, the adapter on in both
    if lora is not None and subject.soft_prompts:
        reference = (
            with_adapter
            if subject.adapter_path is not None
            else await run(prompt_token_ids=ids, logprobs=TOP_LOGPROBS, lora=lora)
        )
    for i, (name, tensor) in enumerate(subject.soft_prompts.items()):
        out = await run(prompt_embeds=prompts.embeds(tensor, ids), logprobs=TOP_LOGPROBS, lora=lora)
        delta, top = _change(reference["logprobs"], out["logprobs"])
        ok = delta > MIN_CHANGE
        report.evidence[f"soft_prompts[{i}]"] = {
            "probe": f"next-token log-probabilities, soft prompt {name!r} vs none, fixed prompt",
            "ok": ok,
            "max_logprob_change": round(delta, 6) if math.isfinite(delta) else "top tokens differ",
            "top_token_changed": top,
            "summary": f"soft prompt {name!r} moves them by up to {delta:.4g}"
            if ok
            else f"soft prompt {name!r} leaves them unchanged",
        }
        if not ok:
            report.blockers.append(f"soft_prompts[{i}]: soft prompt {name!r} changes nothing on the engine")
    if subject.grammar_field is not None and (subject.grammar is not None or subject.json_object):
        report.evidence[subject.grammar_field] = await _grammar_probe(run, ids, lora, subject)
        if report.evidence[subject.grammar_field]["ok"] is False:
            report.blockers.append(f"{subject.grammar_field}: {report.evidence[subject.grammar_field]['summary']}")
    d = m.decoding
    if d.stop_sequences:
        report.evidence["training.decoding.stop_sequences"] = await _stop_probe(run, ids, lora, d.stop_sequences)
    if d.max_tokens is not None:
        report.evidence["training.decoding.max_tokens"] = await _max_tokens_probe(run, ids, lora, d.max_tokens)
    if subject.hints:
        report.evidence.update(_readback(engine.engine_config(), subject.hints))
    report.seconds = round(time.perf_counter() - start, 3)
    return report


async def _grammar_probe(run: Any, ids: list[int], lora: LoRAHandle | None, subject: ProbeSubject) -> dict[str, Any]:
    import xgrammar

    from server.manifest.grammar import _compiler

    if subject.tokenizer_dir is None:
        return {"probe": "constrained sample", "ok": None, "summary": "no tokenizer to check the sample with"}
    compiler = _compiler(str(subject.tokenizer_dir))
    compiled = (
        compiler.compile_grammar(subject.grammar)
        if subject.grammar is not None
        else compiler.compile_builtin_json_grammar()
    )
    constrained = await run(
        prompt_token_ids=ids,
        lora=lora,
        max_tokens=GRAMMAR_SAMPLE_TOKENS,
        grammar=subject.grammar,
        json_object=subject.grammar is None,
    )
    free = await run(prompt_token_ids=ids, lora=lora, max_tokens=GRAMMAR_SAMPLE_TOKENS)

    def parses(text: str) -> bool:
        matcher = xgrammar.GrammarMatcher(compiled)
        return bool(matcher.accept_string(text)) if text else True

    ok = parses(constrained["text"])
    return {
        "probe": f"{GRAMMAR_SAMPLE_TOKENS}-token greedy sample, constrained and not, checked with xgrammar's matcher",
        "ok": ok,
        "sample": constrained["text"],
        "sample_parses": ok,
        "unconstrained_sample": free["text"],
        "unconstrained_parses": parses(free["text"]),
        "summary": "the constrained sample is accepted by the grammar"
        if ok
        else "the constrained sample is not accepted by the grammar",
    }


async def _stop_probe(run: Any, ids: list[int], lora: LoRAHandle | None, stops: list[str]) -> dict[str, Any]:
    results = []
    for stop in stops[:MAX_STOP_PROBES]:
        grammar = f"root ::= {_literal('Z')} {_literal(stop)} {_literal('Q')}"
        out = await run(prompt_token_ids=ids, lora=lora, max_tokens=len(stop) + 8, stop=list(stops), grammar=grammar)
        cut = out["text"] == "Z" and out["finish_reason"] == "stop"
        results.append({"stop": stop, "output": out["text"], "finish_reason": out["finish_reason"], "cut": cut})
    ok = all(r["cut"] for r in results)
    more = len(stops) - len(results)
    return {
        "probe": "generation forced to write 'Z<stop>Q' by a grammar, with the expert's stop sequences",
        "ok": ok,
        "results": results,
        "summary": ("each stop sequence ends the output before it" if ok else "a stop sequence did not cut the output")
        + (f"; {more} more not probed" if more > 0 else ""),
    }


async def _max_tokens_probe(run: Any, ids: list[int], lora: LoRAHandle | None, max_tokens: int) -> dict[str, Any]:
    if max_tokens > MAX_TOKENS_PROBE:
        return {
            "probe": "generation that cannot end before max_tokens",
            "ok": None,
            "summary": f"not probed: {max_tokens} tokens are over the probe budget of {MAX_TOKENS_PROBE}",
        }
    out = await run(prompt_token_ids=ids, lora=lora, max_tokens=max_tokens, grammar='root ::= "a" root')
    ok = len(out["token_ids"]) == max_tokens and out["finish_reason"] == "length"
    return {
        "probe": "generation that cannot end before max_tokens (a grammar with no end)",
        "ok": ok,
        "tokens": len(out["token_ids"]),
        "finish_reason": out["finish_reason"],
        "summary": f"the output stops after {len(out['token_ids'])} tokens ({out['finish_reason']})",
    }


def _readback(config: dict[str, Any], hints: list[HintOutcome]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for h in hints:
        running = config.get(h.engine_arg)
        if h.engine_arg == "max_model_len":
            ok = running is not None and int(h.effective) <= int(running) if h.honoured else True
        else:
            ok = running == h.effective if h.honoured else running != h.requested
        out[h.field] = {
            "probe": "the running engine's configuration (vllm_config)",
            "ok": ok,
            "engine": {h.engine_arg: running},
            "summary": f"the engine runs with {h.engine_arg}={running!r}",
        }
    return out


def adapter_field(m: Manifest, adapter: Any) -> str | None:
    """Field path of `adapter` (an entry of `m`), e.g. `base_models[0].adapters[0]`."""
    for bi, (_, adapters) in enumerate(m.bases()):
        for ai, a in enumerate(adapters):
            if a is adapter:
                return f"base_models[{bi}].adapters[{ai}]" if m.schema_version == "2.0" else f"adapters[{ai}]"
    return None


def subject_of(
    m: Manifest,
    *,
    adapter: Any,
    lora: LoRAHandle | None,
    soft_prompts: Mapping[str, Any],
    grammar_kind: str | None,
    grammar_text: str | None,
    tokenizer_dir: Path | None,
    hints: list[HintOutcome],
) -> ProbeSubject:
    """The probe subject of an expert as the loader (or `validate --prove`) loaded it."""
    field_name = None
    if grammar_kind == "json" or (grammar_kind == "gbnf" and grammar_text is not None):
        field_name = "training.decoding.grammar_file" if m.decoding.grammar_file else "training.decoding.grammar_type"
    return ProbeSubject(
        manifest=m,
        adapter_path=adapter_field(m, adapter) if lora is not None else None,
        lora=lora,
        soft_prompts=soft_prompts,
        grammar_field=field_name,
        # a grammar that copies from the request's text copies from the probe's prompt
        grammar=Grammar(grammar_text, copies_input=copies_input(grammar_text)).for_text(_probe_text()).text
        if grammar_kind == "gbnf" and grammar_text is not None
        else None,
        json_object=grammar_kind == "json",
        tokenizer_dir=tokenizer_dir,
        hints=list(hints),
    )
