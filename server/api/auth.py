"""API keys: client keys for inference, admin keys for lifecycle endpoints.

Keys come from settings (plain, hashed here at start) and from a keys file of sha256
hashes; a presented key is hashed and compared with every known hash in constant time.
With no keys configured, every caller is admitted (and `expert serve` binds loopback only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from server.errors import Forbidden, Unauthorized


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
        client = [_hash(k) for k in api_keys if k]
        admin = [_hash(k) for k in admin_keys if k]
        if keys_file is not None:
            data = json.loads(keys_file.read_text())
            for hashes, kind in ((client, "client"), (admin, "admin")):
                for h in data.get(kind, []):
                    if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h.lower())):
                        raise ValueError(f"{keys_file}: '{kind}' entries must be sha256 hex digests")
                    hashes.append(h.lower())
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
