"""API keys: random tokens shown once; only their SHA-256 is stored. A slow hash buys nothing for 256-bit
random secrets, and a fast one keeps the per-request check cheap."""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

KEY_PREFIX = "fcp_"


class Scope(StrEnum):
    READ = "read"  # search, verify, detect, read users, faces and jobs
    WRITE = "write"  # everything read may do, plus create, enroll, update and delete
    ADMIN = "admin"  # everything write may do, plus list, create and revoke API keys

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Scope) -> bool:
        return self.rank >= needed.rank


_RANK = {Scope.READ: 0, Scope.WRITE: 1, Scope.ADMIN: 2}


def new_key() -> tuple[str, str, bytes]:
    """Returns (key, display prefix, hash)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:12], hash_key(key)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
