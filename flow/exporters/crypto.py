"""Integration credentials at rest: encrypted with a key derived from ``FLOW_SECRET_KEY``.

Credentials are stored as a Fernet token (AES-128-CBC + HMAC-SHA256) keyed by HKDF-SHA256
of the secret, so any long random string works as ``FLOW_SECRET_KEY``. Only masked hints
(``phc_…a1b2``) ever leave this module in readable form.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flow.config import Settings

_INFO = b"flow analytics integration credentials v1"


class SecretKeyMissing(Exception):
    """FLOW_SECRET_KEY is not set, so credentials cannot be stored or read."""


class CredentialsUnreadable(Exception):
    """Stored credentials cannot be decrypted (FLOW_SECRET_KEY changed?)."""


def _fernet(secret: str) -> Fernet:
    if not secret:
        raise SecretKeyMissing(
            "FLOW_SECRET_KEY is not set: analytics credentials cannot be encrypted"
        )
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


class CredentialBox:
    """Encrypts and decrypts credential dictionaries with one derived key."""

    def __init__(self, secret: str) -> None:
        self._fernet = _fernet(secret)

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialBox:
        return cls(settings.flow_secret_key.get_secret_value())

    def seal(self, credentials: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(credentials).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise CredentialsUnreadable(
                "stored credentials cannot be decrypted (was FLOW_SECRET_KEY changed?)"
            ) from exc
        return data


def mask(secret: str | None) -> str | None:
    """A hint that identifies a secret without revealing it: prefix and last 4."""
    if not secret:
        return None
    if len(secret) <= 8:
        return "…" + secret[-2:]
    prefix = secret[:4] if secret[:4].endswith("_") else ""
    return f"{prefix}…{secret[-4:]}"
