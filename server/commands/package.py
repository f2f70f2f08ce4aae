"""`expert package DIR` and `expert install PKG`: write and install `.expert` packages
(server.manifest.package owns the format and the checks)."""

from __future__ import annotations

import sys
from pathlib import Path

from server.manifest.package import PackageError, load_private_key, pack, unpack
from server.settings import Settings, detect_platform


def run_package(folder: Path, out_dir: Path | None, sign_key: Path | None) -> int:
    from server.manifest.schema import ManifestError

    try:
        key = load_private_key(sign_key) if sign_key is not None else None
        target = pack(folder, out_dir or Path.cwd(), key)
    except (PackageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ManifestError as exc:
        for issue in exc.issues:
            print(f"error: manifest: {issue.field or '<manifest>'}: {issue.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
    print(target)
    print(f"{target}.sha256")
    return 0


def _validator(settings: Settings):
    from server.manifest.validate import validate_path

    def validate(folder: Path) -> tuple[list[str], list[str]]:
        result = validate_path(
            folder,
            None,
            platform=detect_platform(settings),
            engine_defaults=settings.engine_defaults(),
            max_lora_rank=settings.max_lora_rank,
        )
        errors = [f"{e['field'] or '<manifest>'}: {e['message']}" for e in result.errors]
        return errors, [f"not servable as it is: {r}" for r in result.reasons]

    return validate


def run_install(package: Path, settings: Settings) -> int:
    try:
        result = unpack(
            package, settings.experts_dir, trusted_keys=settings.trusted_keys, validate=_validator(settings)
        )
    except PackageError as exc:
        print(f"error: {package.name}: refused, nothing installed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    signed = f"signed by {result.key}" if result.signed else "unsigned"
    print(f"installed {result.name} {result.version} into {result.path} ({result.files} files, {signed})")
    for note in result.notes:
        print(f"  note: {note}")
    return 0
