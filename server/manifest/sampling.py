"""Sampling: the one record of sampling fields, and everything derived from it.

`Sampling` is the typed record of the values one generation runs with. Each of its fields
carries, once, its value range, its server default (`Sampling()` holds the server's
defaults), its name in a manifest's `training.decoding` (if a manifest may set it) and its
name in vLLM's `SamplingParams`. Derived from it, and from nowhere else:

- `FIELDS`: the table of `SamplingField` specs, in the record's order;
- `SERVER_DEFAULTS` and `expert_defaults(decoding)`: the server's and an expert's values;
- `request_field`/`request_rules` and `manifest_field`/`manifest_rules`: the pydantic
  constraints of the chat request and of the manifest's `Decoding` model;
- `MANIFEST_FIELDS`: the `training.decoding` keys whose fate is "sampling default";
- `resolve`: request over expert (manifest) over server, each value with its source;
- `header_value`: the `X-Expert-Sampling` header;
- `Sampling.to_sampling_params_kwargs`: the keyword arguments of vLLM's `SamplingParams`.

`resolve` decides every value with `is None` tests (0.0 is a value, not "unset") and returns
a new object; nothing shared is mutated.

Structured-output constraints (`JsonObject`, `JsonSchema`, `Grammar`) are typed values that
say how they reach vLLM's `StructuredOutputsParams`.

This module imports neither fastapi, torch nor vllm.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field as PydanticField
from pydantic import ValidationInfo, field_validator

from server.manifest import input_spans

if TYPE_CHECKING:
    from server.manifest.schema import Decoding

Source = Literal["request", "manifest", "server"]
Rule = Callable[[Any], Any]

# A request may send at most this many stop sequences (a manifest is not limited).
MAX_REQUEST_STOPS = 16


MAX_TOP_K = 2**31 - 1  # vLLM keeps top_k in 32-bit tensors


def check_top_k(v: int | None) -> int | None:
    """top_k is >= 1, or -1 for no limit (vLLM's convention)."""
    if v is not None and v != -1 and v < 1:
        raise ValueError("top_k must be >= 1, or -1 for no limit")
    if v is not None and v > MAX_TOP_K:
        raise ValueError(f"top_k must be at most {MAX_TOP_K}")
    return v


def check_request_stops(v: str | list[str] | None) -> list[str] | None:
    """A request's `stop`: one string or a list, up to MAX_REQUEST_STOPS non-empty strings."""
    if v is None:
        return None
    stops = [v] if isinstance(v, str) else v
    if len(stops) > MAX_REQUEST_STOPS or any(not s for s in stops):
        raise ValueError(f"stop must be up to {MAX_REQUEST_STOPS} non-empty strings")
    return stops


def check_manifest_stops(v: list[str] | None) -> list[str] | None:
    if v is not None and any(s == "" for s in v):
        raise ValueError("stop sequences must be non-empty strings")
    return v


_SAME = "="  # a manifest or vLLM name equal to the record's


def _spec(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    manifest: str | None = _SAME,
    vllm: str = _SAME,
    request_rule: Rule | None = None,
    manifest_rule: Rule | None = None,
) -> dict[str, Any]:
    """The metadata of one record field (see SamplingField)."""
    return {
        "sampling": {
            "ge": ge,
            "gt": gt,
            "le": le,
            "manifest": manifest,
            "vllm": vllm,
            "request_rule": request_rule,
            "manifest_rule": manifest_rule,
        }
    }


@dataclass(frozen=True)
class Sampling:
    """The sampling values of one generation; `Sampling()` is the server's defaults.

    Each field's metadata is its spec: value range, manifest name (None: a manifest cannot
    set it), vLLM name, and any rule beyond a range shared by the request and the manifest.
    """

    temperature: float = field(default=1.0, metadata=_spec(ge=0, le=2))
    top_p: float = field(default=1.0, metadata=_spec(gt=0, le=1))
    top_k: int = field(default=-1, metadata=_spec(request_rule=check_top_k, manifest_rule=check_top_k))
    min_p: float = field(default=0.0, metadata=_spec(ge=0, le=1))
    repetition_penalty: float = field(default=1.0, metadata=_spec(gt=0, le=2))
    presence_penalty: float = field(default=0.0, metadata=_spec(ge=-2, le=2))
    frequency_penalty: float = field(default=0.0, metadata=_spec(ge=-2, le=2))
    max_tokens: int = field(default=512, metadata=_spec(ge=1))
    # a signed 64-bit seed (what torch generators and the engine's messages carry)
    seed: int | None = field(default=None, metadata=_spec(ge=-(2**63), le=2**63 - 1))
    stop: tuple[str, ...] = field(
        default=(),
        metadata=_spec(manifest="stop_sequences", request_rule=check_request_stops, manifest_rule=check_manifest_stops),
    )
    n: int = field(default=1, metadata=_spec(ge=1, le=16, manifest=None))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Sampling:
        """From wire values (lists for sequences); a field not given keeps its default."""
        return cls(**{f.name: f.to_record(values[f.name]) for f in FIELDS if f.name in values})

    def to_values(self) -> dict[str, Any]:
        """Wire values (JSON types: lists for sequences), by record name."""
        return {f.name: f.to_wire(getattr(self, f.name)) for f in FIELDS}

    def to_sampling_params_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of vLLM's `SamplingParams` (an empty stop list is vLLM's None)."""
        out: dict[str, Any] = {}
        for f in FIELDS:
            value = f.to_wire(getattr(self, f.name))
            out[f.vllm] = (value or None) if f.is_sequence else value
        return out


@dataclass(frozen=True)
class SamplingField:
    """One row of the table, read from the record's field metadata."""

    name: str  # the record's, the request's and the header's name
    default: Any  # the server's default (record form)
    is_sequence: bool  # a tuple in the record, a list on the wire
    ge: float | None  # the value range, as pydantic constraints
    gt: float | None
    le: float | None
    manifest: str | None  # name in training.decoding; None: a manifest cannot set it
    vllm: str  # keyword of SamplingParams
    request_rule: Rule | None
    manifest_rule: Rule | None

    @classmethod
    def of(cls, f: Field[Any]) -> SamplingField:
        spec = f.metadata["sampling"]
        return cls(
            name=f.name,
            default=f.default,
            is_sequence=isinstance(f.default, tuple),
            ge=spec["ge"],
            gt=spec["gt"],
            le=spec["le"],
            manifest=f.name if spec["manifest"] == _SAME else spec["manifest"],
            vllm=f.name if spec["vllm"] == _SAME else spec["vllm"],
            request_rule=spec["request_rule"],
            manifest_rule=spec["manifest_rule"],
        )

    def to_wire(self, value: Any) -> Any:
        return list(value) if self.is_sequence and value is not None else value

    def to_record(self, value: Any) -> Any:
        return tuple(value) if self.is_sequence and value is not None else value

    def pydantic(self) -> Any:
        """A pydantic `Field` for an optional model field: None ("not set"), or a value in range."""
        return PydanticField(default=None, ge=self.ge, gt=self.gt, le=self.le)

    @property
    def bounds(self) -> dict[str, float]:
        return {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le)) if v is not None}


FIELDS: tuple[SamplingField, ...] = tuple(SamplingField.of(f) for f in fields(Sampling))
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
_BY_NAME = {f.name: f for f in FIELDS}
_BY_MANIFEST_NAME = {f.manifest: f for f in FIELDS if f.manifest is not None}
# training.decoding keys that are sampling defaults
MANIFEST_FIELDS: tuple[str, ...] = tuple(_BY_MANIFEST_NAME)
# the server's defaults as wire values; `serve` overrides max_tokens from its settings
SERVER_DEFAULTS: dict[str, Any] = Sampling().to_values()


def request_field(name: str) -> Any:
    """The pydantic `Field` of request field `name` (the record's name)."""
    return _BY_NAME[name].pydantic()


def manifest_field(name: str) -> Any:
    """The pydantic `Field` of `training.decoding` field `name` (the manifest's name)."""
    return _BY_MANIFEST_NAME[name].pydantic()


def request_rules() -> Any:
    """A pydantic field validator running each request field's rule beyond its range."""
    rules = {f.name: f.request_rule for f in FIELDS if f.request_rule is not None}
    return _validator(rules)


def manifest_rules() -> Any:
    """A pydantic field validator running each manifest field's rule beyond its range."""
    rules = {f.manifest: f.manifest_rule for f in FIELDS if f.manifest is not None and f.manifest_rule is not None}
    return _validator(rules)


def _validator(rules: Mapping[str, Rule]) -> Any:
    def run(cls: type, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return rules[info.field_name](value)

    return field_validator(*rules)(classmethod(run))


# ----------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolved:
    value: Any
    source: Source

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source}


@dataclass(frozen=True)
class ResolvedSampling(Mapping[str, Resolved]):
    """The values of one request (`sampling`) and where each came from (`sources`).

    As a mapping: field name -> `Resolved` (wire value and source), in the record's order.
    """

    sampling: Sampling
    sources: Mapping[str, Source]

    def __getitem__(self, name: str) -> Resolved:
        if name not in _BY_NAME:
            raise KeyError(name)
        return Resolved(_BY_NAME[name].to_wire(getattr(self.sampling, name)), self.sources[name])

    def __iter__(self) -> Iterator[str]:
        return iter(FIELD_NAMES)

    def __len__(self) -> int:
        return len(FIELD_NAMES)

    def with_value(self, name: str, value: Any) -> ResolvedSampling:
        """A copy with `name` set to `value`, keeping its source (e.g. max_tokens cut to the context)."""
        return ResolvedSampling(replace(self.sampling, **{name: _BY_NAME[name].to_record(value)}), self.sources)


def expert_defaults(decoding: Decoding) -> dict[str, Any]:
    """The sampling values a manifest sets (only those it sets), as wire values by record name."""
    values = {f.name: getattr(decoding, f.manifest) for f in FIELDS if f.manifest is not None}
    return {k: _BY_NAME[k].to_wire(v) for k, v in values.items() if v is not None}


def resolve(
    request: Mapping[str, Any], expert: Mapping[str, Any], server: Mapping[str, Any] = SERVER_DEFAULTS
) -> ResolvedSampling:
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for name in FIELD_NAMES:
        if request.get(name) is not None:
            values[name], sources[name] = request[name], "request"
        elif expert.get(name) is not None:
            values[name], sources[name] = expert[name], "manifest"
        else:
            values[name], sources[name] = server.get(name, SERVER_DEFAULTS[name]), "server"
    return ResolvedSampling(Sampling.from_values(values), sources)


MAX_SAMPLING_HEADER = 4096  # bytes: clients (httpx, http.client, openai) read headers line by line


def header_value(resolved: Mapping[str, Resolved]) -> str:
    """`X-Expert-Sampling`: compact ASCII JSON (headers cannot carry raw newlines), at most
    `MAX_SAMPLING_HEADER` bytes: a value that would not fit (long stop strings) is replaced by
    `{"omitted": "<what>", "source": ...}`."""
    values = {k: v.to_json() for k, v in resolved.items()}
    text = json.dumps(values, separators=(",", ":"), ensure_ascii=True)
    if len(text) <= MAX_SAMPLING_HEADER:
        return text
    # drop the largest values first until the header fits
    by_size = sorted(values, key=lambda k: len(json.dumps(values[k], ensure_ascii=True)), reverse=True)
    for key in by_size:
        entry = values[key]
        value = entry.get("value") if isinstance(entry, dict) else entry
        what = f"{len(value)} values" if isinstance(value, (list, tuple)) else "a long value"
        values[key] = {
            "omitted": f"{what}, too long for a header",
            "source": entry.get("source") if isinstance(entry, dict) else None,
        }
        text = json.dumps(values, separators=(",", ":"), ensure_ascii=True)
        if len(text) <= MAX_SAMPLING_HEADER:
            return text
    return json.dumps({"omitted": "too long for a header"})


# ----------------------------------------------------------------------------- structured outputs


@dataclass(frozen=True)
class JsonObject:
    """Any JSON object (a manifest's `grammar_type: json`, or `response_format: json_object`)."""

    kind: ClassVar[str] = "json_object"

    def to_structured_outputs_kwargs(self) -> dict[str, Any]:
        return {"json_object": True}


@dataclass(frozen=True)
class JsonSchema:
    """JSON that matches `schema` (`response_format: json_schema`)."""

    schema: Mapping[str, Any]
    kind: ClassVar[str] = "json_schema"

    def to_structured_outputs_kwargs(self) -> dict[str, Any]:
        return {"json": dict(self.schema)}


@dataclass(frozen=True)
class Grammar:
    """Text of the expert's grammar file (GBNF), as vLLM's structured outputs take it."""

    text: str
    copies_input: bool = False  # uses `input-span`, defined per request (server.manifest.input_spans)
    kind: ClassVar[str] = "grammar"

    def for_text(self, text: str) -> Grammar:
        """The grammar one request is decoded with (ValueError: `text` cannot define `input-span`)."""
        return Grammar(input_spans.bind(self.text, text)) if self.copies_input else self

    def to_structured_outputs_kwargs(self) -> dict[str, Any]:
        return {"grammar": self.text}


StructuredOutput = JsonObject | JsonSchema | Grammar
