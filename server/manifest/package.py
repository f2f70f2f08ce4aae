"""`.expert` packages (hivellm's layout): write one, and unpack one safely.

A package is a gzip tar with a flat root: `manifest.json`, the adapter files, `soft_prompts/`,
the grammar file, README and license files. It is named `<name>-<model>.v<version>.expert`
(`<model>`: the last path component of the first base model's name) and comes with a
`<package>.sha256` sidecar in `sha256sum` format.

Integrity block (`manifest.integrity`), written by `pack` when given a signing key:
- `files`: `{path: sha256}` of every packaged file but `manifest.json`;
- `signature`: ed25519 over the message `signed_message(hashes)`: the sorted lines
  `path:sha256` of every file, joined by `\\n`, where manifest.json is hashed before its
  integrity block: `canonical_manifest(manifest)`, the manifest without `integrity` as JSON
  with sorted keys, separators `,` `:` and UTF-8;
  `public_key`: `ed25519:<base64 of the 32 raw bytes>` (the prefix is stripped before use);
  signature in base64 (or hex).

`unpack` refuses, before anything is moved into place: entries that are not regular files or
folders (symlinks, hard links, devices), absolute paths, `..`, backslashes, drive letters, names
repeated, more than `max_files` files, a file or a total over the size limits (counted on
the bytes read, not the header), a sidecar hash that does not match, a file whose sha256
differs from the manifest (`integrity.files`, adapter and soft-prompt sha256), a packaged file
the integrity block does not list, a signature that does not verify, and (when trusted keys
are given) an unsigned package or an untrusted key. It writes into a private staging folder
next to the destination and renames it into place only when every check passed; on any
failure the staging folder is removed: nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from server.manifest.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, grammar_location, inside
from server.manifest.schema import MANIFEST_FILENAME, Manifest, ManifestError, parse_manifest, read_manifest_json

SUFFIX = ".expert"
MAX_FILES = 256
MAX_FILE_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_DEPTH = 3
KEY_PREFIX = "ed25519:"
EXTRA_FILES = re.compile(r"^(readme|license|licence|copying|notice)(\.[a-z0-9]+)?$", re.IGNORECASE)
_SAFE_PART = re.compile(r"[^A-Za-z0-9._-]+")


class PackageError(Exception):
    """A package that cannot be written or installed; the message says why."""


@dataclass
class InstallResult:
    name: str
    version: str
    path: Path
    files: int
    signed: bool
    key: str | None = None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- hashes and signing


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_manifest(raw: dict[str, Any]) -> bytes:
    """The manifest before its integrity block, in the one serialisation that is hashed."""
    body = {k: v for k, v in raw.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed_message(hashes: dict[str, str]) -> bytes:
    """What the signature covers: the sorted `path:sha256` lines of the files."""
    return "\n".join(sorted(f"{path}:{sha}" for path, sha in hashes.items())).encode()


def _decode(text: str, what: str, length: int) -> bytes:
    value = text.strip()
    if value.lower().startswith(KEY_PREFIX):
        value = value[len(KEY_PREFIX) :]
    try:
        raw = bytes.fromhex(value) if re.fullmatch(r"[0-9a-fA-F]+", value) else base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise PackageError(f"integrity.{what} is neither base64 nor hex") from None
    if len(raw) != length:
        raise PackageError(f"integrity.{what} has {len(raw)} bytes, an ed25519 {what} has {length}")
    return raw


def public_key_text(private_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def load_private_key(path: Path) -> Any:
    """An ed25519 private key: a PEM (PKCS#8) file, or the 32-byte seed in base64 or hex."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = path.read_bytes()
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise PackageError(f"{path.name}: not an ed25519 private key")
        return key
    return Ed25519PrivateKey.from_private_bytes(_decode(data.decode("ascii", "replace"), "private key", 32))


def verify_signature(public_key: str, signature: str, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(_decode(public_key, "public_key", 32))
    try:
        key.verify(_decode(signature, "signature", 64), message)
    except InvalidSignature:
        return False
    return True


def same_key(a: str, b: str) -> bool:
    return _decode(a, "public_key", 32) == _decode(b, "public_key", 32)


# ----------------------------------------------------------------------------- packing


def package_name(m: Manifest) -> str:
    model = re.split(r"[/\\]", m.bases()[0][0].name.rstrip("/\\"))[-1]
    parts = [_SAFE_PART.sub("-", p).strip("-") or "x" for p in (m.name, model, m.version)]
    return f"{parts[0]}-{parts[1]}.v{parts[2]}{SUFFIX}"


def package_files(folder: Path, m: Manifest) -> list[str]:
    """Relative paths of the files a package of this expert holds (manifest.json first)."""
    wanted: list[str] = [MANIFEST_FILENAME]

    def add(rel: str | None, what: str) -> None:
        if not rel:
            return
        path = inside(folder, rel)
        if path is None:
            raise PackageError(f"{what}: {rel!r} is not a path inside the expert folder")
        if path.is_symlink() or not path.is_file():
            raise PackageError(f"{what}: {rel} is not a regular file in {folder}")
        norm = path.resolve().relative_to(folder.resolve()).as_posix()
        if norm not in wanted:
            wanted.append(norm)

    for bi, (_, adapters) in enumerate(m.bases()):
        for ai, adapter in enumerate(adapters):
            base = PurePosixPath(adapter.path or ".")
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                add(str(base / name), f"base_models[{bi}].adapters[{ai}]")
    for i, sp in enumerate(m.soft_prompts):
        add(sp.path, f"soft_prompts[{i}].path")
    kind, grammar = grammar_location(folder, folder / MANIFEST_FILENAME, m)
    if kind == "gbnf" and grammar is not None and grammar.is_file():
        add(grammar.resolve().relative_to(folder.resolve()).as_posix(), "grammar")
    if m.evaluation is not None and isinstance(m.evaluation.test_cases, str):
        add(m.evaluation.test_cases, "evaluation.test_cases")
    for entry in sorted(folder.iterdir()):
        if EXTRA_FILES.match(entry.name) and entry.is_file() and not entry.is_symlink():
            add(entry.name, entry.name)
    return wanted


def pack(folder: Path, out_dir: Path, signing_key: Any = None) -> Path:
    """Write `<out_dir>/<name>-<model>.v<version>.expert` and its `.sha256` sidecar.

    With `signing_key` (an ed25519 private key), the packaged manifest carries a signed
    integrity block; without, the manifest is packaged as it is."""
    raw = read_manifest_json(folder / MANIFEST_FILENAME)
    m = parse_manifest(raw)
    files = package_files(folder, m)
    hashes = {rel: sha256_path(folder / rel) for rel in files[1:]}
    if signing_key is not None:
        integrity = dict(raw.get("integrity") or {})
        integrity["files"] = dict(sorted(hashes.items()))
        message = signed_message({**hashes, MANIFEST_FILENAME: sha256_bytes(canonical_manifest(raw))})
        integrity["signature_algorithm"] = "ed25519"
        integrity["public_key"] = public_key_text(signing_key)
        integrity["signature"] = base64.b64encode(signing_key.sign(message)).decode()
        integrity.pop("algorithm", None)
        raw = {**raw, "integrity": integrity}
    manifest_bytes = (json.dumps(raw, indent=2, ensure_ascii=False) + "\n").encode()

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / package_name(m)
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".pack-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as raw_out, tarfile.open(fileobj=raw_out, mode="w:gz") as tar:
            _add_bytes(tar, MANIFEST_FILENAME, manifest_bytes)
            for rel in files[1:]:
                _add_bytes(tar, rel, (folder / rel).read_bytes())
        digest = sha256_path(Path(tmp_name))
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    Path(str(target) + ".sha256").write_text(f"{digest}  {target.name}\n")
    return target


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------- unpacking


def _member_path(name: str) -> str:
    """The checked relative path of a tar entry; PackageError for anything that could escape."""
    if not name or "\x00" in name or "\\" in name:
        raise PackageError(f"entry {name!r}: empty, NUL or backslash in its name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise PackageError(f"entry {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PackageError(f"entry {name!r}: '..' in its path")
    if not parts:
        return ""
    if len(parts) > MAX_DEPTH:
        raise PackageError(f"entry {name!r}: deeper than {MAX_DEPTH} levels")
    return "/".join(parts)


def check_sidecar(package: Path) -> bool:
    """True when a `.sha256` sidecar exists and matches; PackageError when it does not match."""
    sidecar = Path(str(package) + ".sha256")
    if not sidecar.is_file():
        return False
    fields = sidecar.read_text(errors="replace").split()
    if not fields or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
        raise PackageError(f"{sidecar.name}: not a sha256 line")
    if fields[0].lower() != sha256_path(package):
        raise PackageError(f"{package.name}: sha256 does not match {sidecar.name}")
    return True


def _extract(
    package: Path, staging: Path, *, max_files: int, max_file_bytes: int, max_total_bytes: int
) -> dict[str, str]:
    """Extract into `staging`, checking every entry; returns {path: sha256} of the files."""
    hashes: dict[str, str] = {}
    total = 0
    try:
        tar = tarfile.open(package, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as exc:
        raise PackageError(f"{package.name}: not a tar.gz package ({exc})") from None
    with tar:
        try:
            for member in tar:
                rel = _member_path(member.name)
                if member.isdir():
                    continue
                if not member.isreg():
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise PackageError(f"entry {member.name!r}: a {kind}; packages hold regular files only")
                if not rel:
                    raise PackageError(f"entry {member.name!r}: not a file name")
                if rel in hashes:
                    raise PackageError(f"entry {rel!r}: appears twice")
                if len(hashes) >= max_files:
                    raise PackageError(f"more than {max_files} files")
                if member.size > max_file_bytes:
                    raise PackageError(f"entry {rel!r}: {member.size} bytes, over the limit of {max_file_bytes}")
                source = tar.extractfile(member)
                if source is None:
                    raise PackageError(f"entry {rel!r}: unreadable")
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                written = 0
                with source, target.open("xb") as out:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        total += len(chunk)
                        if written > max_file_bytes:
                            raise PackageError(f"entry {rel!r}: over the limit of {max_file_bytes} bytes")
                        if total > max_total_bytes:
                            raise PackageError(f"the package unpacks to more than {max_total_bytes} bytes")
                        h.update(chunk)
                        out.write(chunk)
                hashes[rel] = h.hexdigest()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise PackageError(f"{package.name}: damaged archive ({exc})") from None
    return hashes


def _check_hashes(raw: dict[str, Any], m: Manifest, hashes: dict[str, str]) -> None:
    integrity = m.integrity
    listed = integrity.file_hashes() if integrity is not None else {}
    for rel, sha in listed.items():
        norm = "/".join(p for p in rel.split("/") if p not in ("", "."))
        if norm == MANIFEST_FILENAME:
            continue
        if norm not in hashes:
            raise PackageError(f"integrity.files lists {rel}, which the package does not hold")
        if sha and sha.lower() != hashes[norm]:
            raise PackageError(f"sha256 of {rel} does not match integrity.files")
    if listed:
        unlisted = sorted(set(hashes) - {MANIFEST_FILENAME} - {"/".join(p for p in r.split("/") if p) for r in listed})
        if unlisted:
            raise PackageError(f"files not listed in integrity.files: {', '.join(unlisted)}")
    for bi, (_, adapters) in enumerate(m.bases()):
        for ai, adapter in enumerate(adapters):
            rel = str(PurePosixPath(adapter.path or ".") / ADAPTER_WEIGHTS)
            rel = "/".join(p for p in rel.split("/") if p not in ("", "."))
            if adapter.sha256 and hashes.get(rel, "") != adapter.sha256.lower():
                raise PackageError(f"base_models[{bi}].adapters[{ai}].sha256 does not match {rel}")
    for i, sp in enumerate(m.soft_prompts):
        rel = "/".join(p for p in sp.path.split("/") if p not in ("", "."))
        if sp.sha256 and hashes.get(rel, "") != sp.sha256.lower():
            raise PackageError(f"soft_prompts[{i}].sha256 does not match {sp.path}")


def _check_signature(
    raw: dict[str, Any], hashes: dict[str, str], trusted_keys: Iterable[str]
) -> tuple[bool, str | None]:
    integrity = raw.get("integrity") or {}
    trusted = list(trusted_keys)
    signature, key = integrity.get("signature"), integrity.get("public_key")
    algorithm = integrity.get("signature_algorithm") or integrity.get("algorithm") or "ed25519"
    if not signature:
        if trusted:
            raise PackageError("unsigned package, and trusted keys are configured")
        return False, None
    if str(algorithm).lower() != "ed25519":
        raise PackageError(f"integrity.signature_algorithm {algorithm!r}: only ed25519 signatures are verified")
    if not key:
        raise PackageError("integrity.signature without integrity.public_key")
    manifest_sha = sha256_bytes(canonical_manifest(raw))
    message = signed_message(
        {**{k: v for k, v in hashes.items() if k != MANIFEST_FILENAME}, MANIFEST_FILENAME: manifest_sha}
    )
    if not verify_signature(str(key), str(signature), message):
        raise PackageError("the ed25519 signature does not verify: the package was changed or signed by another key")
    if trusted and not any(same_key(str(key), t) for t in trusted):
        raise PackageError("signed by a key that is not among the trusted keys")
    return True, str(key)


def unpack(
    package: Path,
    experts_dir: Path,
    *,
    trusted_keys: Iterable[str] = (),
    max_files: int = MAX_FILES,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    validate: Any = None,
) -> InstallResult:
    """Install `package` as `experts_dir/<name>`; PackageError (and nothing written) on any problem.

    `validate(folder) -> (errors, notes)` runs on the staged folder before it is moved into place."""
    if not package.is_file():
        raise PackageError(f"{package}: no such file")
    sidecar = check_sidecar(package)
    experts_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=experts_dir, prefix=".install-"))
    try:
        hashes = _extract(
            package, staging, max_files=max_files, max_file_bytes=max_file_bytes, max_total_bytes=max_total_bytes
        )
        if MANIFEST_FILENAME not in hashes:
            raise PackageError(f"no {MANIFEST_FILENAME} at the package's root")
        try:
            raw = read_manifest_json(staging / MANIFEST_FILENAME)
            m = parse_manifest(raw)
        except ManifestError as exc:
            problems = "; ".join(f"{i.field or '<manifest>'}: {i.message}" for i in exc.issues)
            raise PackageError(f"invalid manifest: {problems}") from None
        _check_hashes(raw, m, hashes)
        signed, key = _check_signature(raw, hashes, trusted_keys)
        notes = [] if sidecar else [f"no {package.name}.sha256 sidecar: the archive itself was not checked"]
        if not signed:
            notes.append("unsigned package: the files match the manifest's hashes, their origin is not verified")
        if validate is not None:
            errors, more = validate(staging)
            if errors:
                raise PackageError("the expert does not validate: " + "; ".join(errors))
            notes += more
        target = experts_dir / m.name
        if target.exists() or target.is_symlink():
            raise PackageError(f"{target} exists; remove it first to install {m.name} {m.version}")
        os.rename(staging, target)
        return InstallResult(m.name, m.version, target, len(hashes), signed, key, notes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
