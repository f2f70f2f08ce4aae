"""The appliers whose outcomes are fates, one rule at a time: the runtime hints another field of
the same manifest overrides, and the `constraints.requires` version rules (hivellm's
`name@>=1.0.0` form)."""

from __future__ import annotations

import pytest

from server.manifest.constraints import check_constraints, parse_requirement
from server.manifest.hints import CPU_ATTENTION, hints_against_engine, plan_engine
from server.manifest.schema import Runtime, parse_manifest

pytestmark = pytest.mark.unit

DEFAULTS = {"max_model_len": 2048, "enable_prefix_caching": True, "kv_cache_dtype": "auto"}


def _by_field(outcomes):
    return {o.field: o for o in outcomes}


def test_attention_kernel_beside_attention_backend_gets_its_own_outcome() -> None:
    both = Runtime(attention_backend="FLASH_ATTN", attention_kernel="sdpa")
    out = _by_field(plan_engine([("a", both)], platform="cuda", defaults=DEFAULTS).reports["a"])
    assert out["runtime.attention_backend"].honoured is True
    kernel = out["runtime.attention_kernel"]
    assert kernel.honoured is False and "overridden by runtime.attention_backend='FLASH_ATTN'" in kernel.reason
    same = Runtime(attention_backend="FLASH_ATTN", attention_kernel="flash-v2")
    out = _by_field(plan_engine([("a", same)], platform="cuda", defaults=DEFAULTS).reports["a"])
    assert out["runtime.attention_kernel"].honoured is True
    on_cpu = _by_field(plan_engine([("a", same)], platform="cpu", defaults=DEFAULTS).reports["a"])
    assert on_cpu["runtime.attention_kernel"].honoured is False
    assert on_cpu["runtime.attention_kernel"].effective == CPU_ATTENTION


def test_kv_persistence_is_not_honoured_when_the_manifest_turns_prefix_caching_off() -> None:
    runtime = Runtime(requires_kv_cache_persistence=True, prefix_caching=False)
    plan = plan_engine([("a", runtime)], platform="cpu", defaults=DEFAULTS)
    assert plan.engine_args["enable_prefix_caching"] is False
    persistence = _by_field(plan.reports["a"])["runtime.requires_kv_cache_persistence"]
    assert persistence.honoured is False and "prefix_caching: false" in persistence.reason
    on = plan_engine(
        [("a", Runtime(requires_kv_cache_persistence=True, prefix_caching=True))], platform="cpu", defaults=DEFAULTS
    )
    assert _by_field(on.reports["a"])["runtime.requires_kv_cache_persistence"].honoured is True
    loaded_later = hints_against_engine(runtime, {"enable_prefix_caching": True}, platform="cpu")
    assert _by_field(loaded_later)["runtime.requires_kv_cache_persistence"].honoured is False


def test_kv_cache_dtype_is_checked_against_the_platform_when_known() -> None:
    cpu = frozenset({"auto", "fp8", "fp8_e4m3", "fp8_e5m2"})
    bf16 = Runtime(kv_cache_dtype="bfloat16")
    plan = plan_engine([("a", bf16)], platform="cpu", defaults=DEFAULTS, kv_cache_dtypes=cpu)
    [o] = plan.reports["a"]
    assert o.honoured is False and "supports kv_cache_dtype" in o.reason
    assert plan.engine_args["kv_cache_dtype"] == "auto"  # the engine is not started with it
    fp8 = plan_engine([("a", Runtime(kv_cache_dtype="fp8"))], platform="cpu", defaults=DEFAULTS, kv_cache_dtypes=cpu)
    assert fp8.reports["a"][0].honoured is True and fp8.engine_args["kv_cache_dtype"] == "fp8"
    unknown = plan_engine([("a", Runtime(kv_cache_dtype="fp8"))], platform="cuda", defaults=DEFAULTS)
    assert "not checked against the platform" in unknown.reports["a"][0].reason
    later = hints_against_engine(bf16, {"kv_cache_dtype": "auto"}, platform="cpu", kv_cache_dtypes=cpu)
    assert later[0].honoured is False and "supports kv_cache_dtype" in later[0].reason


def test_unknown_attention_kernel_is_not_honoured_on_cuda_either() -> None:
    backends = frozenset({"FLASH_ATTN", "FLASHINFER", "CPU_ATTN"})
    plan = plan_engine(
        [("a", Runtime(attention_kernel="warp-drive"))], platform="cuda", defaults=DEFAULTS, known_backends=backends
    )
    [o] = plan.reports["a"]
    assert o.honoured is False and "unknown attention backend" in o.reason


@pytest.mark.parametrize(
    ("requirement", "version", "ok"),
    [
        ("dep", "0.0.1", True),
        ("dep@>=1.0.0", "1.0.0", True),
        ("dep@>=1.0.0", "1.2.3", True),
        ("dep@>=1.0.0", "0.9.9", False),
        ("dep@>=1.0.0", "1.0.0-rc1", False),
        ("dep@>1.0", "1.0.1", True),
        ("dep@<2.0.0", "2.0.0", False),
        ("dep@>=1.0.0,<2.0.0", "1.9.0", True),
        ("dep@>=1.0.0,<2.0.0", "2.1.0", False),
        ("dep@1.2.3", "1.2.3", True),
        ("dep@=1.2.3", "1.2.4", False),
        ("dep@^1.2.0", "1.9.0", True),
        ("dep@^1.2.0", "2.0.0", False),
        ("dep@^0.2.0", "0.3.0", False),
        ("dep@~1.2.0", "1.2.9", True),
        ("dep@~1.2.0", "1.3.0", False),
        ("dep@!=1.0.0", "1.0.0", False),
    ],
)
def test_requirement_versions(requirement: str, version: str, ok: bool) -> None:
    assert parse_requirement(requirement).allows(version) is ok


@pytest.mark.parametrize("bad", ["@>=1.0", "dep@>=one", "dep@>>1"])
def test_malformed_requirement_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_requirement(bad)
    m = parse_manifest(
        {"name": "x", "version": "1.0.0", "base_model": {"name": "b"}, "constraints": {"requires": [bad]}}
    )
    report = check_constraints(m, {}, context="test")
    assert report.findings["constraints.requires"][0] == "refused" and report.blockers


def test_constraints_against_the_loaded_experts() -> None:
    m = parse_manifest(
        {
            "name": "x",
            "version": "1.0.0",
            "base_model": {"name": "b"},
            "constraints": {"requires": ["expert-sql@>=1.0.0"], "incompatible_with": ["expert-rival"]},
        }
    )
    ok = check_constraints(m, {"expert-sql": "1.1.0"}, context="at start-up")
    assert ok.blockers == [] and ok.findings["constraints.requires"][0] == "applied"
    old = check_constraints(m, {"expert-sql": "0.2.0", "expert-rival": "1.0.0"}, context="at start-up")
    assert old.findings["constraints.requires"][0] == "refused"
    assert old.findings["constraints.incompatible_with"][0] == "refused"
    assert len(old.blockers) == 2 and "does not satisfy 'expert-sql@>=1.0.0'" in old.blockers[0]
    unchecked = check_constraints(m, None, context="")
    assert unchecked.blockers == [] and unchecked.findings["constraints.requires"][0] == "checked"


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"homepage": "example.org"}, "homepage"),
        ({"repository": {"type": "git", "url": "not a uri"}}, "repository.url"),
        ({"repository": {"type": "svn", "url": "https://example.org/r"}}, "repository.type"),
        ({"base_model": {"name": "b", "quantization": "q5"}}, "base_model.quantization"),
        ({"base_model": {"name": "b", "rope_scaling": {"type": "magic"}}}, "base_model.rope_scaling.type"),
        ({"base_model": {"name": "b", "rope_scaling": {"factor": 0.5}}}, "base_model.rope_scaling.factor"),
        ({"adapters": [{"type": "lora", "r": 512, "alpha": 16}]}, "adapters[0].r"),
        ({"adapters": [{"type": "lora", "r": 8, "alpha": 16, "scaling": "wide"}]}, "adapters[0].scaling"),
        ({"adapters": [{"type": "lora", "r": 8, "alpha": 16, "sha256": "xyz"}]}, "adapters[0].sha256"),
        ({"soft_prompts": [{"name": "a", "path": "a.safetensors", "tokens": 1024}]}, "soft_prompts[0].tokens"),
        ({"training": {"dataset": {"format": "xml"}}}, "training.dataset.format"),
        ({"training": {"config": {"method": "magic"}}}, "training.config.method"),
        ({"training": {"config": {"optim": "lion"}}}, "training.config.optim"),
        ({"training": {"config": {"lr_scheduler": "step"}}}, "training.config.lr_scheduler"),
        ({"training": {"config": {"save_strategy": "always"}}}, "training.config.save_strategy"),
        ({"training": {"trained_on": "last tuesday"}}, "training.trained_on"),
        ({"training": {"packaging_checkpoint": "best"}}, "training.packaging_checkpoint"),
        ({"constraints": {"load_order": -1}}, "constraints.load_order"),
        ({"routing": {"priority": 2}}, "routing.priority"),
    ],
)
def test_field_formats_follow_hivellm_schema(extra: dict, path: str) -> None:
    """Each field's format as hivellm's schema defines it: a value outside it is a schema error
    naming the field (exit 1 in `validate`), not a fate."""
    from server.manifest.schema import ManifestError

    data = {"name": "x", "version": "1.0.0", "base_model": {"name": "b"}, **extra}
    with pytest.raises(ManifestError) as err:
        parse_manifest(data)
    assert path in [i.field for i in err.value.issues], err.value
