"""Runtime hints (`runtime.*`) -> engine args of the engine that serves the experts.

Engine-level settings belong to an engine, not to a request. Each expert asks for some;
this module decides what the engine gets and reports, per expert and per hint, whether
it is honoured and why not. Pure: no vllm import (engine.py applies the result).

Resolution rules:
- `max_model_len`: the engine gets the largest value asked for (capped by the server's
  setting when that is larger is not needed: an expert may ask for more); each expert's own
  limit is then enforced per request, so every expert's hint is honoured.
- `attention_backend` / `attention_kernel`, `kv_cache_dtype`, `prefix_caching` /
  `requires_kv_cache_persistence`: one value per engine. The first expert in load order that
  asks decides; an expert asking for something else is told it is not honoured and why.
- On CPU every attention backend is CPU_ATTN: any other request is reported not honoured.
- A hint another field of the same manifest overrides gets its own outcome saying so:
  `attention_kernel` beside `attention_backend`, `requires_kv_cache_persistence: true`
  beside `prefix_caching` (`false` turns the cache off: not honoured).
- `kv_cache_dtype` is checked against the KV-cache dtypes of the platform's attention backend
  when the caller knows them; otherwise the outcome says it was not checked.
- These outcomes are a plan: the engine's own configuration, read back after start
  (`server/experts/probes.py`), is the evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from server.manifest.schema import Runtime

# Names used by manifests (hivellm's `attention_kernel`) mapped to vLLM backends.
ATTENTION_KERNELS = {
    "flash-v2": "FLASH_ATTN",
    "flash-v3": "FLASH_ATTN",
    "flash_attn": "FLASH_ATTN",
    "flash-attention": "FLASH_ATTN",
    "flash-attention-2": "FLASH_ATTN",
    "flashinfer": "FLASHINFER",
    "sdpa": "TORCH_SDPA",
    "triton": "TRITON_ATTN",
    "cpu": "CPU_ATTN",
}
CPU_ATTENTION = "CPU_ATTN"


@dataclass(frozen=True)
class HintRequest:
    """One engine arg an expert's manifest asks for."""

    field: str  # manifest path, e.g. runtime.attention_kernel
    engine_arg: str  # AsyncEngineArgs field
    value: Any


@dataclass(frozen=True)
class HintOutcome:
    field: str
    engine_arg: str
    requested: Any
    effective: Any
    honoured: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EnginePlan:
    """What the engine gets, and the per-expert report."""

    engine_args: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, list[HintOutcome]] = field(default_factory=dict)
    deciders: dict[str, str] = field(default_factory=dict)  # engine_arg -> expert that decided it


def requests_of(runtime: Runtime | None) -> list[HintRequest]:
    """The engine args a manifest's runtime block asks for (unknown kernels kept verbatim)."""
    if runtime is None:
        return []
    out: list[HintRequest] = []
    if runtime.attention_backend is not None:
        out.append(HintRequest("runtime.attention_backend", "attention_backend", runtime.attention_backend.upper()))
    elif runtime.attention_kernel is not None:
        kernel = runtime.attention_kernel
        out.append(
            HintRequest("runtime.attention_kernel", "attention_backend", ATTENTION_KERNELS.get(kernel.lower(), kernel))
        )
    if runtime.prefix_caching is not None:
        out.append(HintRequest("runtime.prefix_caching", "enable_prefix_caching", runtime.prefix_caching))
    elif runtime.requires_kv_cache_persistence:
        out.append(HintRequest("runtime.requires_kv_cache_persistence", "enable_prefix_caching", True))
    if runtime.kv_cache_dtype is not None:
        out.append(HintRequest("runtime.kv_cache_dtype", "kv_cache_dtype", runtime.kv_cache_dtype))
    if runtime.max_model_len is not None:
        out.append(HintRequest("runtime.max_model_len", "max_model_len", runtime.max_model_len))
    return out


def plan_engine(
    experts: list[tuple[str, Runtime | None]],
    *,
    platform: str,
    defaults: dict[str, Any],
    known_backends: frozenset[str] | None = None,
    kv_cache_dtypes: frozenset[str] | None = None,
) -> EnginePlan:
    """Resolve the hints of `experts` (already in load order) against the server defaults.

    `defaults` holds the server's own engine args (max_model_len, kv_cache_dtype,
    enable_prefix_caching, attention_backend); `known_backends` the backend names the
    installed vLLM knows (None: do not check names).
    """
    plan = EnginePlan(engine_args=dict(defaults))
    asked: dict[str, list[tuple[str, HintRequest]]] = {}
    for name, runtime in experts:
        plan.reports[name] = []
        for req in requests_of(runtime):
            asked.setdefault(req.engine_arg, []).append((name, req))

    for arg, wishes in asked.items():
        if arg == "max_model_len":
            top = max(int(r.value) for _, r in wishes)
            plan.engine_args[arg] = max(top, int(defaults.get(arg) or 0))
            for name, r in wishes:
                plan.reports[name].append(
                    HintOutcome(
                        r.field,
                        arg,
                        r.value,
                        r.value,
                        True,
                        f"engine context {plan.engine_args[arg]}; this expert's requests are limited to {r.value}",
                    )
                )
            continue
        decider_name, decider = wishes[0]
        value = decider.value
        if arg == "attention_backend":
            if known_backends is not None and value not in known_backends:
                for name, r in wishes:
                    plan.reports[name].append(
                        HintOutcome(
                            r.field,
                            arg,
                            r.value,
                            defaults.get(arg) or "default",
                            False,
                            f"unknown attention backend {r.value!r}",
                        )
                    )
                continue
            if platform == "cpu" and value != CPU_ATTENTION:
                for name, r in wishes:
                    plan.reports[name].append(
                        HintOutcome(
                            r.field,
                            arg,
                            r.value,
                            CPU_ATTENTION,
                            False,
                            f"on CPU every attention backend is {CPU_ATTENTION}",
                        )
                    )
                continue
        if arg == "kv_cache_dtype" and kv_cache_dtypes is not None and value not in kv_cache_dtypes:
            for name, r in wishes:
                plan.reports[name].append(
                    HintOutcome(
                        r.field,
                        arg,
                        r.value,
                        defaults.get(arg) or "auto",
                        False,
                        f"the {platform} attention backend supports kv_cache_dtype {sorted(kv_cache_dtypes)}",
                    )
                )
            continue
        plan.engine_args[arg] = value
        plan.deciders[arg] = decider_name
        unchecked = arg == "kv_cache_dtype" and kv_cache_dtypes is None
        for name, r in wishes:
            if r.value == value:
                reason = "engine arg set" + ("; not checked against the platform" if unchecked else "")
                plan.reports[name].append(HintOutcome(r.field, arg, r.value, value, True, reason))
            else:
                plan.reports[name].append(
                    HintOutcome(
                        r.field,
                        arg,
                        r.value,
                        value,
                        False,
                        f"conflicts with expert {decider_name!r}, first in load order, which set {value!r}",
                    )
                )
    runtimes = dict(experts)
    for name in plan.reports:
        plan.reports[name] += shadowed(runtimes.get(name), plan.reports[name])
    return plan


def shadowed(runtime: Runtime | None, outcomes: list[HintOutcome]) -> list[HintOutcome]:
    """Outcomes of the hints another field of the same runtime block overrides (see the module
    docstring); `outcomes` are those of the fields that decide."""
    if runtime is None:
        return []
    by_field = {o.field: o for o in outcomes}
    out: list[HintOutcome] = []
    backend = by_field.get("runtime.attention_backend")
    if runtime.attention_kernel is not None and backend is not None:
        mapped = ATTENTION_KERNELS.get(runtime.attention_kernel.lower(), runtime.attention_kernel)
        if mapped == backend.requested:
            out.append(
                HintOutcome(
                    "runtime.attention_kernel",
                    "attention_backend",
                    mapped,
                    backend.effective,
                    backend.honoured,
                    f"same backend as runtime.attention_backend: {backend.reason}",
                )
            )
        else:
            out.append(
                HintOutcome(
                    "runtime.attention_kernel",
                    "attention_backend",
                    mapped,
                    backend.effective,
                    False,
                    f"overridden by runtime.attention_backend={backend.requested!r}",
                )
            )
    prefix = by_field.get("runtime.prefix_caching")
    if runtime.requires_kv_cache_persistence and prefix is not None:
        on = bool(prefix.effective) and prefix.honoured and bool(runtime.prefix_caching)
        out.append(
            HintOutcome(
                "runtime.requires_kv_cache_persistence",
                "enable_prefix_caching",
                True,
                prefix.effective,
                on,
                f"as runtime.prefix_caching: {prefix.reason}"
                if on
                else "runtime.prefix_caching: false in this manifest turns prefix caching off"
                if runtime.prefix_caching is False
                else f"prefix caching is off: {prefix.reason}",
            )
        )
    return out


def engine_wide_diff(old: Runtime | None, new: Runtime | None) -> dict[str, tuple[Any, Any]]:
    """Engine args whose request differs between two versions of one expert's runtime block."""
    before = {r.engine_arg: r.value for r in requests_of(old)}
    after = {r.engine_arg: r.value for r in requests_of(new)}
    return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}


def hints_against_engine(
    runtime: Runtime | None,
    engine_args: dict[str, Any],
    *,
    platform: str,
    kv_cache_dtypes: frozenset[str] | None = None,
) -> list[HintOutcome]:
    """Report for an expert loaded into a running engine: its hints are honoured where the
    engine already has what they ask for; changing an engine arg needs a restart."""
    out: list[HintOutcome] = []
    for r in requests_of(runtime):
        have = engine_args.get(r.engine_arg)
        if r.engine_arg == "max_model_len":
            ok = have is None or int(r.value) <= int(have)
            out.append(
                HintOutcome(
                    r.field,
                    r.engine_arg,
                    r.value,
                    r.value if ok else have,
                    ok,
                    "within the engine's context" if ok else f"the engine's context is {have}; restart to raise it",
                )
            )
        elif r.engine_arg == "attention_backend" and platform == "cpu" and r.value != CPU_ATTENTION:
            out.append(
                HintOutcome(
                    r.field,
                    r.engine_arg,
                    r.value,
                    CPU_ATTENTION,
                    False,
                    f"on CPU every attention backend is {CPU_ATTENTION}",
                )
            )
        elif r.engine_arg == "kv_cache_dtype" and kv_cache_dtypes is not None and r.value not in kv_cache_dtypes:
            out.append(
                HintOutcome(
                    r.field,
                    r.engine_arg,
                    r.value,
                    have if have is not None else "auto",
                    False,
                    f"the {platform} attention backend supports kv_cache_dtype {sorted(kv_cache_dtypes)}",
                )
            )
        elif have == r.value:
            out.append(HintOutcome(r.field, r.engine_arg, r.value, have, True, "engine arg set"))
        else:
            out.append(
                HintOutcome(
                    r.field,
                    r.engine_arg,
                    r.value,
                    have if have is not None else "default",
                    False,
                    "the running engine was started with another value; changing it needs a restart",
                )
            )
    return out + shadowed(runtime, out)
