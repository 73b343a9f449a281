"""Verifying keys with Unkey (API v2) through the official ``unkey.py`` SDK.

One call per verification: ``POST /v2/keys.verifyKey``. Unkey answers 200 for every
outcome and says why in ``data.code``; this module turns that into either the Unkey
``keyId`` (VALID) or an :class:`AuthFailure` with the HTTP answer we give the caller:

- NOT_FOUND, EXPIRED, DISABLED (and any code we do not know) -> 401
- FORBIDDEN, INSUFFICIENT_PERMISSIONS -> 403
- RATE_LIMITED, USAGE_EXCEEDED -> 429, ``Retry-After`` from the ratelimit reset
- Unkey unreachable, timing out, answering 4xx/5xx or garbage -> 503 (fail closed):
  an outage never lets a key through, and never blames the caller's key.

Failure logs name the exception class only: the key never reaches a log line.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from unkey.py import Unkey, utils

from flow.auth.models import AuthFailure, unauthorized
from flow.config import Settings

logger = logging.getLogger(__name__)

UNAUTHORIZED_CODES = {"NOT_FOUND", "EXPIRED", "DISABLED"}
FORBIDDEN_CODES = {"FORBIDDEN", "INSUFFICIENT_PERMISSIONS"}
LIMITED_CODES = {"RATE_LIMITED", "USAGE_EXCEEDED"}
UNAVAILABLE_RETRY_AFTER_SECONDS = 5
# A reset above this is a Unix time in ms; below it, a duration in ms (the SDK documents
# a duration, Unkey's API reference a timestamp: accept both).
EPOCH_MS_THRESHOLD = 10**12


@dataclass(frozen=True, slots=True)
class UnkeyVerdict:
    """A VALID verification: Unkey's key id and what it knows about the key."""

    key_id: str
    name: str | None
    owner: str | None


class UnkeyVerifier:
    """Asks Unkey whether a key is valid; one SDK client for the process."""

    def __init__(self, settings: Settings) -> None:
        timeout_ms = int(settings.unkey_timeout_seconds * 1000)
        self._client = Unkey(
            root_key=settings.unkey_root_key.get_secret_value(),
            server_url=settings.unkey_base_url or None,
            timeout_ms=timeout_ms,
            # One short retry on connection errors and 5xx, bounded well below the
            # timeout, so an outage answers 503 quickly instead of holding requests.
            retry_config=utils.RetryConfig(
                "backoff", utils.BackoffStrategy(50, 200, 2.0, min(500, timeout_ms)), True
            ),
        )

    async def verify(self, key: str) -> UnkeyVerdict:
        try:
            res = await self._client.keys.verify_key_async(key=key)
        except Exception as exc:  # every way of not getting a verdict fails closed
            logger.warning("unkey verification unavailable: %s", exc.__class__.__name__)
            raise AuthFailure(
                503,
                "auth_unavailable",
                "the key verification service is unavailable; retry shortly",
                retry_after_seconds=UNAVAILABLE_RETRY_AFTER_SECONDS,
            ) from None
        data = res.data
        code = str(getattr(data.code, "value", data.code))
        if data.valid and code == "VALID":
            if not data.key_id:
                logger.warning("unkey answered VALID without a keyId")
                raise AuthFailure(
                    503,
                    "auth_unavailable",
                    "the key verification service answered garbage",
                    retry_after_seconds=UNAVAILABLE_RETRY_AFTER_SECONDS,
                )
            owner = data.identity.external_id if data.identity else None
            return UnkeyVerdict(key_id=data.key_id, name=data.name, owner=owner)
        if code in FORBIDDEN_CODES:
            raise AuthFailure(403, code.lower(), _MESSAGES[code])
        if code in LIMITED_CODES:
            resets = [rl.reset for rl in data.ratelimits or [] if rl.exceeded] or [
                rl.reset for rl in data.ratelimits or []
            ]
            retry_after = _retry_after_seconds(max(resets)) if resets else None
            if retry_after is None and code == "RATE_LIMITED":
                retry_after = 1
            raise AuthFailure(429, code.lower(), _MESSAGES[code], retry_after_seconds=retry_after)
        if code in UNAUTHORIZED_CODES:
            raise unauthorized(f"key_{code.lower()}", _MESSAGES[code])
        raise unauthorized("key_invalid", "the API key is not valid")


def _retry_after_seconds(reset: int) -> int:
    remaining_ms = reset - time.time() * 1000 if reset > EPOCH_MS_THRESHOLD else reset
    return max(1, math.ceil(remaining_ms / 1000))


_MESSAGES = {
    "NOT_FOUND": "the API key is not valid",
    "EXPIRED": "the API key has expired",
    "DISABLED": "the API key is disabled",
    "FORBIDDEN": "the API key may not use this API",
    "INSUFFICIENT_PERMISSIONS": "the API key lacks the permissions this API needs",
    "RATE_LIMITED": "the API key is rate limited; retry after the Retry-After delay",
    "USAGE_EXCEEDED": "the API key has used up its credits",
}
