"""`expert validate`: schema, artifacts and the fate of every field, as one report.

Exit codes: 0 valid and servable here; 1 invalid (schema errors, unreadable JSON, files
that contradict the manifest); 2 valid but not servable here, and with `strict` also for
any refused field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.manifest.artifacts import BaseInfo, check_artifacts, manifest_location
from server.manifest.constraints import check_constraints
from server.manifest.fates import FieldFate, field_fates
from server.manifest.hints import plan_engine
from server.manifest.schema import MANIFEST_FILENAME, Manifest, ManifestError, parse_manifest, read_manifest_json

EXIT_OK, EXIT_INVALID, EXIT_UNSERVABLE = 0, 1, 2


@dataclass
class ValidationResult:
    path: str
    valid: bool
    servable: bool
    errors: list[dict[str, str]] = field(default_factory=list)
    fields: list[FieldFate] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why not servable
    manifest: Manifest | None = None
    parts: dict[str, Any] = field(default_factory=dict)  # what the fates are made from
    probed: bool = False
    probe_seconds: float | None = None  # wall time of the probes on the engine (not its start)

    def add_evidence(self, evidence: dict[str, dict[str, Any]], blockers: list[str]) -> None:
        """Fates and servability again, with what the probes on the engine showed."""
        p = self.parts
        if not p or self.manifest is None:
            return
        self.fields = field_fates(
            p["raw"], self.manifest, p["artifacts"], p["hints"], constraints=p["constraints"], evidence=evidence
        )
        self.reasons = list(p["artifacts"].blockers) + list(p["constraints"].blockers) + list(blockers)
        self.servable = self.valid and not self.reasons

    def exit_code(self, strict: bool = False) -> int:
        if not self.valid:
            return EXIT_INVALID
        if not self.servable or (strict and any(f.fate == "refused" for f in self.fields)):
            return EXIT_UNSERVABLE
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "servable": self.servable,
            "errors": self.errors,
            "fields": [f.to_json() for f in self.fields],
            "not_servable_because": self.reasons,
            "probed": self.probed,
            **({"probe_seconds": self.probe_seconds} if self.probe_seconds is not None else {}),
        }


def validate_path(
    path: Path,
    base: BaseInfo | None,
    *,
    platform: str,
    engine_defaults: dict[str, Any],
    max_lora_rank: int | None = None,
    known_backends: frozenset[str] | None = None,
    kv_cache_dtypes: frozenset[str] | None = None,
) -> ValidationResult:
    root, manifest_file = manifest_location(path)
    try:
        raw = read_manifest_json(manifest_file)
        m = parse_manifest(raw)
    except ManifestError as exc:
        return ValidationResult(str(path), False, False, [{"field": i.field, "message": i.message} for i in exc.issues])
    artifacts = check_artifacts(root, manifest_file, m, base, max_lora_rank)
    plan = plan_engine(
        [(m.name, m.runtime)],
        platform=platform,
        defaults=engine_defaults,
        known_backends=known_backends,
        kv_cache_dtypes=kv_cache_dtypes,
    )
    hints = plan.reports.get(m.name, [])
    constraints = check_constraints(
        m, loaded_before(root, manifest_file, m), context="in the same experts folder, loading before it"
    )
    errors = [{"field": f, "message": msg} for f, msg in artifacts.errors]
    result = ValidationResult(str(path), not errors, False, errors, [], [], m)
    result.parts = {"raw": raw, "artifacts": artifacts, "hints": hints, "constraints": constraints}
    result.add_evidence({}, [])
    return result


def loaded_before(root: Path, manifest_file: Path, m: Manifest) -> dict[str, str]:
    """Name -> version of the experts beside this one (the other folders of its experts folder,
    or the other `*.manifest.json` files of its folder) that load before it."""
    files = (
        [p / MANIFEST_FILENAME for p in root.parent.iterdir() if p.is_dir() and p != root]
        if root.parent.is_dir()
        else []
    )
    files += [p for p in root.glob("*.manifest.json") if p != manifest_file]
    out: dict[str, str] = {}
    for file in files:
        if not file.is_file():
            continue
        try:
            other = parse_manifest(read_manifest_json(file))
        except ManifestError:
            continue
        if (other.load_order, other.name) < (m.load_order, m.name):
            out[other.name] = other.version
    return out


def render_text(result: ValidationResult, strict: bool = False) -> str:
    lines: list[str] = []
    m = result.manifest
    head = f"{m.name} {m.version} (schema {m.schema_version})" if m else result.path
    status = (
        "invalid" if not result.valid else ("valid, servable here" if result.servable else "valid, NOT servable here")
    )
    lines.append(f"{head}: {status}")
    for e in result.errors:
        lines.append(f"  error: {e['field'] or '<manifest>'}: {e['message']}")
    for r in result.reasons:
        lines.append(f"  not servable: {r}")
    if result.fields:
        width = min(max(len(f.field) for f in result.fields), 60)
        lines.append("")
        lines.append(f"  {'FIELD'.ljust(width)}  {'FATE':8} DETAIL")
        for f in result.fields:
            lines.append(f"  {f.field.ljust(width)}  {f.fate:8} {f.detail}")
        counts = {k: sum(1 for f in result.fields if f.fate == k) for k in ("applied", "checked", "refused")}
        lines.append("")
        lines.append(f"  {len(result.fields)} fields: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if strict and result.valid and any(f.fate == "refused" for f in result.fields):
        lines.append("  --strict: refused fields make this exit 2")
    return "\n".join(lines)


def render_json(result: ValidationResult) -> str:
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False)
