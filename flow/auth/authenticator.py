"""Turning an ``Authorization`` header into an :class:`ApiKey`, or refusing it.

The verification cache holds VALID Unkey verdicts for ``FLOW_AUTH_CACHE_TTL_SECONDS``
(0 disables it), keyed by the sha256 of the key so the plaintext is never kept. Refusals
are never cached: a key that was rate limited or not yet created is asked about again.

Local keys are not cached. Verifying one is a single indexed lookup of its sha256 among
active keys, and ``flow keys revoke`` runs in another process that could not reach this
one's memory: checking the row on every request is the cheapest way for a revoked key to
stop working at once. The cache therefore only saves the remote round trip to Unkey,
where it matters, at the documented price that a key revoked in Unkey keeps working for
at most one TTL (the same holds for Unkey's ratelimits and credits on cached requests).

``last_used_at`` is kept current to the minute without a write per request: this
process remembers when it last touched each key, and ``touch_last_used`` itself only
writes when the stored value is over a minute old. The touch runs in the background so
it never adds to a request's latency.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict

from supabase import AsyncClient

from flow.auth.models import ApiKey, AuthFailure, unauthorized
from flow.auth.unkey import UnkeyVerifier
from flow.config import Settings
from flow.db import keys as keys_repo
from flow.db.client import DatabaseError, DatabaseUnavailable

logger = logging.getLogger(__name__)

# Printable ASCII without spaces, bounded: anything else cannot be a key of ours or
# Unkey's, and is refused before any lookup.
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{8,512}$")
CACHE_MAX_ENTRIES = 10_000
TOUCH_INTERVAL_SECONDS = 60.0


def parse_bearer(authorization: str | None) -> str:
    """The key in ``Authorization: Bearer <key>``; 401 when missing or malformed."""
    if not authorization:
        raise unauthorized(
            "missing_credentials", "send the API key as 'Authorization: Bearer <key>'"
        )
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise unauthorized("missing_credentials", "the Authorization header must be 'Bearer <key>'")
    if not KEY_PATTERN.match(key):
        raise unauthorized("key_invalid", "the API key is not valid")
    return key


class Authenticator:
    """Verifies keys in the configured mode; one per app."""

    def __init__(self, settings: Settings, sb: AsyncClient) -> None:
        self._sb = sb
        self._ttl_seconds = settings.flow_auth_cache_ttl_seconds
        self._unkey = UnkeyVerifier(settings) if settings.unkey_enabled else None
        self._cache: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        self._unkey_ids: dict[str, ApiKey] = {}
        self._inflight: dict[str, asyncio.Future[ApiKey]] = {}
        self._touched_at: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def mode(self) -> str:
        return "unkey" if self._unkey else "local"

    async def authenticate(self, authorization: str | None) -> ApiKey:
        key = parse_bearer(authorization)
        digest = hashlib.sha256(key.encode()).hexdigest()
        if self._unkey is None:
            api_key = await self._verify_local(key)
        else:
            api_key = await self._verify_unkey_cached(key, digest)
        self._touch(api_key.id)
        return api_key

    async def aclose(self) -> None:
        """Let pending ``last_used_at`` writes finish."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # --- local keys ---------------------------------------------------------
    async def _verify_local(self, key: str) -> ApiKey:
        row = await keys_repo.find_active_local_key(self._sb, key)
        if row is None:
            raise unauthorized("key_invalid", "the API key is not valid or has been revoked")
        return ApiKey(id=str(row["id"]), name=str(row["name"]), source="local")

    # --- Unkey keys ---------------------------------------------------------
    async def _verify_unkey_cached(self, key: str, digest: str) -> ApiKey:
        if self._ttl_seconds <= 0:
            return await self._verify_unkey(key)
        hit = self._cache.get(digest)
        if hit is not None:
            expires_at, api_key = hit
            if expires_at > time.monotonic():
                return api_key
            self._cache.pop(digest, None)
        # Concurrent first requests with one key share one verification.
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ApiKey] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            api_key = await self._verify_unkey(key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved when nobody else waits
            raise
        finally:
            self._inflight.pop(digest, None)
        future.set_result(api_key)
        self._cache[digest] = (time.monotonic() + self._ttl_seconds, api_key)
        if len(self._cache) > CACHE_MAX_ENTRIES:
            self._cache.popitem(last=False)
        return api_key

    async def _verify_unkey(self, key: str) -> ApiKey:
        assert self._unkey is not None
        verdict = await self._unkey.verify(key)
        known = self._unkey_ids.get(verdict.key_id)
        if known is not None:
            return known
        row = await keys_repo.get_or_create_unkey_key(
            self._sb, verdict.key_id, verdict.name, verdict.owner
        )
        if not row.get("is_active", True):
            raise unauthorized("key_revoked", "the API key has been revoked")
        api_key = ApiKey(id=str(row["id"]), name=str(row["name"]), source="unkey")
        # keyId -> uuid never changes once created; remembering it keeps a verification
        # to one Unkey call.
        self._unkey_ids[verdict.key_id] = api_key
        return api_key

    # --- last_used_at -------------------------------------------------------
    def _touch(self, key_id: str) -> None:
        now = time.monotonic()
        last = self._touched_at.get(key_id)
        if last is not None and now - last < TOUCH_INTERVAL_SECONDS:
            return
        self._touched_at[key_id] = now
        task = asyncio.create_task(self._touch_now(key_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch_now(self, key_id: str) -> None:
        try:
            await keys_repo.touch_last_used(self._sb, key_id)
        except (DatabaseError, DatabaseUnavailable) as exc:
            # Try again on the next request rather than in a minute.
            self._touched_at.pop(key_id, None)
            logger.warning("could not update last_used_at of key %s: %s", key_id, exc)


__all__ = ["AuthFailure", "Authenticator", "parse_bearer"]
