"""`expert convert DORA_DIR OUT_DIR [--rank R | --max-error E]`: a DoRA expert converted to a
plain LoRA expert that vLLM serves, with its fidelity report (server.experts.dora)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from server.settings import Settings


def run_convert(
    src: Path,
    dst: Path,
    settings: Settings,
    *,
    rank: int | None = None,
    max_error: float | None = None,
    prompts: Path | None = None,
    tokens: int = 16,
) -> int:
    from server.experts.base_model import model_location
    from server.experts.dora import REPORT_FILE, ConversionError, convert_expert
    from server.manifest.schema import ManifestError

    if tokens < 1:
        print("error: --tokens must be at least 1", file=sys.stderr)
        return 2
    try:
        base = model_location(settings, prepare=True)
        if base is None:
            raise ConversionError("no base model to convert against")
        report = convert_expert(
            src,
            dst,
            base,
            max_lora_rank=settings.max_lora_rank,
            rank=rank,
            max_error=max_error,
            prompts_file=prompts,
            tokens=tokens,
        )
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ManifestError as exc:
        for issue in exc.issues:
            print(f"error: manifest: {issue.field or '<manifest>'}: {issue.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"converted {src} -> {dst}: {report.summary()}")
    width = max(len(n) for n in report.modules)
    for name, err in report.modules.items():
        print(f"  {name.ljust(width)}  relative error {err:.3e}")
    print(f"report: {dst / REPORT_FILE}")
    return 0
