"""The sampling record is the one place sampling fields are named: every model, table and
mapping derived from it covers exactly its fields, and its ranges and rules hold in both the
request and the manifest."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from server.api import protocol
from server.api.protocol import ChatCompletionRequest
from server.manifest.fates import field_fates
from server.manifest.sampling import (
    FIELD_NAMES,
    FIELDS,
    MANIFEST_FIELDS,
    SERVER_DEFAULTS,
    Grammar,
    JsonObject,
    JsonSchema,
    Sampling,
    expert_defaults,
    header_value,
    request_field,
    resolve,
)
from server.manifest.schema import Decoding, parse_manifest

pytestmark = pytest.mark.unit

# training.decoding keys that are not sampling values.
DECODING_OTHER = {"use_grammar", "grammar_type", "grammar_file", "validation", "validation_cmd"}
Q = [{"role": "user", "content": "hi"}]


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": Q, **fields})


def manifest_with_decoding(decoding: dict[str, Any]) -> dict[str, Any]:
    return {"name": "x", "version": "1.0.0", "base_model": {"name": "b"}, "training": {"decoding": decoding}}


def test_the_record_the_table_and_the_server_defaults_name_the_same_fields() -> None:
    record = tuple(f.name for f in dataclasses.fields(Sampling))
    assert FIELD_NAMES == record == tuple(SERVER_DEFAULTS)
    assert len(FIELD_NAMES) == len(set(FIELD_NAMES))
    assert {f.name: f.to_wire(f.default) for f in FIELDS} == SERVER_DEFAULTS


def _request_models() -> list[type[BaseModel]]:
    """Every request model of the wire protocol that carries sampling values."""
    found = [
        cls
        for cls in vars(protocol).values()
        if isinstance(cls, type) and issubclass(cls, BaseModel) and hasattr(cls, "sampling_fields")
    ]
    assert ChatCompletionRequest in found
    return found


@pytest.mark.parametrize("model", _request_models(), ids=lambda m: m.__name__)
def test_each_request_model_has_the_tables_fields_with_the_tables_ranges(model: type[BaseModel]) -> None:
    fields = model.model_fields
    assert set(FIELD_NAMES) <= set(fields), "a table field is missing from the request model"
    for name in FIELD_NAMES:
        assert fields[name].default is None, f"{name}: unset must be None"
        assert fields[name].metadata == request_field(name).metadata, f"{name}: range not the table's"
    # a request field that vLLM's SamplingParams takes is a sampling value: it belongs in the table,
    # except the per-request outputs and biases no manifest can default (passed through as they are)
    request_only = {"logprobs", "logit_bias"}
    assert set(fields) & _sampling_params_fields() <= set(FIELD_NAMES) | request_only


def test_the_chat_request_gives_every_table_field_to_resolve() -> None:
    assert tuple(request().sampling_fields()) == FIELD_NAMES
    assert request(temperature=0.0).sampling_fields()["temperature"] == 0.0


def test_the_decoding_model_has_exactly_the_tables_manifest_fields() -> None:
    fields = set(Decoding.model_fields)
    assert fields - DECODING_OTHER == set(MANIFEST_FIELDS), "a sampling field is in Decoding or the table only"
    assert [f.manifest for f in FIELDS if f.manifest] == list(MANIFEST_FIELDS)
    assert {f.name for f in FIELDS if f.manifest is None} == {"n"}  # a manifest cannot ask for n choices


def test_the_header_and_the_sampling_params_kwargs_cover_every_field() -> None:
    out = resolve({}, {})
    assert tuple(json.loads(header_value(out))) == FIELD_NAMES
    assert set(out.sampling.to_sampling_params_kwargs()) == {f.vllm for f in FIELDS}


def _sampling_params_fields() -> set[str]:
    """The fields vLLM's SamplingParams declares, read from the installed source (no vllm import)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm is not installed")
    source = Path(spec.origin).parent / "sampling_params.py"
    tree = ast.parse(source.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SamplingParams"]
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def test_every_vllm_name_is_a_sampling_params_field() -> None:
    declared = _sampling_params_fields()
    assert {f.vllm for f in FIELDS} <= declared


def test_sampling_params_kwargs_carry_the_values_and_vllms_none_for_no_stops() -> None:
    s = Sampling(temperature=0.0, top_k=20, max_tokens=7, seed=3, stop=(";",), n=2)
    kwargs = s.to_sampling_params_kwargs()
    assert kwargs["temperature"] == 0.0 and kwargs["top_k"] == 20 and kwargs["max_tokens"] == 7
    assert kwargs["seed"] == 3 and kwargs["n"] == 2
    assert kwargs["stop"] == [";"]
    assert Sampling().to_sampling_params_kwargs()["stop"] is None


def _outside(f_bounds: dict[str, float], integer: bool) -> list[tuple[float, bool]]:
    """(value, accepted) pairs at and just beyond each bound."""
    step = 1 if integer else 0.01
    cases: list[tuple[float, bool]] = []
    for kind, bound in f_bounds.items():
        if kind == "ge":
            cases += [(bound, True), (bound - step, False)]
        elif kind == "gt":
            cases += [(bound, False), (bound + step, True)]
        elif kind == "le":
            cases += [(bound, True), (bound + step, False)]
    return cases


@pytest.mark.parametrize("spec", [f for f in FIELDS if f.bounds], ids=lambda f: f.name)
def test_each_range_holds_in_the_request_and_the_manifest(spec: Any) -> None:
    integer = isinstance(spec.default, int) and not isinstance(spec.default, bool)
    for value, accepted in _outside(dict(spec.bounds), integer):
        v = int(value) if integer else value
        if accepted:
            assert getattr(request(**{spec.name: v}), spec.name) == v
        else:
            with pytest.raises(ValidationError):
                request(**{spec.name: v})
        if spec.manifest is None:
            continue
        if accepted:
            assert getattr(Decoding(**{spec.manifest: v}), spec.manifest) == v
        else:
            with pytest.raises(ValidationError):
                Decoding(**{spec.manifest: v})


@pytest.mark.parametrize("value", [0, -2])
def test_top_k_rule_holds_in_the_request_and_the_manifest(value: int) -> None:
    with pytest.raises(ValidationError, match="-1 for no limit"):
        request(top_k=value)
    with pytest.raises(ValidationError, match="-1 for no limit"):
        Decoding(top_k=value)
    assert request(top_k=-1).top_k == -1 and Decoding(top_k=-1).top_k == -1


def test_stop_rules_in_the_request_and_the_manifest() -> None:
    assert request(stop=";").stop == [";"]
    with pytest.raises(ValidationError, match="non-empty"):
        request(stop=[""])
    with pytest.raises(ValidationError, match="up to 16"):
        request(stop=[str(i) for i in range(17)])
    with pytest.raises(ValidationError, match="non-empty"):
        Decoding(stop_sequences=[""])
    assert len(Decoding(stop_sequences=[str(i) for i in range(17)]).stop_sequences or []) == 17


def test_max_completion_tokens_has_the_range_of_max_tokens_and_wins() -> None:
    with pytest.raises(ValidationError):
        request(max_completion_tokens=0)
    assert request(max_tokens=5, max_completion_tokens=9).sampling_fields()["max_tokens"] == 9


def test_every_manifest_sampling_field_is_an_expert_default() -> None:
    values = {"temperature": 0.5, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1}
    values |= {"presence_penalty": 0.2, "frequency_penalty": 0.3, "max_tokens": 9, "seed": 1, "stop_sequences": [";"]}
    assert set(values) == set(MANIFEST_FIELDS)
    defaults = expert_defaults(Decoding(**values))
    assert set(defaults) == {f.name for f in FIELDS if f.manifest}
    assert defaults["stop"] == [";"]
    out = resolve({}, defaults)
    assert all(out[f.name].source == "manifest" for f in FIELDS if f.manifest)
    assert out["n"].source == "server"


def test_sampling_fields_get_the_sampling_fate_and_other_decoding_fields_do_not() -> None:
    values: dict[str, Any] = dict.fromkeys(MANIFEST_FIELDS, 1)
    values["stop_sequences"] = [";"]
    values |= {"use_grammar": True, "grammar_type": "json", "validation": "json", "validation_cmd": "true"}
    raw = manifest_with_decoding(values)
    fates = {f.field: f for f in field_fates(raw, parse_manifest(raw))}
    sampling_detail = fates["training.decoding.temperature"].detail
    assert "SamplingParams" in sampling_detail
    for name in MANIFEST_FIELDS:
        assert (fates[f"training.decoding.{name}"].fate, fates[f"training.decoding.{name}"].detail) == (
            "applied",
            sampling_detail,
        )
    for name in DECODING_OTHER - {"grammar_file"}:
        assert fates[f"training.decoding.{name}"].detail != sampling_detail


def test_resolve_gives_a_typed_frozen_record_and_a_cut_keeps_its_source() -> None:
    out = resolve({"stop": ["x"], "max_tokens": 100}, {"temperature": 0.2})
    assert out.sampling.stop == ("x",) and out["stop"].value == ["x"]
    assert out.sampling.temperature == 0.2 and out.sources["temperature"] == "manifest"
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.sampling.temperature = 1.0  # type: ignore[misc]
    cut = out.with_value("max_tokens", 10)
    assert (cut["max_tokens"].value, cut["max_tokens"].source) == (10, "request")
    assert out["max_tokens"].value == 100  # the original is unchanged
    with pytest.raises(KeyError):
        out["stop_sequences"]


def test_structured_outputs_are_typed_and_map_to_vllms_fields() -> None:
    assert (JsonObject().kind, JsonObject().to_structured_outputs_kwargs()) == ("json_object", {"json_object": True})
    schema = {"type": "object"}
    assert (JsonSchema(schema).kind, JsonSchema(schema).to_structured_outputs_kwargs()) == (
        "json_schema",
        {"json": schema},
    )
    assert (Grammar("root ::= x").kind, Grammar("root ::= x").to_structured_outputs_kwargs()) == (
        "grammar",
        {"grammar": "root ::= x"},
    )


def test_structured_output_keywords_are_fields_of_vllms_structured_outputs_params() -> None:
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm is not installed")
    tree = ast.parse((Path(spec.origin).parent / "sampling_params.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StructuredOutputsParams"]
    declared = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    for constraint in (JsonObject(), JsonSchema({}), Grammar("root ::= x")):
        assert set(constraint.to_structured_outputs_kwargs()) <= declared
