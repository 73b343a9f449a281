"""Operator tokens: the credential of the people running Flow, for ``/api/admin/``.

An operator token (``flow admin-token create``) is sent like an API key,
``Authorization: Bearer <token>``, and sees every key's data. Customer keys never
reach operator endpoints: a request there with a valid API key is 403
``operator_only``, with no or an unknown credential 401. Tokens are checked in the
database on every request (one indexed lookup of the sha256, like local keys), so a
revoked token stops working at once; ``last_used_at`` is written at most once a minute.

A few endpoints answer both (the CSV export: a key gets its own rows, an operator every
key's): :meth:`OperatorAuthenticator.caller` returns whichever the credential is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from supabase import AsyncClient

from flow.auth.authenticator import Authenticator, parse_bearer
from flow.auth.models import ApiKey, AuthFailure
from flow.db import operators as operators_repo
from flow.db.client import DatabaseError, DatabaseUnavailable

logger = logging.getLogger(__name__)

TOUCH_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Operator:
    """A verified operator token.

    Parameters:
        id: the ``operator_tokens.id``.
        name: the token's name (who holds it).
    """

    id: str
    name: str


def operator_only() -> AuthFailure:
    return AuthFailure(
        403,
        "operator_only",
        "this endpoint needs an operator token (flow admin-token create); "
        "an API key sees only its own data",
    )


class OperatorAuthenticator:
    """Verifies operator tokens; falls back to ``keys`` to tell a customer key (403)
    from a credential that is no credential at all (401)."""

    def __init__(self, sb: AsyncClient, keys: Authenticator) -> None:
        self._sb = sb
        self._keys = keys
        self._touched_at: dict[str, float] = {}

    async def find(self, authorization: str | None) -> Operator | None:
        """The operator this header names, or None when it names none (401 when the
        header is missing or malformed)."""
        token = parse_bearer(authorization)
        if not token.startswith(operators_repo.TOKEN_PREFIX):
            return None
        row = await operators_repo.find_active_token(self._sb, token)
        if row is None:
            return None
        operator = Operator(id=str(row["id"]), name=str(row["name"]))
        await self._touch(operator.id)
        return operator

    async def operator(self, authorization: str | None) -> Operator:
        """The operator, or 403 for a customer key and 401 for anything else."""
        operator = await self.find(authorization)
        if operator is not None:
            return operator
        await self._keys.authenticate(authorization)  # 401 unless it is a valid key
        raise operator_only()

    async def caller(self, authorization: str | None) -> Operator | ApiKey:
        """An operator token or a customer key, whichever the header holds."""
        operator = await self.find(authorization)
        if operator is not None:
            return operator
        return await self._keys.authenticate(authorization)

    async def _touch(self, token_id: str) -> None:
        now = time.monotonic()
        last = self._touched_at.get(token_id)
        if last is not None and now - last < TOUCH_INTERVAL_SECONDS:
            return
        self._touched_at[token_id] = now
        try:
            await operators_repo.touch_last_used(self._sb, token_id)
        except (DatabaseError, DatabaseUnavailable) as exc:
            self._touched_at.pop(token_id, None)
            logger.warning("could not update last_used_at of operator token %s: %s", token_id, exc)
