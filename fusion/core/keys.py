"""API keys: off until keys are configured; then Bearer keys, compared in constant time.

The key ring is HTTP-free so the ``Gateway`` can hold it; ``fusion.http.auth`` reads the
``Authorization`` header and asks it.

Keys are stored only as sha256 digests (config ``auth.key_hashes`` / ``admin_key_hashes``),
or given in plain text through ``FUSION_API_KEYS`` / ``FUSION_ADMIN_KEYS`` (comma-separated),
which are hashed at start-up and never logged. An admin key is also a valid user key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from fusion.config import AuthConfig
from fusion.errors import Forbidden, Unauthorized


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRing:
    users: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: AuthConfig) -> KeyRing:
        def env(name: str) -> list[str]:
            return [hash_key(k.strip()) for k in os.environ.get(name, "").split(",") if k.strip()]

        admins = tuple(h.lower() for h in cfg.admin_key_hashes) + tuple(env("FUSION_ADMIN_KEYS"))
        users = tuple(h.lower() for h in cfg.key_hashes) + tuple(env("FUSION_API_KEYS"))
        return cls(users + admins, admins)

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    @staticmethod
    def _matches(digest: str, allowed: tuple[str, ...]) -> bool:
        found = False
        for candidate in allowed:  # no early exit: time does not tell which key matched
            found |= hmac.compare_digest(digest, candidate)
        return found

    def check(self, authorization: str | None, admin: bool = False) -> None:
        if not self.enabled:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'",
                               field="authorization")
        digest = hash_key(key.strip())
        if not self._matches(digest, self.users):
            raise Unauthorized("invalid API key", field="authorization")
        if admin and not self._matches(digest, self.admins):
            raise Forbidden("this route needs an admin key", field="authorization")
