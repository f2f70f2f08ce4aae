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
from server.manifest.fates import FieldFate, field_fates
from server.manifest.hints import plan_engine
from server.manifest.schema import Manifest, ManifestError, parse_manifest, read_manifest_json

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
        }


def validate_path(
    path: Path,
    base: BaseInfo | None,
    *,
    platform: str,
    engine_defaults: dict[str, Any],
    max_lora_rank: int | None = None,
) -> ValidationResult:
    root, manifest_file = manifest_location(path)
    try:
        raw = read_manifest_json(manifest_file)
        m = parse_manifest(raw)
    except ManifestError as exc:
        return ValidationResult(str(path), False, False, [{"field": i.field, "message": i.message} for i in exc.issues])
    artifacts = check_artifacts(root, manifest_file, m, base, max_lora_rank)
    plan = plan_engine([(m.name, m.runtime)], platform=platform, defaults=engine_defaults)
    hints = plan.reports.get(m.name, [])
    fates = field_fates(raw, m, artifacts, hints)
    errors = [{"field": f, "message": msg} for f, msg in artifacts.errors]
    reasons = list(artifacts.blockers)
    return ValidationResult(str(path), not errors, not errors and not reasons, errors, fates, reasons, m)


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
