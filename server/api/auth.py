"""API keys: client keys for inference, admin keys for lifecycle endpoints.

Keys come from settings (plain, hashed here at start) and from a keys file of sha256
hashes; a presented key is hashed and compared with every known hash in constant time.
With no keys configured, every caller is admitted (and `expert serve` binds loopback only).
Keys that are configured but add up to nothing (an empty or blank key, a keys file without
hashes) are a start-up error (`KeyConfigError`), never an open server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from server.errors import Forbidden, Unauthorized


class KeyConfigError(ValueError):
    """Keys configured in a way that would protect nothing, or a keys file that cannot be read."""


class Role(IntEnum):
    CLIENT = 1
    ADMIN = 2


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRing:
    client: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.client or self.admin)

    @classmethod
    def from_settings(cls, api_keys: list[str], admin_keys: list[str], keys_file: Path | None) -> KeyRing:
        for keys, variable in ((api_keys, "EXPERT_API_KEYS"), (admin_keys, "EXPERT_ADMIN_KEYS")):
            if any(not isinstance(k, str) or not k.strip() for k in keys):
                raise KeyConfigError(f"{variable} holds an empty key: every key must be a non-blank string")
        client = [_hash(k) for k in api_keys]
        admin = [_hash(k) for k in admin_keys]
        if keys_file is not None:
            try:
                data = json.loads(keys_file.read_text())
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise KeyConfigError(f"keys file {keys_file} cannot be read: {type(exc).__name__}") from None
            if not isinstance(data, dict):
                raise KeyConfigError(f'keys file {keys_file}: expected {{"client": [...], "admin": [...]}}')
            found = 0
            for hashes, kind in ((client, "client"), (admin, "admin")):
                entries = data.get(kind, [])
                if not isinstance(entries, list):
                    raise KeyConfigError(f"keys file {keys_file}: '{kind}' must be a list of sha256 hex digests")
                for h in entries:
                    if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h.lower())):
                        raise KeyConfigError(f"keys file {keys_file}: '{kind}' entries must be sha256 hex digests")
                    hashes.append(h.lower())
                    found += 1
            if not found:
                raise KeyConfigError(f"keys file {keys_file} holds no key hashes")
        return cls(tuple(client), tuple(admin))

    def role_of(self, key: str) -> Role | None:
        digest = _hash(key)
        # compare with every hash, without stopping early
        is_admin = any([hmac.compare_digest(digest, h) for h in self.admin])
        is_client = any([hmac.compare_digest(digest, h) for h in self.client])
        return Role.ADMIN if is_admin else Role.CLIENT if is_client else None

    def require(self, authorization: str | None, needed: Role) -> None:
        if not self.enabled:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        role = self.role_of(authorization.removeprefix("Bearer ").strip())
        if role is None:
            raise Unauthorized("invalid API key", code="invalid_api_key")
        if role < needed:
            raise Forbidden("this endpoint needs an admin key", code="admin_key_required")
