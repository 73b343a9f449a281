"""What authentication produces: the caller's key, or a refusal with its HTTP answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KeySource = Literal["unkey", "local"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """The verified caller.

    Parameters:
        id: the ``api_keys.id`` uuid that owns threads and usage.
        name: the key's display name.
        source: ``unkey`` or ``local``.
    """

    id: str
    name: str
    source: KeySource


class AuthFailure(Exception):
    """A request that may not proceed: its status, stable code, message and headers.

    ``retry_after_seconds`` is set for 429 (rate limited) and 503 (verifier down).
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        retry_after_seconds: int | None = None,
        bearer_challenge: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.retry_after_seconds = retry_after_seconds
        self.bearer_challenge = bearer_challenge

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.bearer_challenge:
            headers["WWW-Authenticate"] = f'Bearer error="{self._challenge_error()}"'
        if self.retry_after_seconds is not None:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers

    def _challenge_error(self) -> str:
        return "invalid_request" if self.code == "missing_credentials" else "invalid_token"


def unauthorized(code: str, message: str) -> AuthFailure:
    return AuthFailure(401, code, message, bearer_challenge=True)
