"""Trained files and the manifest fields that describe them.

Training writes into a staging folder inside the expert folder; only when both phases
succeeded are the files moved into place (`Staging.commit`) and the manifest updated
(`update_manifest`): a failed or interrupted run leaves the expert as it was.

The manifest is edited as JSON, not re-serialised from the schema, so key order and `_`
comment keys survive; it is written with indent 2 and checked against the schema first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from server.manifest.embedded import sha256_file
from server.manifest.schema import MANIFEST_FILENAME, parse_manifest


class Staging:
    """A temporary folder in the expert folder; `add` registers a staged file and its final place."""

    def __init__(self, expert_dir: Path):
        self.expert_dir = expert_dir
        self.dir = Path(tempfile.mkdtemp(prefix=".trainer-staging-", dir=expert_dir))
        self._files: list[tuple[Path, str]] = []

    def add(self, staged: Path, rel: str) -> None:
        self._files.append((staged, rel))

    def commit(self) -> list[Path]:
        """Move every registered file to its place in the expert folder; returns the final paths."""
        placed = []
        for staged, rel in self._files:
            dest = self.expert_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(staged, 0o644)  # staged files may be private (mkstemp); the expert's are not
            os.replace(staged, dest)
            placed.append(dest)
        return placed

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class FileUpdate:
    rel: str  # path relative to the expert folder
    sha256: str
    size_bytes: int


def describe(expert_dir: Path, rel: str) -> FileUpdate:
    path = expert_dir / rel
    return FileUpdate(_norm(rel), sha256_file(path), path.stat().st_size)


def update_manifest(
    expert_dir: Path,
    *,
    adapter: tuple[int, int, FileUpdate] | None = None,
    soft_prompt: tuple[int, FileUpdate] | None = None,
) -> list[str]:
    """Record sha256 (and the adapter's size_bytes) of trained files; returns notes for the user.

    `adapter` is (base index, adapter index, adapter_model.safetensors), `soft_prompt` is
    (soft prompt index, its file). Entries of `integrity.files` naming these files are
    updated too.
    """
    path = expert_dir / MANIFEST_FILENAME
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    notes: list[str] = []
    updates: list[FileUpdate] = []
    if adapter is not None:
        base_index, adapter_index, file = adapter
        if data.get("schema_version") == "2.0":
            entry = data["base_models"][base_index]["adapters"][adapter_index]
        else:
            entry = data["adapters"][adapter_index]
        entry["sha256"] = file.sha256
        entry["size_bytes"] = file.size_bytes
        updates.append(file)
    if soft_prompt is not None:
        index, file = soft_prompt
        data["soft_prompts"][index]["sha256"] = file.sha256
        updates.append(file)
    notes += _update_integrity(data, updates)
    parse_manifest(data)  # never write a manifest the server would refuse
    write_json_atomic(path, data)
    return notes


def _update_integrity(data: dict[str, Any], updates: list[FileUpdate]) -> list[str]:
    integrity = data.get("integrity")
    if not isinstance(integrity, dict) or not integrity.get("files"):
        return []
    files, changed = integrity["files"], False
    by_path = {u.rel: u for u in updates}
    if isinstance(files, dict):
        for key in list(files):
            if _norm(key) in by_path:
                files[key] = by_path[_norm(key)].sha256
                changed = True
    elif isinstance(files, list):
        for item in files:
            if isinstance(item, dict) and _norm(str(item.get("path", ""))) in by_path:
                u = by_path[_norm(item["path"])]
                item["sha256"] = u.sha256
                if "size_bytes" in item:
                    item["size_bytes"] = u.size_bytes
                changed = True
    if changed and integrity.get("signature"):
        return ["integrity.files updated: integrity.signature no longer matches; sign the manifest again"]
    return []


def _norm(rel: str) -> str:
    return str(PurePosixPath(rel.replace("\\", "/")))


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
